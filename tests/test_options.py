"""The options beyond Keras (issue 4), on every backend, against a float64
NumPy reference: mode, momentum=None, unbiased_moving_variance, debias,
virtual_batch_size, track_updates, their combinations, config, saving,
debug records, explain(), and a pass through compiled fit/predict."""

import keras
import numpy as np
import pytest
import reference
from helpers import fit_batches
from helpers import moving_statistics
from helpers import to_numpy

import keras_bn_ext
from keras_bn_ext import BatchNormalization

# float32 statistics against a float64 reference.
ATOL = 1e-5
RTOL = 1e-5


def make_batches(shapes, seed=0, loc=2.0, scale=3.0):
    rng = np.random.default_rng(seed)
    return [rng.normal(loc, scale, shape).astype("float32") for shape in shapes]


def set_moving_stats(layer, mean, var):
    layer.moving_mean.assign(np.asarray(mean, "float32"))
    layer.moving_variance.assign(np.asarray(var, "float32"))


def assert_moving_statistics(layer, expected):
    """The layer's moving statistics are those of `expected`, a
    `reference.State`, to float32 accuracy."""
    mean, variance = moving_statistics(layer)
    np.testing.assert_allclose(mean, expected.moving_mean, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(variance, expected.moving_variance, atol=ATOL, rtol=RTOL)


# Default layout ---------------------------------------------------------------


def test_default_layer_has_exactly_keras_variables_and_config():
    ours = BatchNormalization()
    theirs = keras.layers.BatchNormalization()
    ours.build((None, 5))
    theirs.build((None, 5))

    def layout(layer):
        return [(v.name, tuple(v.shape), v.dtype, v.trainable) for v in layer.weights]

    assert layout(ours) == layout(theirs)
    assert ours.num_batches_tracked is None
    # No extension key leaks into a default layer's config.
    assert set(ours.get_config()) == set(theirs.get_config())


# mode="moving" ----------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False, None])
@pytest.mark.parametrize("trainable", [True, False])
def test_mode_moving_always_uses_moving_stats_and_never_updates(training, trainable):
    (x,) = make_batches([(6, 3)])
    layer = BatchNormalization(mode="moving", gamma_initializer="ones")
    layer.build(x.shape)
    layer.trainable = trainable
    mean0, var0 = [0.5, -1.0, 2.0], [4.0, 0.25, 9.0]
    set_moving_stats(layer, mean0, var0)

    with keras_bn_ext.debug.capture() as records:
        y = to_numpy(layer(x, training=training))

    np.testing.assert_allclose(y, reference.normalize(x, mean0, var0), atol=ATOL, rtol=RTOL)
    mean, var = moving_statistics(layer)
    np.testing.assert_array_equal(mean, np.float32(mean0))
    np.testing.assert_array_equal(var, np.float32(var0))
    (record,) = records
    assert record.branch == "moving"
    assert not record.updated
    assert "mode='moving'" in record.reason
    np.testing.assert_allclose(record.mean, mean0, rtol=1e-6)


# mode="batch" -----------------------------------------------------------------


@pytest.mark.parametrize("training", [False, None])
def test_mode_batch_outside_training_uses_batch_stats_without_update(training):
    (x,) = make_batches([(6, 3)])
    layer = BatchNormalization(mode="batch")
    layer.build(x.shape)
    set_moving_stats(layer, [0.5, -1.0, 2.0], [4.0, 0.25, 9.0])

    with keras_bn_ext.debug.capture() as records:
        y = to_numpy(layer(x, training=training))

    expected = reference.batch_norm(x)
    np.testing.assert_allclose(y, expected.output, atol=ATOL, rtol=RTOL)
    moving_mean, moving_var = moving_statistics(layer)
    np.testing.assert_array_equal(moving_mean, np.float32([0.5, -1.0, 2.0]))
    np.testing.assert_array_equal(moving_var, np.float32([4.0, 0.25, 9.0]))
    (record,) = records
    assert record.branch == "batch" and not record.updated
    assert "mode='batch'" in record.reason
    assert record.count == expected.count
    np.testing.assert_allclose(record.mean, expected.mean, atol=ATOL)


def test_mode_batch_in_training_uses_batch_stats_and_updates():
    batches = make_batches([(6, 3), (6, 3)])
    layer = BatchNormalization(mode="batch", momentum=0.9)
    expected = reference.train(batches, momentum=0.9)
    for x, step in zip(batches, expected):
        y = to_numpy(layer(x, training=True))
        np.testing.assert_allclose(y, step.output, atol=ATOL, rtol=RTOL)
    assert_moving_statistics(layer, expected[-1].state)


def test_mode_batch_frozen_layer_does_not_update():
    (x,) = make_batches([(6, 3)])
    layer = BatchNormalization(mode="batch")
    layer.build(x.shape)
    layer.trainable = False
    y = to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, reference.batch_norm(x).output, atol=ATOL, rtol=RTOL)
    moving_mean, moving_var = moving_statistics(layer)
    np.testing.assert_array_equal(moving_mean, np.zeros(3, "float32"))
    np.testing.assert_array_equal(moving_var, np.ones(3, "float32"))


def test_invalid_mode_is_rejected_with_the_value():
    with pytest.raises(ValueError, match="mode='frozen'"):
        BatchNormalization(mode="frozen")


# Modes inside compiled fit / predict ----------------------------------------


def single_layer_model(layer, channels=3):
    model = keras.Sequential([keras.Input((channels,)), layer])
    # Default compile settings: jit_compile="auto" (XLA on TensorFlow, jit on JAX).
    model.compile(optimizer="sgd", loss="mse")
    return model


def current_affine(layer):
    return to_numpy(layer.gamma), to_numpy(layer.beta)


def test_mode_moving_in_fit_never_updates_and_predict_uses_moving_stats():
    (x,) = make_batches([(32, 3)])
    layer = BatchNormalization(mode="moving")
    model = single_layer_model(layer)
    mean0, var0 = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]
    set_moving_stats(layer, mean0, var0)

    model.fit(x, np.zeros_like(x), batch_size=8, epochs=1, shuffle=False, verbose=0)
    y = model.predict(x, batch_size=8, verbose=0)

    mean, var = moving_statistics(layer)
    np.testing.assert_array_equal(mean, np.float32(mean0))
    np.testing.assert_array_equal(var, np.float32(var0))
    gamma, beta = current_affine(layer)
    expected = reference.normalize(x, mean0, var0, gamma=gamma, beta=beta)
    np.testing.assert_allclose(y, expected, atol=ATOL, rtol=RTOL)


def test_mode_batch_in_fit_updates_and_predict_uses_each_batch_stats():
    (x,) = make_batches([(32, 3)])
    layer = BatchNormalization(mode="batch", momentum=0.9)
    model = single_layer_model(layer)

    model.fit(x, np.zeros_like(x), batch_size=8, epochs=1, shuffle=False, verbose=0)
    expected = reference.train(fit_batches(x, 8), momentum=0.9)
    assert_moving_statistics(layer, expected[-1].state)
    mean, var = moving_statistics(layer)

    # predict normalizes each batch of 16 with its own statistics, no update.
    y = model.predict(x, batch_size=16, verbose=0)
    gamma, beta = current_affine(layer)
    for start in (0, 16):
        part = x[start:start + 16]
        np.testing.assert_allclose(
            y[start:start + 16], reference.batch_norm(part, gamma=gamma, beta=beta).output,
            atol=ATOL, rtol=RTOL,
        )
    after_mean, after_var = moving_statistics(layer)
    np.testing.assert_array_equal(after_mean, mean)
    np.testing.assert_array_equal(after_var, var)


# momentum=None: cumulative average ---------------------------------------------


def test_cumulative_average_is_the_plain_mean_of_batch_statistics():
    # Different batch sizes: the average weighs batches equally (PyTorch),
    # not by their number of samples.
    batches = make_batches([(4, 3), (10, 3), (6, 3), (8, 3)])
    layer = BatchNormalization(momentum=None)
    stats = []
    for k, x in enumerate(batches, start=1):
        layer(x, training=True)
        layer(x, training=False)  # inference never counts
        stats.append(reference.moments(x)[:2])
        mean, var = moving_statistics(layer)
        np.testing.assert_allclose(
            mean, np.mean([s[0] for s in stats], axis=0), atol=ATOL, rtol=RTOL
        )
        np.testing.assert_allclose(
            var, np.mean([s[1] for s in stats], axis=0), atol=ATOL, rtol=RTOL
        )
        assert int(to_numpy(layer.num_batches_tracked)) == k


def test_cumulative_average_forgets_the_initial_value():
    # t=1 gives weight 1 to the first batch: the initializers do not matter.
    (x,) = make_batches([(8, 2)])
    layer = BatchNormalization(
        momentum=None,
        moving_mean_initializer=keras.initializers.Constant(7.0),
        moving_variance_initializer=keras.initializers.Constant(5.0),
    )
    layer(x, training=True)
    mean, var, _ = reference.moments(x)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), mean, atol=ATOL)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), var, atol=ATOL)


# unbiased_moving_variance ------------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis", [((6, 3), -1), ((2, 4, 5, 3), -1), ((4, 3, 5), 1)]
)
def test_unbiased_moving_variance_stores_n_over_n_minus_1(shape, axis):
    batches = make_batches([shape, shape])
    layer = BatchNormalization(axis=axis, momentum=0.9, unbiased_moving_variance=True)
    expected = reference.train(batches, axis=axis, momentum=0.9,
                               unbiased_moving_variance=True)
    for x, step in zip(batches, expected):
        y = to_numpy(layer(x, training=True))
        assert step.count > 1
        # Normalization uses the biased variance, as PyTorch does.
        np.testing.assert_allclose(
            y, reference.normalize(x, step.mean, step.variance, axis), atol=ATOL, rtol=RTOL
        )
    assert_moving_statistics(layer, expected[-1].state)
    # And not the biased one (the test can tell them apart).
    biased = reference.train(batches, axis=axis, momentum=0.9)[-1].state
    assert not np.allclose(moving_statistics(layer)[1], biased.moving_variance,
                           atol=ATOL, rtol=RTOL)


def test_unbiased_moving_variance_skips_a_batch_of_one_and_flags_it():
    (x,) = make_batches([(1, 3)])
    layer = BatchNormalization(unbiased_moving_variance=True, track_updates=True)
    layer.build(x.shape)
    set_moving_stats(layer, [0.5, 0.5, 0.5], [2.0, 2.0, 2.0])

    with keras_bn_ext.debug.capture() as records:
        y = to_numpy(layer(x, training=True))

    assert np.all(np.isfinite(y))
    mean, var = moving_statistics(layer)
    np.testing.assert_array_equal(mean, np.full(3, 0.5, "float32"))
    np.testing.assert_array_equal(var, np.full(3, 2.0, "float32"))
    assert int(to_numpy(layer.num_batches_tracked)) == 0
    (record,) = records
    assert record.branch == "batch"
    assert not record.updated
    assert "update_skipped" in record.flags
    assert record.count == 1
    assert np.all(np.isfinite(record.moving_variance))


def test_unbiased_moving_variance_counts_spatial_elements():
    # One image of 4x5 pixels: n = 20 per channel, so the update happens.
    (x,) = make_batches([(1, 4, 5, 2)])
    layer = BatchNormalization(momentum=0.5, unbiased_moving_variance=True)
    layer(x, training=True)
    state = reference.batch_norm(x, momentum=0.5, unbiased_moving_variance=True).state
    assert state.num_batches_tracked == 1
    assert_moving_statistics(layer, state)


# debias -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mean_init, var_init",
    [("zeros", "ones"), ("ones", "ones"),
     (keras.initializers.Constant(3.0), keras.initializers.Constant(5.0))],
)
def test_debias_is_exact_after_one_step_for_any_initial_value(mean_init, var_init):
    (x,) = make_batches([(8, 3)])
    layer = BatchNormalization(
        debias=True, moving_mean_initializer=mean_init,
        moving_variance_initializer=var_init,
    )
    layer(x, training=True)
    mean, var, _ = reference.moments(x)
    assert_moving_statistics(layer, reference.State(mean, var))
    # So inference right after one step normalizes that batch properly.
    y = to_numpy(layer(x, training=False))
    np.testing.assert_allclose(y, reference.normalize(x, mean, var), atol=1e-4)
    assert int(to_numpy(layer.num_batches_tracked)) == 1


def test_debias_after_k_steps_matches_the_closed_form_of_keras_ema():
    beta = 0.9
    mean0, var0 = 3.0, 5.0
    batches = make_batches([(8, 3)] * 5, seed=3)
    init = dict(
        momentum=beta,
        moving_mean_initializer=keras.initializers.Constant(mean0),
        moving_variance_initializer=keras.initializers.Constant(var0),
    )
    ours = BatchNormalization(debias=True, **init)
    plain = keras.layers.BatchNormalization(**init)
    for t, x in enumerate(batches, start=1):
        ours(x, training=True)
        plain(x, training=True)
        m_t = to_numpy(plain.moving_mean).astype("float64")
        v_t = to_numpy(plain.moving_variance).astype("float64")
        expected_mean = (m_t - beta**t * mean0) / (1 - beta**t)
        expected_var = (v_t - beta**t * var0) / (1 - beta**t)
        mean, var = moving_statistics(ours)
        # Dividing by 1 - beta^t amplifies Keras's float32 rounding.
        np.testing.assert_allclose(mean, expected_mean, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(var, expected_var, atol=1e-4, rtol=1e-4)
    # And against the float64 reference, tighter.
    state = reference.train(batches, reference.initial_state(3, mean0, var0),
                            momentum=beta, debias=True)[-1].state
    assert_moving_statistics(ours, state)
    assert int(to_numpy(ours.num_batches_tracked)) == state.num_batches_tracked == 5


# virtual_batch_size -------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis, k",
    [((8, 3), -1, 4), ((8, 3), -1, 2), ((8, 4, 5, 3), -1, 2), ((6, 3, 5), 1, 3)],
)
def test_virtual_batches_normalize_each_group_and_average_the_update(shape, axis, k):
    batches = make_batches([shape, shape])
    layer = BatchNormalization(axis=axis, momentum=0.9, virtual_batch_size=k)
    expected = reference.train(batches, axis=axis, momentum=0.9, virtual_batch_size=k)
    for x, step in zip(batches, expected):
        y = to_numpy(layer(x, training=True))
        assert y.shape == x.shape
        np.testing.assert_allclose(y, step.output, atol=ATOL, rtol=RTOL)
        # Not the same as normalizing the whole batch (the test can fail).
        whole = reference.batch_norm(x, axis=axis).output
        assert not np.allclose(y, whole, atol=1e-3)
    assert_moving_statistics(layer, expected[-1].state)


def test_virtual_batches_leave_inference_unchanged():
    (x,) = make_batches([(6, 3)])
    layer = BatchNormalization(virtual_batch_size=4)
    layer.build(x.shape)
    set_moving_stats(layer, [0.5, -1.0, 2.0], [4.0, 0.25, 9.0])
    # 6 is not a multiple of 4, but inference does not split the batch.
    y = to_numpy(layer(x, training=False))
    np.testing.assert_allclose(
        y, reference.normalize(x, [0.5, -1.0, 2.0], [4.0, 0.25, 9.0]), atol=ATOL,
        rtol=RTOL,
    )


def test_virtual_batch_size_that_does_not_divide_the_batch_is_no_error():
    # Issue 11: the 2 samples left over form a virtual batch of their own
    # (tests/test_ghost_batches.py checks their numbers).
    (x,) = make_batches([(8, 3)])
    layer = BatchNormalization(virtual_batch_size=3)
    y = to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y[6:], reference.batch_norm(x[6:]).output, atol=ATOL,
                               rtol=RTOL)


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "4"])
def test_invalid_virtual_batch_size_is_rejected(value):
    with pytest.raises(ValueError, match="virtual_batch_size"):
        BatchNormalization(virtual_batch_size=value)


def test_virtual_batches_cannot_split_a_channel_batch_axis():
    layer = BatchNormalization(axis=0, virtual_batch_size=2)
    with pytest.raises(ValueError, match="virtual_batch_size=2"):
        layer.build((4, 3))


# track_updates and the counter ---------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, has_counter",
    [({}, False), ({"track_updates": True}, True), ({"momentum": None}, True),
     ({"debias": True}, True), ({"unbiased_moving_variance": True}, False),
     ({"virtual_batch_size": 2}, False), ({"mode": "batch"}, False)],
)
def test_counter_exists_only_when_an_option_needs_it(kwargs, has_counter):
    layer = BatchNormalization(**kwargs)
    layer.build((None, 3))
    names = [v.name for v in layer.weights]
    keras_names = ["gamma", "beta", "moving_mean", "moving_variance"]
    if has_counter:
        # Appended after Keras's variables, so their order is unchanged.
        assert names == keras_names + ["num_batches_tracked"]
        assert layer.num_batches_tracked.dtype == "int32"
        assert not layer.num_batches_tracked.trainable
        assert int(to_numpy(layer.num_batches_tracked)) == 0
    else:
        assert names == keras_names
        assert layer.num_batches_tracked is None


def test_track_updates_counts_only_real_updates():
    batches = make_batches([(6, 3)] * 3)
    layer = BatchNormalization(track_updates=True, momentum=0.9)
    for x in batches:
        layer(x, training=True)
    layer(batches[0], training=False)
    layer(batches[0])
    layer.trainable = False
    layer(batches[0], training=True)  # frozen: no update
    assert int(to_numpy(layer.num_batches_tracked)) == 3
    # The counter changes nothing in the statistics themselves.
    assert_moving_statistics(layer, reference.train(batches, momentum=0.9)[-1].state)


def test_counter_does_not_count_an_empty_batch():
    layer = BatchNormalization(track_updates=True)
    layer.build((None, 3))
    layer(np.zeros((0, 3), "float32"), training=True)
    assert int(to_numpy(layer.num_batches_tracked)) == 0


# Combinations -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"renorm": True, "mode": "batch"},
        {"renorm": True, "mode": "moving"},
        {"renorm": True, "momentum": None},
        {"renorm": True, "debias": True},
        {"debias": True, "momentum": None},
        {"synchronized": True, "virtual_batch_size": 2},
        {"mode": "moving", "debias": True},
    ],
)
def test_senseless_combinations_name_both_arguments(kwargs):
    with pytest.raises(ValueError) as info:
        BatchNormalization(**kwargs)
    message = str(info.value)
    for name, value in kwargs.items():
        assert f"{name}=" in message
        assert repr(value) in message or str(value) in message


def test_invalid_momentum_mentions_none():
    with pytest.raises(ValueError, match="None") as info:
        BatchNormalization(momentum=1.5)
    assert "momentum=1.5" in str(info.value)


# get_config, from_config, .keras --------------------------------------------------

OPTIONS = [
    {"mode": "moving"},
    {"mode": "batch"},
    {"momentum": None},
    {"unbiased_moving_variance": True},
    {"debias": True},
    {"virtual_batch_size": 4},
    {"track_updates": True},
    {"momentum": 0.8, "debias": True, "unbiased_moving_variance": True},
]


@pytest.mark.parametrize("options", OPTIONS)
def test_options_survive_get_config_and_from_config(options):
    layer = BatchNormalization(**options)
    config = layer.get_config()
    for name, value in options.items():
        assert config[name] == value
    clone = BatchNormalization.from_config(config)
    for name, value in options.items():
        assert getattr(clone, name) == value
    assert clone.get_config() == config
    # Building does not rewrite the configuration.
    layer.build((None, 3))
    assert layer.get_config() == config


def test_options_survive_keras_save_and_load(tmp_path):
    batches = make_batches([(8, 3)] * 2)
    inputs = keras.Input((3,))
    outputs = []
    for i, options in enumerate(OPTIONS):
        outputs.append(BatchNormalization(name=f"bn_{i}", **options)(inputs))
    model = keras.Model(inputs, outputs)
    for x in batches:
        model(x, training=True)

    path = str(tmp_path / "options.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)

    for i, options in enumerate(OPTIONS):
        original = model.get_layer(f"bn_{i}")
        restored = loaded.get_layer(f"bn_{i}")
        assert isinstance(restored, BatchNormalization)
        for name, value in options.items():
            assert getattr(restored, name) == value
        assert [v.name for v in restored.weights] == [v.name for v in original.weights]
        for a, b in zip(original.weights, restored.weights):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
        if restored.num_batches_tracked is not None:
            assert int(to_numpy(restored.num_batches_tracked)) == 2
    for a, b in zip(model.predict(batches[0], verbose=0),
                    loaded.predict(batches[0], verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-6)


# Debug records and explain() -------------------------------------------------------


def test_records_report_the_counter_and_ghost_statistics():
    batches = make_batches([(8, 3)] * 3)
    layer = BatchNormalization(momentum=None, virtual_batch_size=4)
    with keras_bn_ext.debug.capture() as records:
        for x in batches:
            layer(x, training=True)
        layer(batches[0], training=False)
    assert [r.num_batches_tracked for r in records] == [1, 2, 3, 3]
    assert [r.updated for r in records] == [True, True, True, False]
    # The statistics used are per virtual batch: (G, C).
    expected = reference.train(batches, momentum=None, virtual_batch_size=4)
    assert records[2].mean.shape == (2, 3)
    np.testing.assert_allclose(records[2].mean, expected[2].mean, atol=ATOL)
    np.testing.assert_allclose(records[2].variance, expected[2].variance, atol=ATOL,
                               rtol=RTOL)
    state = expected[-1].state
    np.testing.assert_allclose(records[2].moving_mean, state.moving_mean, atol=ATOL)
    np.testing.assert_allclose(records[3].moving_variance, state.moving_variance,
                               atol=ATOL, rtol=RTOL)


def test_records_report_debiased_and_unbiased_moving_statistics():
    (x,) = make_batches([(8, 3)])
    layer = BatchNormalization(
        debias=True, unbiased_moving_variance=True,
        moving_mean_initializer=keras.initializers.Constant(3.0),
    )
    with keras_bn_ext.debug.capture() as records:
        layer(x, training=True)
    (record,) = records
    mean, var, n = reference.moments(x)
    assert record.num_batches_tracked == 1
    # Debiased: exactly this batch after one step; unbiased: n/(n-1) var stored,
    # biased var used.
    np.testing.assert_allclose(record.moving_mean, mean, atol=ATOL)
    np.testing.assert_allclose(record.moving_variance, var * n / (n - 1), atol=ATOL,
                               rtol=RTOL)
    np.testing.assert_allclose(record.variance, var, atol=ATOL, rtol=RTOL)


def test_records_without_counter_have_none():
    layer = BatchNormalization()
    with keras_bn_ext.debug.capture() as records:
        layer(np.ones((4, 2), "float32"), training=True)
    assert records[0].num_batches_tracked is None


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"mode": "moving"}, ["mode='moving'"]),
        ({"mode": "batch"}, ["mode='batch'", "not used"]),
        ({"momentum": None}, ["momentum=None", "cumulative average"]),
        ({"unbiased_moving_variance": True}, ["unbiased_moving_variance"]),
        ({"debias": True}, ["debias"]),
        ({"virtual_batch_size": 4}, ["virtual batches of 4"]),
        ({"track_updates": True}, ["Updated 0 times"]),
    ],
)
def test_explain_mentions_each_option(options, expected):
    layer = BatchNormalization(**options)
    layer.build((None, 3))
    text = layer.explain()
    for phrase in expected:
        assert phrase in text


def test_explain_says_how_many_updates():
    layer = BatchNormalization(track_updates=True)
    layer.build((None, 3))
    layer.num_batches_tracked.assign(1200)
    assert "Updated 1,200 times" in layer.explain()
    for x in make_batches([(4, 3)] * 2):
        layer(x, training=True)
    assert "Updated 1,202 times" in layer.explain()


def test_explain_of_mode_moving_lists_no_update_for_training():
    layer = BatchNormalization(mode="moving")
    layer.build((None, 3))
    text = layer.explain()
    training_line = next(line for line in text.splitlines()
                         if line.strip().startswith("- training=True (fit()"))
    assert "moving statistics, no update" in training_line


# Through compiled fit / predict -------------------------------------------------------

FIT_OPTIONS = [
    {"momentum": None},
    {"unbiased_moving_variance": True, "momentum": 0.9},
    {"debias": True, "moving_mean_initializer": "ones"},
    {"virtual_batch_size": 4, "momentum": 0.9},
    {"track_updates": True, "momentum": 0.9},
]


@pytest.mark.parametrize("options", FIT_OPTIONS, ids=lambda o: ",".join(o))
def test_options_in_fit_match_the_numpy_reference(options):
    (x,) = make_batches([(32, 3)], seed=5)
    layer = BatchNormalization(**options)
    model = single_layer_model(layer)
    with keras_bn_ext.debug.capture(model) as records:
        model.fit(x, np.zeros_like(x), batch_size=8, epochs=1, shuffle=False,
                  verbose=0)
    batches = fit_batches(x, 8)
    initial = reference.initial_state(
        3, 1.0 if options.get("moving_mean_initializer") == "ones" else 0.0
    )
    statistics_options = {k: v for k, v in options.items() if k in (
        "momentum", "debias", "unbiased_moving_variance", "virtual_batch_size")}
    state = reference.train(batches, initial, **statistics_options)[-1].state
    assert_moving_statistics(layer, state)
    mean, var = moving_statistics(layer)
    assert [r.updated for r in records] == [True] * 4
    if layer.num_batches_tracked is not None:
        assert int(to_numpy(layer.num_batches_tracked)) == state.num_batches_tracked == 4
        assert [r.num_batches_tracked for r in records] == [1, 2, 3, 4]

    # predict: the moving statistics, unchanged (virtual batches included).
    y = model.predict(x, batch_size=16, verbose=0)
    gamma, beta = current_affine(layer)
    np.testing.assert_allclose(
        y, reference.normalize(x, mean, var, gamma=gamma, beta=beta), atol=1e-4, rtol=1e-4
    )
    after_mean, after_var = moving_statistics(layer)
    np.testing.assert_array_equal(after_mean, mean)
    np.testing.assert_array_equal(after_var, var)

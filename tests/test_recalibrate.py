"""recalibrate: moving statistics become exact population statistics."""

import keras
import numpy as np
import pytest
import reference
from helpers import moving_statistics
from helpers import to_numpy

import keras_bn_ext


def _batches(sizes, mean=3.0, std=2.0, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    # Each batch has its own mean, so equal-weight averaging is visibly wrong.
    return [
        rng.normal(mean + 4.0 * i, std, (n, channels)).astype("float32")
        for i, n in enumerate(sizes)
    ]


def _has_float64():
    dtype = keras.ops.cast(np.zeros(1), "float64").dtype
    return keras.backend.standardize_dtype(dtype) == "float64"


def _first_bn_model(bn):
    return keras.Sequential([keras.Input((3,)), bn, keras.layers.Dense(2)])


@pytest.mark.parametrize("ours", [True, False])
def test_statistics_are_size_weighted_population_statistics(ours):
    cls = keras_bn_ext.BatchNormalization if ours else keras.layers.BatchNormalization
    model = _first_bn_model(cls(name="bn"))
    batches = _batches([1, 9, 4])
    stats = keras_bn_ext.recalibrate(model, batches, verbose=0)

    data = np.concatenate(batches).astype("float64")
    mean, variance = moving_statistics(model.get_layer("bn"))
    # Each batch's moments come from the layer's own moments function in the
    # widest float the backend has (JAX without x64: float32), merged in
    # float64 on the host.
    rtol = 1e-10 if _has_float64() else 1e-6
    np.testing.assert_allclose(stats["bn"].mean, data.mean(0), rtol=rtol)
    np.testing.assert_allclose(stats["bn"].variance, data.var(0), rtol=rtol)
    np.testing.assert_allclose(mean, data.mean(0), rtol=1e-6)
    np.testing.assert_allclose(variance, data.var(0), rtol=1e-6)
    assert stats["bn"].count == 14 and stats["bn"].batches == 3
    # torch's update_bn would average the three batch means with equal weights.
    equal_weights = np.mean([b.astype("float64").mean(0) for b in batches], axis=0)
    assert np.abs(mean - equal_weights).max() > 0.3


def test_large_mean_inputs_keep_an_accurate_variance():
    # float32 E[x^2] - E[x]^2 would lose every digit at mean 1e5, std 1.
    model = _first_bn_model(keras_bn_ext.BatchNormalization(name="bn"))
    batches = _batches([7, 50, 13], mean=1e5, std=1.0)
    keras_bn_ext.recalibrate(model, batches, verbose=0)
    data = np.concatenate(batches).astype("float64")
    _, variance = moving_statistics(model.get_layer("bn"))
    np.testing.assert_allclose(variance, data.var(0), rtol=1e-5)


def test_later_layers_see_recalibrated_earlier_layers_in_inference_mode():
    x = keras.Input((3,))
    h = keras.layers.BatchNormalization(name="bn1")(x)
    h = keras.layers.Dropout(0.5)(h)
    h = keras.layers.Dense(4)(h)
    h = keras_bn_ext.BatchNormalization(name="bn2")(h)
    model = keras.Model(x, keras.layers.Dense(1)(h))
    batches = _batches([5, 11, 2])
    stats = keras_bn_ext.recalibrate(model, batches, verbose=0)

    assert list(stats) == ["bn1", "bn2"]
    # bn2's inputs, computed after recalibration in inference mode (no dropout).
    probe = keras.Model(x, model.get_layer("bn2").input)
    inputs = np.concatenate(
        [to_numpy(probe(b, training=False)) for b in batches]).astype("float64")
    mean, variance = moving_statistics(model.get_layer("bn2"))
    np.testing.assert_allclose(mean, inputs.mean(0), atol=1e-5)
    np.testing.assert_allclose(variance, inputs.var(0), rtol=1e-5)
    # With bn1 recalibrated, its outputs are standardized: bn2 sees Dense(that).
    np.testing.assert_allclose(stats["bn1"].variance, np.concatenate(batches).var(0),
                               rtol=1e-6)
    # The passes stopped early at each layer left no call state behind.
    before = to_numpy(model.get_layer("bn1").moving_mean)
    model(batches[1], training=True)
    assert not np.allclose(to_numpy(model.get_layer("bn1").moving_mean), before)


def test_frozen_layers_trainable_weights_and_other_layers_are_untouched():
    frozen = keras.layers.BatchNormalization(name="frozen")
    model = keras.Sequential([
        keras.Input((3,)), frozen,
        keras_bn_ext.BatchNormalization(mode="moving", name="moving_mode"),
        keras.layers.Dense(3),
        keras.layers.BatchNormalization(name="live"),
    ])
    frozen.trainable = False
    rng = np.random.default_rng(5)
    for variable in model.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    before = {v.path: to_numpy(v) for v in model.weights}
    stats = keras_bn_ext.recalibrate(model, _batches([4, 6]), verbose=0)

    assert list(stats) == ["live"]
    changed = {p for p, v in before.items()
               if not np.array_equal(v, to_numpy(_variable(model, p)))}
    assert changed == {_path(model, "live", "moving_mean"),
                       _path(model, "live", "moving_variance")}


def _variable(model, path):
    return next(v for v in model.weights if v.path == path)


def _path(model, layer, name):
    return next(v.path for v in model.get_layer(layer).weights if v.name == name)


def test_nested_and_shared_layers():
    shared = keras.layers.BatchNormalization(name="shared")
    inner = keras.Sequential([keras.Input((3,)), keras_bn_ext.BatchNormalization(
        name="inner_bn")], name="inner")
    a = keras.Input((3,))
    b = keras.Input((3,))
    model = keras.Model([a, b], keras.layers.Add()([shared(inner(a)), shared(b)]))
    xa, xb = _batches([6, 3], seed=1), _batches([6, 3], seed=2)
    # As in fit(): a batch is (x,) or (x, y), so two inputs are ([a, b],).
    stats = keras_bn_ext.recalibrate(model, [([u, v],) for u, v in zip(xa, xb)],
                                     verbose=0)

    assert list(stats) == ["inner/inner_bn", "shared"]
    a_all, b_all = np.concatenate(xa).astype("float64"), np.concatenate(xb)
    np.testing.assert_allclose(stats["inner/inner_bn"].variance, a_all.var(0),
                               rtol=1e-6)
    # The shared layer's population is both of its inputs: normalized a, and b.
    standardized = reference.batch_norm(a_all).output
    both = np.concatenate([standardized, b_all])
    assert stats["shared"].count == 18
    np.testing.assert_allclose(stats["shared"].mean, both.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["shared"].variance, both.var(0), rtol=1e-5)


def test_unbiased_variance_renorm_and_counter():
    model = keras.Sequential([
        keras.Input((3,)),
        keras_bn_ext.BatchNormalization(unbiased_moving_variance=True,
                                        track_updates=True, name="unbiased"),
        keras.layers.BatchNormalization(renorm=True, name="renorm"),
    ])
    batches = _batches([3, 5])
    keras_bn_ext.recalibrate(model, batches, verbose=0)
    data = np.concatenate(batches).astype("float64")

    unbiased = model.get_layer("unbiased")
    np.testing.assert_allclose(to_numpy(unbiased.moving_variance), data.var(0, ddof=1),
                               rtol=1e-6)
    assert int(to_numpy(unbiased.num_batches_tracked)) == 2
    renorm = model.get_layer("renorm")
    standardized = reference.normalize(data, data.mean(0), data.var(0, ddof=1))
    np.testing.assert_allclose(to_numpy(renorm.moving_variance), standardized.var(0),
                               rtol=1e-5)
    np.testing.assert_allclose(to_numpy(renorm.moving_stddev),
                               np.sqrt(standardized.var(0) + 1e-3), rtol=1e-5)


def test_masked_elements_do_not_count():
    tokens = np.array([[1, 2, 0, 0], [3, 0, 0, 0], [4, 5, 6, 7]])
    model = keras.Sequential([
        keras.Input((4,), dtype="int32"),
        keras.layers.Embedding(8, 2, mask_zero=True, name="embed"),
        keras_bn_ext.BatchNormalization(name="bn"),
    ])
    stats = keras_bn_ext.recalibrate(model, [tokens[:2], tokens[2:]], verbose=0)
    table = to_numpy(model.get_layer("embed").embeddings).astype("float64")
    vectors = table[tokens[tokens > 0]]
    assert stats["bn"].count == 7
    np.testing.assert_allclose(stats["bn"].mean, vectors.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["bn"].variance, vectors.var(0), rtol=1e-5)


def _expected(batches):
    return np.concatenate(batches).astype("float64").mean(0)


def _recalibrated_mean(data, **kwargs):
    model = _first_bn_model(keras.layers.BatchNormalization(name="bn"))
    keras_bn_ext.recalibrate(model, data, verbose=0, **kwargs)
    return moving_statistics(model.get_layer("bn"))[0]


def test_data_formats_and_steps():
    import tensorflow as tf

    batches = _batches([4, 7, 5, 2])
    labels = [np.zeros((len(b), 1)) for b in batches]
    expected = _expected(batches)

    def generator():
        for x, y in zip(batches, labels):
            yield x, y, np.ones(len(x))

    class Data(keras.utils.PyDataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return batches[i], labels[i]

    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(5)
    for data in (generator(), Data(), dataset, np.concatenate(batches),
                 [(x,) for x in batches]):
        np.testing.assert_allclose(_recalibrated_mean(data), expected, rtol=1e-6)
    np.testing.assert_allclose(_recalibrated_mean(iter(batches), steps=2),
                               _expected(batches[:2]), rtol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        _recalibrated_mean(dataset.repeat())
    with pytest.raises(ValueError, match="no batch"):
        _recalibrated_mean([])


def test_progress_bar(capsys):
    model = _first_bn_model(keras.layers.BatchNormalization(name="bn"))
    keras_bn_ext.recalibrate(model, _batches([2, 3]), verbose=1)
    assert "1/1" in capsys.readouterr().out
    keras_bn_ext.recalibrate(model, _batches([2, 3]), verbose=0)
    assert capsys.readouterr().out == ""


def test_whole_arrays_as_fit_takes_them():
    x = _batches([96], seed=3)[0]
    y = np.zeros((96, 2), "float32")
    expected = x.astype("float64").mean(0)
    # (x, y) and (x, y, sample_weight), as validation_data: x only, in batches of 32.
    for data in ((x, y), (x, y, np.ones(96)), [x, y]):
        np.testing.assert_allclose(_recalibrated_mean(data), expected, rtol=1e-6)
    # A dict of whole arrays for a model with named inputs.
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    outputs = keras.layers.BatchNormalization(name="bn")(keras.layers.Add()([a, b]))
    model = keras.Model({"a": a, "b": b}, outputs)
    stats = keras_bn_ext.recalibrate(model, {"a": x, "b": 2 * x}, batch_size=40, verbose=0)
    assert stats["bn"].batches == 3 and stats["bn"].count == 96
    np.testing.assert_allclose(stats["bn"].mean, 3 * expected, rtol=1e-6)
    np.testing.assert_allclose(stats["bn"].variance, (3 * x.astype("float64")).var(0),
                               rtol=1e-5)


def test_bad_steps_and_data_are_named():
    model = _first_bn_model(keras.layers.BatchNormalization(name="bn"))
    x = _batches([8])[0]
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"Received: steps={steps}"):
            keras_bn_ext.recalibrate(model, x, steps=steps, verbose=0)
    for data in (None, 3, "x.npy"):
        with pytest.raises(ValueError, match=f"Received: data={data!r} of type"):
            keras_bn_ext.recalibrate(model, data, verbose=0)


def test_model_that_is_not_a_model_is_named():
    x = np.zeros((4, 2), "float32")
    with pytest.raises(ValueError, match=r"Received: model=None"):
        keras_bn_ext.recalibrate(None, x, verbose=0)
    with pytest.raises(ValueError, match=r"load it first: keras.saving.load_model\('m.keras'\)"):
        keras_bn_ext.recalibrate("m.keras", x, verbose=0)

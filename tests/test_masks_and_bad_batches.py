"""Masks on any channel axis, and batches that must not corrupt the moving
statistics: empty, fully masked, non-finite (issue 2, "Where Keras is wrong,
be right").

Masked statistics are compared with float64 NumPy statistics over exactly the
unmasked elements of the same float32 inputs; rtol=1e-6 is float32 rounding
(a few units of 2**-24), so an epsilon bias or a masked element leaking in
would fail.
"""

import keras
import numpy as np
import pytest
import reference
from helpers import assert_weights_equal
from helpers import to_numpy
from helpers import weight_values

import keras_bn_ext

BN = keras_bn_ext.BatchNormalization


def _random_mask(shape, seed=0, p=0.6):
    mask = np.random.default_rng(seed).random(shape) < p
    # At least one element per position of the first axis keeps every
    # channel non-empty in these cases.
    mask.reshape(shape[0], -1)[:, 0] = True
    return mask


# (input shape, axis, mask shape, how the mask maps onto the input shape).
# The last field is the shape the mask is reshaped to before broadcasting.
MASK_CASES = {
    # The natural mask for axis=1: inputs.shape without the channel axis.
    # Keras expands it on the last axis and fails (see the test below).
    "axis1_rank3": ((6, 3, 5), 1, (6, 5), (6, 1, 5)),
    "axis1_rank4": ((4, 3, 5, 2), 1, (4, 5, 2), (4, 1, 5, 2)),
    "axis2_rank4": ((4, 5, 3, 2), 2, (4, 5, 2), (4, 5, 1, 2)),
    # Keras's convention for the last axis: inputs.shape[:-1].
    "last_axis": ((6, 5, 3), -1, (6, 5), (6, 5, 1)),
    # Keras's convention inputs.shape[:-1] with axis=1: the mask covers
    # (batch, channel) and is expanded on the last axis, as Keras does.
    "keras_convention_axis1": ((6, 3, 5), 1, (6, 3), (6, 3, 1)),
    # A single channel (Keras squeezes it to a scalar and fails on jax/torch).
    "single_channel": ((6, 5, 1), -1, (6, 5), (6, 5, 1)),
    "single_channel_axis1": ((6, 1, 5), 1, (6, 5), (6, 1, 5)),
    # A mask with the inputs' full rank: a different mask per channel.
    "full_rank": ((6, 5, 3), -1, (6, 5, 3), (6, 5, 3)),
    "full_rank_axis1": ((6, 3, 5), 1, (6, 3, 5), (6, 3, 5)),
    # Full rank and broadcastable.
    "full_rank_broadcast": ((6, 5, 3), -1, (6, 5, 1), (6, 5, 1)),
    # Several channel axes (a list axis): the mask is the rest.
    "list_axis": ((4, 3, 5, 2), [1, 3], (4, 5), (4, 1, 5, 1)),
}


def _case(name, seed=0):
    shape, axis, mask_shape, mapped = MASK_CASES[name]
    x = (np.random.default_rng(seed + 1).standard_normal(shape) * 2 + 3).astype("float32")
    mask = _random_mask(mask_shape, seed)
    full = np.broadcast_to(mask.reshape(mapped), shape)
    axes = axis if isinstance(axis, list) else [axis]
    return x, axis, mask, full, axes


@pytest.mark.parametrize("name", list(MASK_CASES))
def test_masked_statistics_are_numpy_statistics_of_unmasked_elements(name):
    x, axis, mask, full, axes = _case(name)
    expected = reference.batch_norm(x, axis=axes, mask=full)
    layer = BN(axis=axis, momentum=0.0)

    y = to_numpy(layer(x, training=True, mask=mask))

    # momentum=0: the moving statistics are the batch's masked statistics.
    np.testing.assert_allclose(to_numpy(layer.moving_mean), expected.mean, rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), expected.variance,
                               rtol=1e-6, atol=1e-7)
    # Every position (masked or not) is normalized with those statistics.
    np.testing.assert_allclose(y, expected.output, rtol=1e-5, atol=1e-6)


def test_keras_fails_on_axis1_mask_where_ours_works():
    # Documents Keras 3.15: it always expands the mask on the last axis, so a
    # (N, T) mask for (N, C, T) inputs with axis=1 cannot broadcast.
    x, axis, mask, full, axes = _case("axis1_rank3")
    with pytest.raises(Exception):
        keras.layers.BatchNormalization(axis=1)(x, training=True, mask=mask)
    layer = BN(axis=1, momentum=0.0)
    layer(x, training=True, mask=mask)
    expected = reference.batch_norm(x, axis=axes, mask=full)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), expected.mean, rtol=1e-6)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf, 3e38])
@pytest.mark.parametrize("name", ["axis1_rank3", "last_axis", "full_rank", "single_channel"])
def test_masked_positions_do_not_affect_statistics(name, bad_value):
    # Whatever sits under the mask (padding garbage, NaN, inf, a value whose
    # square overflows) must not reach the statistics.
    x, axis, mask, full, axes = _case(name)
    dirty = x.copy()
    dirty[~full] = bad_value
    clean_layer = BN(axis=axis, momentum=0.0)
    dirty_layer = BN(axis=axis, momentum=0.0)

    clean_y = to_numpy(clean_layer(x, training=True, mask=mask))
    dirty_y = to_numpy(dirty_layer(dirty, training=True, mask=mask))

    assert_weights_equal(weight_values(clean_layer), weight_values(dirty_layer))
    assert np.all(np.isfinite(to_numpy(dirty_layer.moving_variance)))
    np.testing.assert_array_equal(dirty_y[full], clean_y[full])


def _trained_layer(axis, x):
    # A layer whose moving statistics are not the initial 0 / 1, so that
    # "untouched" cannot pass by accident.
    layer = BN(axis=axis, momentum=0.5)
    layer(x * 3.0 + 7.0, training=True)
    return layer


@pytest.mark.parametrize("name", ["axis1_rank3", "last_axis", "full_rank", "single_channel",
                                  "keras_convention_axis1", "list_axis"])
def test_fully_masked_batch_leaves_moving_statistics_untouched(name):
    x, axis, mask, full, axes = _case(name)
    layer = _trained_layer(axis, x)
    before = weight_values(layer)

    y = to_numpy(layer(x, training=True, mask=np.zeros_like(mask)))

    assert_weights_equal(before, weight_values(layer))
    assert y.shape == x.shape
    assert np.all(np.isfinite(y))


def test_fully_masked_channel_leaves_that_channel_untouched():
    x, axis, mask, full, axes = _case("full_rank")
    mask = mask.copy()
    mask[..., 1] = False  # channel 1 sees no element in this batch
    layer = _trained_layer(axis, x)
    old_mean = to_numpy(layer.moving_mean).copy()
    old_var = to_numpy(layer.moving_variance).copy()
    expected = reference.batch_norm(
        x, reference.State(old_mean, old_var), mask=mask, momentum=0.5
    ).state

    y = to_numpy(layer(x, training=True, mask=mask))

    new_mean = to_numpy(layer.moving_mean)
    new_var = to_numpy(layer.moving_variance)
    assert new_mean[1] == old_mean[1] and new_var[1] == old_var[1]
    for c in (0, 2):  # the other channels follow momentum=0.5 exactly
        np.testing.assert_allclose(new_mean[c], expected.moving_mean[c], rtol=1e-6)
        np.testing.assert_allclose(new_var[c], expected.moving_variance[c], rtol=1e-6)
    assert np.all(np.isfinite(y))


def test_keras_fully_masked_batch_decays_variance_where_ours_does_not():
    # Documents Keras 3.15 (all backends): a fully masked batch counts as
    # mean 0 / variance 0 and pulls the moving variance toward 0.
    x, axis, mask, full, axes = _case("last_axis")
    none = np.zeros_like(mask)
    theirs = keras.layers.BatchNormalization(momentum=0.5)
    theirs(x, training=True, mask=none)
    np.testing.assert_allclose(to_numpy(theirs.moving_variance), 0.5)
    ours = BN(momentum=0.5)
    ours(x, training=True, mask=none)
    np.testing.assert_array_equal(to_numpy(ours.moving_variance), 1.0)
    np.testing.assert_array_equal(to_numpy(ours.moving_mean), 0.0)


@pytest.mark.parametrize(
    "shape,axis",
    [((0, 3), -1), ((0, 5, 3), -1), ((0, 3, 4, 4), 1), ((4, 0, 3), -1)],
)
def test_empty_batch_leaves_moving_statistics_untouched(shape, axis):
    full_shape = tuple(s or 2 for s in shape)
    layer = _trained_layer(axis, np.random.default_rng(0).random(full_shape).astype("float32"))
    before = weight_values(layer)

    y = to_numpy(layer(np.zeros(shape, "float32"), training=True))

    assert_weights_equal(before, weight_values(layer))
    assert y.shape == shape


def test_keras_empty_batch_writes_nan_where_ours_does_not():
    # Documents Keras 3.15 (all backends): 0/0 statistics reach the moving
    # averages.
    empty = np.zeros((0, 3), "float32")
    theirs = keras.layers.BatchNormalization()
    theirs(empty, training=True)
    assert np.all(np.isnan(to_numpy(theirs.moving_mean)))
    ours = BN()
    ours(empty, training=True)
    np.testing.assert_array_equal(to_numpy(ours.moving_mean), 0.0)
    np.testing.assert_array_equal(to_numpy(ours.moving_variance), 1.0)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape,axis", [((8, 3), -1), ((4, 3, 5), 1), ((4, 5, 3), -1)])
def test_nonfinite_batch_does_not_update_but_output_shows_it(shape, axis, bad_value):
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    layer = _trained_layer(axis, x)
    before = weight_values(layer)
    dirty = x.copy()
    dirty.flat[3] = bad_value

    y = to_numpy(layer(dirty, training=True))

    assert_weights_equal(before, weight_values(layer))
    # The user must see the problem: the output is not all finite.
    assert not np.all(np.isfinite(y))
    assert np.any(np.isnan(y))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_skip_nonfinite_updates_false_lets_nan_through(bad_value):
    x = np.random.default_rng(0).standard_normal((8, 3)).astype("float32")
    layer = BN(momentum=0.5, skip_nonfinite_updates=False)
    dirty = x.copy()
    dirty[2, 1] = bad_value
    layer(dirty, training=True)
    moving_mean = to_numpy(layer.moving_mean)
    moving_var = to_numpy(layer.moving_variance)
    # Channel 1 is poisoned (Keras's behaviour); the others are updated normally.
    assert not np.isfinite(moving_mean[1]) and np.isnan(moving_var[1])
    expected = reference.batch_norm(x, momentum=0.5).state
    np.testing.assert_allclose(moving_mean[[0, 2]], expected.moving_mean[[0, 2]], rtol=1e-6)
    np.testing.assert_allclose(
        moving_var[[0, 2]], expected.moving_variance[[0, 2]], rtol=1e-6
    )


# Through compiled fit() (default compile settings) -------------------------


def _fit_model(bn, input_shape):
    inputs = keras.Input(input_shape)
    outputs = keras.layers.Dense(1)(bn(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    return model


def _nan_batches():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((24, 4)) * 2 + 5).astype("float32")
    x[10, 2] = np.nan  # only the second batch of 8 contains a NaN
    return x, np.zeros((24, 1), "float32")


def test_fit_nan_batch_does_not_poison_moving_statistics():
    x, y = _nan_batches()
    bn = BN(momentum=0.5)
    model = _fit_model(bn, (4,))
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    # The loss is NaN from the NaN batch on (the weights after BN are NaN
    # now), but BN's input is the data, and its moving statistics saw only
    # batches 0 and 2.
    assert np.isnan(history.history["loss"][-1])
    expected = reference.train([x[0:8], x[16:24]], momentum=0.5)[-1].state
    np.testing.assert_allclose(to_numpy(bn.moving_mean), expected.moving_mean, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(bn.moving_variance), expected.moving_variance,
                               rtol=1e-6)


def test_fit_nan_batch_poisons_when_skipping_is_off():
    x, y = _nan_batches()
    bn = BN(momentum=0.5, skip_nonfinite_updates=False)
    model = _fit_model(bn, (4,))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert np.isnan(to_numpy(bn.moving_mean)[2])


def test_fit_with_masking_layer_uses_exact_masked_statistics():
    # Sequences padded with zeros; keras.layers.Masking gives BN a (N, T)
    # mask. Batch 1 is all padding: a fully masked batch inside fit.
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((16, 6, 3)) * 2 + 4).astype("float32")
    lengths = rng.integers(1, 7, size=8)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    x[8:] = 0.0
    inputs = keras.Input((6, 3))
    bn = BN(momentum=0.5)
    outputs = keras.layers.Dense(1)(bn(keras.layers.Masking(0.0)(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros((16, 6, 1), "float32"), batch_size=8, epochs=1, shuffle=False,
              verbose=0)

    # The state after batch 0; the fully masked batch 1 changed nothing.
    mask = np.any(x[:8] != 0, axis=-1, keepdims=True)
    expected = reference.batch_norm(x[:8], mask=mask, momentum=0.5).state
    np.testing.assert_allclose(to_numpy(bn.moving_mean), expected.moving_mean, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(bn.moving_variance), expected.moving_variance,
                               rtol=1e-6)

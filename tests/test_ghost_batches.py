"""Ghost (virtual) batches in real training (issue 11, item 7; issue 14): a
batch that `virtual_batch_size` does not divide gets a smaller virtual batch
for the samples left over, with exact statistics, in eager calls and through
`fit` (where TensorFlow traces a `None` batch size), in both groupings
(`"contiguous"` and tf-keras's `"strided"`), checked against a float64
NumPy reference: outputs, gradients, moving statistics."""

import json
import math

import keras
import numpy as np
import pytest
import reference
from autodiff import gradients
from helpers import BACKEND
from helpers import fit_batches
from helpers import to_numpy

import keras_bn_ext

BN = keras_bn_ext.BatchNormalization
EPSILON = 1e-3
GROUPINGS = ("contiguous", "strided")


def members(n, k, grouping):
    """The sample indices of each virtual batch (the documented rule)."""
    groups = math.ceil(n / k)
    if grouping == "contiguous":
        return [list(range(g * k, min(n, g * k + k))) for g in range(groups)]
    return [list(range(g, n, groups)) for g in range(groups)]


def ghost_reference(x, k, grouping, axis=-1, mask=None, gamma=None, beta=None,
                    renorm_state=None, clipping=None):
    """float64: `(outputs, update_mean, update_variance, group_means)`.

    Each virtual batch is normalized with its own moments; the moving
    update takes their average weighted by sample counts. With
    `renorm_state`, r and d come from that average (as tf-keras).
    """
    x = np.asarray(x, "float64")
    mask = None if mask is None else np.broadcast_to(mask, x.shape)
    parts = members(len(x), k, grouping)
    moments = [reference.moments(x[idx], axis, None if mask is None else mask[idx])
               for idx in parts]
    sizes = np.array([len(idx) for idx in parts], "float64")
    means = np.stack([m[0] for m in moments])
    variances = np.stack([m[1] for m in moments])
    w = sizes.reshape((-1,) + (1,) * (means.ndim - 1)) / sizes.sum()
    mean, variance = (means * w).sum(0), (variances * w).sum(0)
    if renorm_state is not None:
        r, d = reference._renorm_corrections(mean, variance, renorm_state, EPSILON,
                                             clipping)
        g = 1.0 if gamma is None else gamma
        b = 0.0 if beta is None else beta
        gamma, beta = r * g, d * g + b
    out = np.empty_like(x)
    for idx, m, v in zip(parts, means, variances):
        out[idx] = reference.normalize(x[idx], m, v, axis, gamma, beta, EPSILON)
    return out, mean, variance, means


def reference_input_gradient(x, dy, k, grouping, gamma):
    """d sum(y * dy) / dx for channels-last `x`, per virtual batch."""
    x, dy = np.asarray(x, "float64"), np.asarray(dy, "float64")
    dx = np.empty_like(x)
    reduce = tuple(range(x.ndim - 1))
    for idx in members(len(x), k, grouping):
        part, g_dy = x[idx], dy[idx]
        n = np.prod(part.shape[:-1])
        mean = part.mean(reduce)
        inv = 1.0 / np.sqrt(part.var(reduce) + EPSILON)
        xhat = (part - mean) * inv
        dx[idx] = gamma * inv / n * (
            n * g_dy - g_dy.sum(reduce) - xhat * (g_dy * xhat).sum(reduce))
    return dx


def data(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 3 + 2).astype("float32")


def test_membership_rule_of_each_grouping():
    # The documented rule, spelled out: 10 samples, k=4, G=3.
    assert members(10, 4, "contiguous") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert members(10, 4, "strided") == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    # Strided on a batch k divides is tf-keras's reshape to (k, N/k).
    assert members(8, 4, "strided") == [list(c) for c in np.arange(8).reshape(4, 2).T]


CASES = {
    "remainder": ((10, 3), -1, 4),
    "fewer_than_k": ((3, 3), -1, 4),
    "remainder_of_one": ((9, 2), -1, 4),
    "rank4": ((7, 2, 3, 3), -1, 3),
    "channels_first": ((5, 3, 4), 1, 2),
    "even": ((8, 3), -1, 4),
}


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("name", list(CASES))
def test_each_virtual_batch_gets_its_own_exact_statistics(name, grouping):
    shape, axis, k = CASES[name]
    x = data(shape)
    layer = BN(axis=axis, momentum=0.5, virtual_batch_size=k,
               virtual_batch_grouping=grouping)
    with keras_bn_ext.debug.capture() as records:
        y = to_numpy(layer(x, training=True))
    out, mean, variance, means = ghost_reference(x, k, grouping, axis)
    np.testing.assert_allclose(y, out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(records[0].mean, means, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), 0.5 * mean,
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), 0.5 + 0.5 * variance,
                               atol=1e-5, rtol=1e-5)


def test_the_two_groupings_differ():
    x = data((8, 3))
    y = {g: to_numpy(BN(virtual_batch_size=4, virtual_batch_grouping=g)(
        x, training=True)) for g in GROUPINGS}
    assert not np.allclose(y["contiguous"], y["strided"], atol=1e-2)


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_mask_and_remainder_together(grouping):
    x = data((10, 4, 3))
    mask = np.random.default_rng(1).random((10, 4)) > 0.3
    layer = BN(momentum=0.0, virtual_batch_size=4, virtual_batch_grouping=grouping)
    y = to_numpy(layer(x, training=True, mask=mask))
    out, mean, variance, _ = ghost_reference(x, 4, grouping, mask=mask[..., None])
    np.testing.assert_allclose(y, out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), mean, atol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), variance, atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("shape", [(10, 3), (7, 2, 3)], ids=str)
def test_input_gradient_with_a_remainder(shape, grouping):
    x = data(shape)
    dy = np.random.default_rng(2).standard_normal(shape).astype("float32")
    gamma = np.array([0.5, 2.0, 1.5], "float32")
    layer = BN(virtual_batch_size=4, virtual_batch_grouping=grouping,
               gamma_initializer=keras.initializers.Constant(gamma))
    layer.build(shape)

    def loss(x):
        with keras.StatelessScope():  # the moving update stays out of autodiff
            y = layer(x, training=True)
        return keras.ops.sum(y * keras.ops.convert_to_tensor(dy))

    (dx,) = gradients(loss, [x])
    np.testing.assert_allclose(dx, reference_input_gradient(x, dy, 4, grouping, gamma),
                               atol=1e-4, rtol=1e-4)


def single_layer_model(layer, features=3):
    model = keras.Sequential([keras.Input((features,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_fit_with_a_last_smaller_batch(grouping):
    # 23 samples in batches of 10: 10, 10, 3; virtual batches of 4 (the
    # TensorFlow trainer traces a None batch size; JAX retraces for 3).
    x = data((23, 3), seed=3)
    layer = BN(momentum=0.9, virtual_batch_size=4, virtual_batch_grouping=grouping)
    model = single_layer_model(layer)
    model.fit(x, np.zeros_like(x), batch_size=10, epochs=2, shuffle=False, verbose=0)
    mean, variance = np.zeros(3), np.ones(3)
    for batch in fit_batches(x, 10, steps=6):
        _, batch_mean, batch_variance, _ = ghost_reference(batch, 4, grouping)
        mean = 0.9 * mean + 0.1 * batch_mean
        variance = 0.9 * variance + 0.1 * batch_variance
    np.testing.assert_allclose(to_numpy(layer.moving_mean), mean, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), variance, atol=1e-5,
                               rtol=1e-5)
    # evaluate and predict on batches of 7 normalize with the moving ones.
    gamma, beta = to_numpy(layer.gamma), to_numpy(layer.beta)
    expected = reference.normalize(x, mean, variance, gamma=gamma, beta=beta)
    np.testing.assert_allclose(model.predict(x, batch_size=7, verbose=0), expected,
                               atol=1e-4, rtol=1e-4)
    model.evaluate(x, np.zeros_like(x), batch_size=7, verbose=0)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), mean, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_one_fit_step_on_a_batch_with_a_remainder_trains_gamma_and_beta(grouping):
    x, target = data((10, 3), seed=4), data((10, 3), seed=5)
    layer = BN(virtual_batch_size=4, virtual_batch_grouping=grouping)
    model = single_layer_model(layer)
    model.fit(x, target, batch_size=10, epochs=1, shuffle=False, verbose=0)
    # mse over 30 elements: dy = 2 (y - target) / 30; y = xhat at gamma 1.
    xhat, _, _, _ = ghost_reference(x, 4, grouping)
    dy = 2.0 * (xhat - target) / x.size
    np.testing.assert_allclose(to_numpy(layer.gamma), 1.0 - 0.1 * (dy * xhat).sum(0),
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.beta), -0.1 * dy.sum(0), atol=1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a None batch size is TF graphs'")
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_tf_function_with_unknown_batch_size(grouping):
    import tensorflow as tf

    layer = BN(momentum=0.0, virtual_batch_size=4, virtual_batch_grouping=grouping)
    layer.build((None, 3))
    call = tf.function(lambda x: layer(x, training=True),
                       input_signature=[tf.TensorSpec((None, 3), "float32")])
    for n in (8, 10, 3):
        x = data((n, 3), seed=n)
        out, mean, variance, _ = ghost_reference(x, 4, grouping)
        np.testing.assert_allclose(call(x).numpy(), out, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_renorm_with_virtual_batches_uses_the_whole_batch_for_r_and_d(grouping):
    clipping = {"rmax": 1.5, "rmin": 0.8, "dmax": 0.5}
    layer = BN(renorm=True, renorm_clipping=clipping, momentum=0.9,
               renorm_momentum=0.8, virtual_batch_size=4,
               virtual_batch_grouping=grouping)
    state = reference.initial_state(3, renorm=True)
    for seed in (6, 7):
        x = data((10, 3), seed=seed)
        y = to_numpy(layer(x, training=True))
        out, mean, variance, _ = ghost_reference(x, 4, grouping, renorm_state=state,
                                                 clipping=clipping)
        np.testing.assert_allclose(y, out, atol=1e-5, rtol=1e-5)
        updates = reference._renorm_updates(state, mean, variance, 0.9, 0.8, EPSILON)
        state = reference.State(num_batches_tracked=0, **updates)
    for name in ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean",
                 "renorm_stddev"):
        np.testing.assert_allclose(to_numpy(getattr(layer, name)),
                                   getattr(state, name), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_an_empty_batch_leaves_the_moving_statistics_untouched(grouping):
    layer = BN(virtual_batch_size=4, virtual_batch_grouping=grouping)
    y = layer(np.zeros((0, 3), "float32"), training=True)
    assert tuple(y.shape) == (0, 3)
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), np.zeros(3))
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), np.ones(3))


def test_grouping_is_checked_and_written_with_virtual_batches():
    with pytest.raises(ValueError, match="Received: virtual_batch_grouping='rows'"):
        BN(virtual_batch_grouping="rows")
    assert "virtual_batch_grouping" not in BN().get_config()
    # Written whenever there are virtual batches, default or not: a config
    # without it is tf-keras's (strided).
    config = BN(virtual_batch_size=4).get_config()
    assert config["virtual_batch_grouping"] == "contiguous"
    strided = BN(virtual_batch_size=4, virtual_batch_grouping="strided")
    clone = BN.from_config(json.loads(json.dumps(strided.get_config())))
    assert clone.virtual_batch_grouping == "strided"
    assert clone.get_config() == strided.get_config()


def test_strided_layer_saves_and_loads(tmp_path):
    x = data((10, 3))
    layer = BN(momentum=0.5, virtual_batch_size=4, virtual_batch_grouping="strided")
    model = single_layer_model(layer)
    model.fit(x, x, batch_size=10, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "ghost.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].virtual_batch_grouping == "strided"
    np.testing.assert_allclose(to_numpy(loaded(x, training=True)),
                               to_numpy(model(x, training=True)), atol=1e-6)

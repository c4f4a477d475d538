"""Flax `nnx.BatchNorm` import and export (issue 14): `from_flax` and
`to_flax` keep every argument with a counterpart, refuse the others naming
them, and the layer computes nnx's numbers in inference, in a training call
(outputs, batch statistics, gradients) and through `fit` against nnx's own
SGD loop. The values go through NumPy, so this runs on every backend; nnx
itself runs on JAX (installed with the CPU backends)."""

import doctest
import re
import sys

import keras
import numpy as np
import pytest
from autodiff import gradients
from helpers import fit_batches
from helpers import to_numpy

import keras_bn_ext
from keras_bn_ext.interop import from_flax
from keras_bn_ext.interop import to_flax
from keras_bn_ext.layers.options import OPTIONS

nnx = pytest.importorskip("flax.nnx", reason="flax is not installed ([flax] extra)")
jnp = pytest.importorskip("jax.numpy")

BN = keras_bn_ext.BatchNormalization
TOL = {"atol": 1e-5, "rtol": 1e-5}

# name: (nnx.BatchNorm kwargs, input shape)
CASES = {
    "dense": ({"momentum": 0.9}, (8, 3)),
    "image_nhwc": ({"momentum": 0.8, "epsilon": 1e-3}, (6, 4, 4, 3)),
    "channels_first": ({"axis": 1, "use_bias": False}, (6, 3, 5)),
    "two_axes": ({"axis": (1, 3), "use_scale": False}, (6, 2, 4, 3)),
}
# nnx normalizes over several feature axes in inference only: in training its
# running average update does not broadcast (flax 0.12).
TRAINABLE_IN_NNX = [name for name in CASES if name != "two_axes"]


def data(shape, seed=0, loc=1.0, scale=2.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + loc).astype("float32")


def flax_module(name, seed=0):
    """An nnx.BatchNorm for case `name`, with a trained-looking state."""
    kwargs, shape = CASES[name]
    axes = kwargs.get("axis", -1)
    axes = axes if isinstance(axes, tuple) else (axes,)
    features = int(np.prod([shape[a] for a in axes]))
    bn = nnx.BatchNorm(features, use_fast_variance=False, rngs=nnx.Rngs(0),
                       **kwargs)
    rng = np.random.default_rng(seed)
    for variable in (bn.scale, bn.bias, bn.mean, bn.var):
        if variable is not None:
            variable[...] = jnp.asarray(rng.uniform(0.5, 1.5, features), "float32")
    return bn, shape


def layer_for(bn, shape):
    return from_flax(bn, input_shape=(None,) + shape[1:])


@pytest.mark.parametrize("name", list(CASES))
def test_inference_matches_nnx(name):
    bn, shape = flax_module(name)
    layer = layer_for(bn, shape)
    x = data(shape)
    bn.eval()
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    np.testing.assert_allclose(model.predict(x, verbose=0), np.asarray(bn(x)), **TOL)


@pytest.mark.parametrize("name", TRAINABLE_IN_NNX)
def test_a_training_call_matches_nnx(name):
    bn, shape = flax_module(name)
    layer = layer_for(bn, shape)
    x, dy = data(shape), data(shape, seed=1, loc=0.0, scale=1.0)

    reference = nnx.clone(bn)
    reference.train()
    y_flax = np.asarray(reference(x))
    bn.train()
    grads, dx_flax = nnx.grad(lambda m, x: jnp.sum(m(x) * dy), argnums=(0, 1))(bn, x)

    trainable = [to_numpy(v) for v in layer.trainable_variables]
    non_trainable = [to_numpy(v) for v in layer.non_trainable_variables]
    y, after = layer.stateless_call(trainable, non_trainable, x, training=True)
    np.testing.assert_allclose(to_numpy(y), y_flax, **TOL)
    for value, theirs in zip(after, (reference.mean, reference.var)):
        np.testing.assert_allclose(to_numpy(value).reshape(-1), np.asarray(theirs[...]),
                                   **TOL)

    def loss(x, *weights):
        y, _ = layer.stateless_call(list(weights), non_trainable, x, training=True)
        return keras.ops.sum(y * keras.ops.convert_to_tensor(dy))

    ours = gradients(loss, [x] + trainable)
    np.testing.assert_allclose(ours[0], np.asarray(dx_flax), atol=1e-4, rtol=1e-4)
    names = [n for n, v in (("scale", layer.gamma), ("bias", layer.beta)) if v is not None]
    for grad, flax_name in zip(ours[1:], names):
        np.testing.assert_allclose(grad.reshape(-1), np.asarray(grads[flax_name][...]),
                                   atol=1e-4, rtol=1e-4)


def nnx_sgd(bn, x, target, batch_size, epochs, learning_rate):
    """nnx's own training loop: SGD on the mean squared error."""
    bn.train()

    def loss(module, xb, tb):
        return jnp.mean((module(xb) - tb) ** 2)

    for xb, tb in zip(fit_batches(x, batch_size, epochs * 2),
                      fit_batches(target, batch_size, epochs * 2)):
        grads = nnx.grad(loss)(bn, xb, tb)
        for key in ("scale", "bias"):
            if getattr(bn, key) is not None:
                getattr(bn, key)[...] -= learning_rate * grads[key][...]


@pytest.mark.parametrize("name", ["dense", "image_nhwc"])
def test_fit_matches_an_nnx_training_loop(name):
    bn, shape = flax_module(name)
    layer = layer_for(bn, shape)
    x, target = data((12,) + shape[1:]), data((12,) + shape[1:], seed=2, loc=0.0)
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, target, batch_size=6, epochs=2, shuffle=False, verbose=0)
    nnx_sgd(bn, x, target, 6, 2, 0.1)
    for ours, theirs in (("gamma", "scale"), ("beta", "bias"),
                         ("moving_mean", "mean"), ("moving_variance", "var")):
        np.testing.assert_allclose(to_numpy(getattr(layer, ours)),
                                   np.asarray(getattr(bn, theirs)[...]),
                                   atol=1e-5, rtol=1e-5, err_msg=ours)


def test_default_fast_variance_agrees_on_ordinary_data():
    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))  # use_fast_variance=True
    layer = from_flax(bn)
    x = data((16, 3))
    bn.train()
    np.testing.assert_allclose(to_numpy(layer(x, training=True)), np.asarray(bn(x)),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(CASES))
def test_to_flax_gives_back_the_layer_after_fit(name):
    bn, shape = flax_module(name)
    layer = layer_for(bn, shape)
    x = data(shape, seed=3)
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, x, batch_size=3, epochs=1, shuffle=False, verbose=0)

    exported = to_flax(layer)
    kwargs = CASES[name][0]
    assert exported.axis == kwargs.get("axis", -1)
    assert (exported.momentum, exported.epsilon) == (layer.momentum, layer.epsilon)
    assert (exported.use_bias, exported.use_scale) == (layer.center, layer.scale)
    assert exported.use_fast_variance is False and exported.use_running_average is False
    exported.eval()
    np.testing.assert_allclose(np.asarray(exported(x)), model.predict(x, verbose=0),
                               **TOL)
    if name not in TRAINABLE_IN_NNX:
        return
    exported.train()
    np.testing.assert_allclose(np.asarray(exported(x)),
                               to_numpy(layer(x, training=True)), **TOL)
    np.testing.assert_allclose(np.asarray(exported.var[...]),
                               to_numpy(layer.moving_variance).reshape(-1), **TOL)


def test_dtypes_map_both_ways():
    wide = from_flax(nnx.BatchNorm(3, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
    assert wide.moving_mean.dtype == "float64"
    mixed = from_flax(nnx.BatchNorm(3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    assert mixed.dtype_policy.name == "mixed_bfloat16"
    bn = to_flax(mixed)
    assert np.dtype(bn.dtype) == np.dtype(jnp.bfloat16)
    assert np.dtype(bn.param_dtype) == np.float32
    with pytest.raises(ValueError, match="param_dtype=float16"):
        from_flax(nnx.BatchNorm(3, param_dtype=jnp.float16, rngs=nnx.Rngs(0)))


def test_axis_name_is_synchronized_and_mode_moving_is_use_running_average():
    layer = from_flax(nnx.BatchNorm(3, axis_name="batch", rngs=nnx.Rngs(0)))
    assert layer.synchronized is True
    frozen = BN(mode="moving")
    frozen.build((None, 3))
    assert to_flax(frozen).use_running_average is True


@pytest.mark.parametrize(
    "kwargs, message",
    [({"axis_index_groups": [[0]]}, "axis_index_groups=[[0]]"),
     ({"promote_dtype": lambda args, dtype: args}, "promote_dtype=<function")],
)
def test_module_arguments_without_counterpart_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(f"Received: {message}")):
        from_flax(nnx.BatchNorm(3, rngs=nnx.Rngs(0), **kwargs))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="Received: bn=Linear"):
        from_flax(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    bn = nnx.BatchNorm(3, axis=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="Received: axis=2, input_shape=None"):
        from_flax(bn)
    with pytest.raises(ValueError, match=r"Received: input_shape=\(None, 4, 5\)"):
        from_flax(bn, input_shape=(None, 4, 5))
    with pytest.raises(ValueError, match="Received: layer="):
        to_flax(BN())
    keras_layer = keras.layers.BatchNormalization()
    keras_layer.build((None, 3))
    with pytest.raises(ValueError, match="exports a keras_bn_ext.BatchNormalization.*"
                       r"Received: layer of type keras\.src\.layers"):
        to_flax(keras_layer)
    two_axes = BN(axis=[1, 3])
    two_axes.build((None, 2, 5, 3))
    with pytest.warns(UserWarning, match=r"inference \(eval\(\)\) only.*axis=\[1, 3\]"):
        to_flax(two_axes)
    batch = BN(mode="batch")
    batch.build((None, 3))
    with pytest.raises(ValueError, match="Received: mode='batch'"):
        to_flax(batch)


USED = {"momentum": None, "virtual_batch_size": 2, "virtual_batch_grouping": "strided"}


@pytest.mark.parametrize("name", [n for n, o in OPTIONS.items() if o.flax])
def test_to_flax_refuses_each_option_flax_cannot_express(name):
    value = USED.get(name, not OPTIONS[name].default)
    layer = BN(**{name: value})
    layer.build((None, 3))
    with pytest.raises(ValueError) as info:
        to_flax(layer)
    assert f"{OPTIONS[name].flax}. Received: {name}={value!r}" in str(info.value)


def test_missing_flax_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flax", None)  # `import flax` now fails
    for call in (lambda: from_flax(object()), lambda: to_flax(BN())):
        with pytest.raises(ImportError, match=r"keras-bn-ext\[flax\]"):
            call()


def test_docstring_examples():
    import keras_bn_ext.interop.flax as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed

"""The training kernel's hand-written gradient, and the precision the shifted
statistics keep, on every backend.

The gradient is checked three ways: the layer's gradient against a float64
NumPy derivation; the kernel (`statistics.batch_norm`) against autodiff of
the same forward formula (`statistics.moments` + `normalize_batch`), with
cotangents on the returned mean and variance too; and second order (the
gradient of a gradient) the same way.
"""

import keras
import numpy as np
import pytest
from autodiff import gradients
from helpers import to_numpy
from keras import ops

import keras_bn_ext
from keras_bn_ext import statistics

BACKEND = keras.backend.backend()


def second_order(f, args):
    """Gradients of `sum(grad f ** 2)`: differentiates the gradient itself."""
    if BACKEND == "jax":
        import jax

        argnums = tuple(range(len(args)))

        def norm(*a):
            return sum(ops.sum(ops.square(g)) for g in jax.grad(f, argnums)(*a))

        return [np.asarray(g) for g in jax.grad(norm, argnums)(*args)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as outer:
            outer.watch(tensors)
            with tf.GradientTape() as inner:
                inner.watch(tensors)
                loss = f(*tensors)
            norm = sum(tf.reduce_sum(g**2) for g in inner.gradient(loss, tensors))
        return [g.numpy() for g in outer.gradient(norm, tensors)]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    first = torch.autograd.grad(f(*tensors), tensors, create_graph=True)
    norm = sum((g**2).sum() for g in first)
    return [g.numpy() for g in torch.autograd.grad(norm, tensors)]


def reference_vjp(x, dy, gamma, axes, epsilon, mask=None):
    """float64 gradients of `sum(y * dy)` for y = BN(x) with the statistics
    over the unmasked elements: (dx, dgamma, dbeta)."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    w = np.ones_like(x) if mask is None else np.broadcast_to(mask, x.shape).astype(np.float64)
    n = w.sum(axis=axes, keepdims=True)
    mean = (w * x).sum(axis=axes, keepdims=True) / n
    var = (w * (x - mean) ** 2).sum(axis=axes, keepdims=True) / n
    inv = 1.0 / np.sqrt(var + epsilon)
    x_hat = (x - mean) * inv
    sum_dy = dy.sum(axis=axes, keepdims=True)
    sum_dy_xhat = (dy * x_hat).sum(axis=axes, keepdims=True)
    dx = gamma * inv * (dy - w * (sum_dy + x_hat * sum_dy_xhat) / n)
    return dx, sum_dy_xhat, sum_dy


CASES = {
    # name: (shape, reduction axes, mask shape or None)
    "dense": ((32, 5), [0], None),
    "conv_last": ((4, 6, 5, 3), [0, 1, 2], None),
    "conv_first": ((4, 3, 6, 5), [0, 2, 3], None),
    "masked": ((6, 7, 4), [0, 1], (6, 7, 1)),
}


def _case(name, seed=0):
    shape, axes, mask_shape = CASES[name]
    rs = np.random.RandomState(seed)
    x = rs.normal(5.0, 3.0, shape).astype("float32")
    dy = rs.normal(size=shape).astype("float32")
    param = [1 if i in axes else d for i, d in enumerate(shape)]
    gamma = (rs.rand(*param) + 0.5).astype("float32")
    beta = rs.rand(*param).astype("float32")
    mask = None if mask_shape is None else rs.rand(*mask_shape) > 0.3
    return x, dy, gamma, beta, axes, mask


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_gradient_matches_float64_derivation(name):
    x, dy, gamma, beta, axes, mask = _case(name)

    def loss(x, gamma, beta):
        m = None if mask is None else ops.convert_to_tensor(mask)
        y, _ = statistics.batch_norm(x, axes, gamma, beta, 1e-3, m)
        return ops.sum(y * ops.convert_to_tensor(dy))

    ours = gradients(loss, [x, gamma, beta])
    expected = reference_vjp(x, dy, gamma, tuple(axes), 1e-3, mask)
    for got, want in zip(ours, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _kernel_and_autodiff(x, dy, axes, mask, cot_mean, cot_var):
    m = None if mask is None else ops.convert_to_tensor(mask)

    def kernel(x, gamma, beta):
        y, moments = statistics.batch_norm(x, axes, gamma, beta, 1e-3, m)
        return _loss(y, moments)

    def autodiff(x, gamma, beta):
        moments = statistics.moments(x, axes, m)
        y = statistics.normalize_batch(x, moments, gamma, beta, 1e-3)
        return _loss(y, moments)

    def _loss(y, moments):
        # Squares make the loss nonlinear in the outputs (for second order);
        # the mean and variance terms give them cotangents of their own.
        return (
            ops.sum(ops.square(y) * ops.convert_to_tensor(dy))
            + ops.sum(moments.mean * cot_mean)
            + ops.sum(moments.variance * cot_var)
        )

    return kernel, autodiff


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_gradient_equals_autodiff_with_statistics_cotangents(name):
    x, dy, gamma, beta, axes, mask = _case(name, seed=1)
    # torch's native kernel (unmasked) writes the statistics outside
    # autograd: documented as carrying no gradient there.
    native = BACKEND == "torch" and mask is None
    cot_mean, cot_var = (0.0, 0.0) if native else (0.3, 0.7)
    kernel, autodiff = _kernel_and_autodiff(x, dy, axes, mask, cot_mean, cot_var)
    for got, want in zip(
        gradients(kernel, [x, gamma, beta]), gradients(autodiff, [x, gamma, beta])
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["dense", "conv_first", "masked"])
def test_second_order_gradients_are_exact(name):
    x, dy, gamma, beta, axes, mask = _case(name, seed=2)
    kernel, autodiff = _kernel_and_autodiff(x, dy, axes, mask, 0.0, 0.0)
    for got, want in zip(
        second_order(kernel, [x, gamma, beta]), second_order(autodiff, [x, gamma, beta])
    ):
        scale = max(np.abs(want).max(), 1.0)
        np.testing.assert_allclose(got / scale, want / scale, atol=1e-4)


def _train_call(layer, x):
    """One training call as `fit` compiles it (XLA on JAX and TensorFlow)."""
    if BACKEND == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        step = jax.jit(
            lambda x: layer.stateless_call(trainable, non_trainable, x, training=True)
        )
        y, new_values = step(x)
        for variable, value in zip(layer.non_trainable_variables, new_values):
            variable.assign(value)
        return to_numpy(y)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda x: layer(x, training=True), jit_compile=True)
        return to_numpy(step(tf.constant(x)))
    return to_numpy(layer(x, training=True))


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("mean", [1e5, 1e6])
@pytest.mark.parametrize("shape,axis", [((2**20, 2), -1), ((256, 2, 64, 64), 1)])
def test_variance_and_outputs_stay_exact_far_from_zero(shape, axis, mean, compiled):
    # 1M values per channel at |mean| / std up to 1e6: the variance within
    # 1e-4 relative of float64 and the outputs within 1e-5, in eager calls
    # and compiled ones (whose reductions differ on TensorFlow).
    x = np.random.RandomState(0).normal(mean, 1.0, shape).astype("float32")
    layer = keras_bn_ext.BatchNormalization(axis=axis, momentum=0.0)
    layer.build(shape)
    y = (_train_call(layer, x) if compiled else to_numpy(layer(x, training=True)))
    axes = tuple(i for i in range(len(shape)) if i != axis % len(shape))
    x64 = x.astype(np.float64)
    variance = x64.var(axis=axes)
    mv = to_numpy(layer.moving_variance)
    assert np.max(np.abs(mv - variance) / variance) < 1e-4
    keep = [-1 if i not in axes else 1 for i in range(len(shape))]
    expected = (x64 - x64.mean(axis=axes).reshape(keep)) / np.sqrt(
        variance.reshape(keep) + 1e-3
    )
    np.testing.assert_allclose(y, expected, atol=1e-4)


@pytest.mark.parametrize("mean", [1e5, 1e6])
def test_inference_outputs_stay_exact_far_from_zero(mean):
    # Normalizing as (x - mean) * scale + beta, not x * scale + offset, which
    # loses 1% of the std at mean 1e6 in float32.
    rs = np.random.RandomState(0)
    x = rs.normal(mean, 1.0, (4096, 3)).astype("float32")
    layer = keras_bn_ext.BatchNormalization()
    layer.build(x.shape)
    x64 = x.astype(np.float64)
    layer.moving_mean.assign(x64.mean(axis=0).astype("float32"))
    layer.moving_variance.assign(x64.var(axis=0).astype("float32"))
    y = to_numpy(layer(x, training=False))
    mm = to_numpy(layer.moving_mean).astype(np.float64)
    mv = to_numpy(layer.moving_variance).astype(np.float64)
    np.testing.assert_allclose(y, (x64 - mm) / np.sqrt(mv + 1e-3), atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_float64_inputs_keep_float64_statistics(masked):
    x = ops.cast(np.random.RandomState(0).normal(3, 2, (9, 3)), "float64")
    if keras.backend.standardize_dtype(x.dtype) != "float64":
        pytest.skip("this backend has no float64 (JAX without x64)")
    mask = ops.convert_to_tensor(np.ones((9, 1), bool)) if masked else None
    m = statistics.moments(x, [0], mask)
    y, k = statistics.batch_norm(
        x, [0], ops.ones((1, 3), "float64"), ops.zeros((1, 3), "float64"), 1e-3, mask
    )
    for tensor in [*m, y, *k]:
        assert keras.backend.standardize_dtype(tensor.dtype) == "float64"
    np.testing.assert_allclose(to_numpy(m.variance)[0], to_numpy(x).var(0), rtol=1e-13)

"""Input and policy dtypes (issue 2): float16/bfloat16 inputs and the mixed
policies compute statistics in float32, return the compute dtype and keep
float32 weights; integer inputs (the seed question feeds np.arange) and
float64 inputs are accepted.

How "statistics in float32" is proven: the reference is float64 NumPy over
the values the layer actually sees (the inputs rounded to the compute dtype).
A float16 mean/variance of data around 100 would be off by ~1e-2 relative
(float16 spacing at 100 is 0.0625); we require 1e-5, which only a float32 (or
better) computation reaches. Outputs are allowed one rounding to the output
dtype: rtol = atol = 2**-10 for float16, 2**-7 for bfloat16 (their epsilons).
"""

import keras
import numpy as np
import pytest
import reference
from helpers import BACKEND
from helpers import to_numpy
from keras import ops

import keras_bn_ext

BN = keras_bn_ext.BatchNormalization
EPSILON = reference.EPSILON
OUTPUT_TOL = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 1e-5}


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _as_float64(x):
    """Values of a backend tensor of any float dtype as float64 NumPy."""
    return to_numpy(ops.cast(x, "float32")).astype("float64")


def _data(shape=(256, 3), mean=100.0, std=1.0, seed=0):
    rng = np.random.default_rng(seed)
    scale = std * (1.0 + 0.5 * np.arange(shape[-1]))
    return (mean + scale * rng.standard_normal(shape)).astype("float32")


def _assert_float32_weights(layer):
    for weight in layer.weights:
        assert _dtype(weight) == "float32", weight.path


def _assert_statistics(layer, x64):
    """momentum=0: moving statistics are the batch's, to float32 accuracy."""
    expected = reference.batch_norm(x64)
    ulp = np.spacing(np.float32(np.abs(x64).max()))
    np.testing.assert_allclose(to_numpy(layer.moving_mean), expected.mean, rtol=0,
                               atol=4 * ulp)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), expected.variance,
                               rtol=1e-5)


@pytest.mark.parametrize("input_dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_under_float32_policy(input_dtype):
    # The default policy computes in float32: the inputs are upcast, the
    # output is float32.
    x = ops.cast(_data(), input_dtype)
    x64 = _as_float64(x)
    layer = BN(momentum=0.0)

    y = layer(x, training=True)

    assert _dtype(y) == "float32"
    _assert_float32_weights(layer)
    _assert_statistics(layer, x64)
    np.testing.assert_allclose(to_numpy(y), reference.batch_norm(x64).output, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("renorm", [False, True])
def test_mixed_policies_statistics_float32_output_compute_dtype(policy, renorm):
    compute_dtype = keras.DTypePolicy(policy).compute_dtype
    layer = BN(momentum=0.0, renorm=renorm, dtype=policy)
    x = _data()
    # The layer casts float inputs to its compute dtype; those rounded values
    # are what the statistics must describe.
    x64 = _as_float64(ops.cast(x, compute_dtype))

    y = layer(x, training=True)

    assert layer.compute_dtype == compute_dtype
    assert _dtype(y) == compute_dtype
    _assert_float32_weights(layer)
    tol = OUTPUT_TOL[compute_dtype]
    expected = reference.batch_norm(x64, momentum=0.0, renorm=renorm)
    if not renorm:
        _assert_statistics(layer, x64)
        np.testing.assert_allclose(_as_float64(y), expected.output, rtol=tol, atol=tol)
    else:
        # Renorm's training output is corrected by (r, d) toward its renorm
        # averages (not the plain normalized batch), and its moving variance
        # goes through moving_stddev = sqrt(var + eps): one more float32
        # rounding, ~1e-7 relative.
        np.testing.assert_allclose(to_numpy(layer.moving_mean), expected.state.moving_mean,
                                   rtol=1e-6)
        np.testing.assert_allclose(to_numpy(layer.moving_variance),
                                   expected.state.moving_variance, rtol=1e-4)

    # Inference with the moving statistics: same output, same dtype.
    y_inference = layer(x, training=False)
    assert _dtype(y_inference) == compute_dtype
    np.testing.assert_allclose(_as_float64(y_inference),
                               reference.batch_norm(x64).output, rtol=tol, atol=tol)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_weights_match_keras_dtypes(policy):
    # Same variables and dtypes as Keras under the same policy (weights
    # interchange).
    ours = BN(dtype=policy, renorm=True)
    theirs = keras.layers.BatchNormalization(dtype=policy, renorm=True)
    ours.build((4, 3))
    theirs.build((4, 3))
    assert [(w.name, _dtype(w)) for w in ours.weights] == [
        (w.name, _dtype(w)) for w in theirs.weights
    ]


def test_float16_no_overflow():
    # Mean 1000, std 100: x**2 ~ 1e6 overflows float16 (max 65504). BN is
    # prone to this, which is why statistics are computed in float32.
    layer = BN(momentum=0.0, dtype="mixed_float16")
    x = _data(mean=1000.0, std=100.0)
    x64 = _as_float64(ops.cast(x, "float16"))
    y = layer(x, training=True)
    assert _dtype(y) == "float16"
    assert np.all(np.isfinite(_as_float64(y)))
    _assert_statistics(layer, x64)
    np.testing.assert_allclose(_as_float64(y), reference.batch_norm(x64).output,
                               rtol=2.0**-10, atol=2.0**-10)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_fit_under_mixed_policy(policy):
    # The global policy, compiled fit: BN's statistics are the float32
    # statistics of the compute-dtype inputs, its weights stay float32.
    keras.config.set_dtype_policy(policy)  # conftest restores the policy
    compute_dtype = keras.DTypePolicy(policy).compute_dtype
    x = _data((64, 3))
    inputs = keras.Input((3,))
    bn = BN(momentum=0.0)
    outputs = keras.layers.Dense(1)(bn(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros((64, 1), "float32"), batch_size=64, epochs=1, verbose=0)

    assert bn.compute_dtype == compute_dtype
    _assert_float32_weights(bn)
    _assert_statistics(bn, _as_float64(ops.cast(x, compute_dtype)))
    assert _dtype(model.predict(x, verbose=0)) in (compute_dtype, "float32")


# Integer inputs: the seed question ------------------------------------------


@pytest.mark.parametrize("int_dtype", ["int32", "int64", "uint8"])
def test_integer_inputs_training_call(int_dtype):
    a = np.arange(4).reshape((2, 2)).astype(int_dtype)
    layer = BN(axis=1, momentum=0.0)
    y = layer(a, training=True)
    # Batch mean [1, 2], variance [1, 1]: y = +-1 / sqrt(1 + epsilon).
    assert _dtype(y) == "float32"
    expected = np.array([[-1.0, -1.0], [1.0, 1.0]]) / np.sqrt(1.0 + EPSILON)
    np.testing.assert_allclose(to_numpy(y), expected, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), [1.0, 2.0], rtol=0)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), [1.0, 1.0], rtol=0)
    _assert_float32_weights(layer)


def test_integer_inputs_seed_question_model():
    # The seed's model, with an integer Input so the layer itself receives
    # integers: predict() uses the never-updated moving statistics
    # (x / sqrt(1 + epsilon)); after fit() with momentum=0 it normalizes.
    a = np.arange(4).reshape((2, 2)).astype("int32")
    x_input = keras.Input((2,), dtype="int32")
    bn = BN(axis=1, momentum=0.0)
    model = keras.Model(x_input, bn(x_input))
    before = model.predict(a, batch_size=2, verbose=0)
    np.testing.assert_allclose(before, a / np.sqrt(1.0 + EPSILON), rtol=1e-6)

    model.compile(optimizer="sgd", loss="mse")
    model.fit(a, np.zeros((2, 2), "float32"), batch_size=2, epochs=1, verbose=0)
    np.testing.assert_allclose(to_numpy(bn.moving_mean), [1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(bn.moving_variance), [1.0, 1.0], rtol=1e-6)
    after = model.predict(a, batch_size=2, verbose=0)
    # gamma/beta moved by one SGD step; the normalized sign pattern is there.
    assert np.all(after[0] < after[1])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_integer_inputs_under_mixed_policy(policy):
    a = np.arange(6).reshape((3, 2)).astype("int32")
    layer = BN(axis=1, momentum=0.0, dtype=policy)
    y = layer(a, training=True)
    assert _dtype(y) == keras.DTypePolicy(policy).compute_dtype
    np.testing.assert_allclose(to_numpy(layer.moving_mean), [2.0, 3.0], rtol=0)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), [8.0 / 3.0] * 2, rtol=1e-6)


# float64 ---------------------------------------------------------------------


def test_float64_inputs_under_float32_policy():
    # Cast to the float32 compute dtype, as Keras does.
    x = _data().astype("float64")
    layer = BN(momentum=0.0)
    y = layer(x, training=True)
    assert _dtype(y) == "float32"
    _assert_float32_weights(layer)
    _assert_statistics(layer, x.astype("float32").astype("float64"))


def _float64_available():
    if BACKEND != "jax":
        return True
    import jax

    return bool(jax.config.jax_enable_x64)


@pytest.mark.skipif(not _float64_available(), reason="JAX without jax_enable_x64 has no float64")
def test_float64_policy_computes_in_float64():
    # dtype="float64": weights float64 as in Keras, statistics and outputs to
    # float64 accuracy (1e-12 is out of float32's reach).
    rng = np.random.default_rng(0)
    x = 1e4 + rng.standard_normal((256, 3))
    layer = BN(momentum=0.0, dtype="float64")
    # A float64 tensor: Keras's torch backend turns a float64 NumPy array
    # into float32 before any layer sees it.
    y = layer(ops.convert_to_tensor(x, "float64"), training=True)
    assert _dtype(y) == "float64"
    assert all(_dtype(w) == "float64" for w in layer.weights)
    expected = reference.batch_norm(x)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), expected.mean, rtol=1e-14)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), expected.variance,
                               rtol=1e-10)
    np.testing.assert_allclose(to_numpy(y), expected.output, rtol=1e-10, atol=1e-10)

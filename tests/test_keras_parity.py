"""Parity with `keras.layers.BatchNormalization` (float32, within 1e-5).

Both layers start from identical weights (copied with `set_weights`, in
both directions) and see identical data; outputs, gradients (of a scalar
loss wrt the inputs, gamma and beta) and the moving statistics must agree,
in training and in inference, in eager calls (the big grid) and through
compiled `fit` / `evaluate` / `predict` with default compile settings (a few
multi-branch models, so that each compiled function covers many cases).

The data are well conditioned (mean 5, std 10): Keras's own torch moments
lose precision for large means, and where Keras is wrong (large means on
torch, masks on a non-last axis, fully masked batches) other tests hold us
to the right answer instead of to Keras's.
"""

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import to_numpy

import keras_bn_ext

KerasBN = keras.layers.BatchNormalization
OurBN = keras_bn_ext.BatchNormalization
TOL = {"rtol": 1e-5, "atol": 1e-5}

# Each non-batch dimension has its own size, so a wrong axis cannot pass.
SHAPES = {2: (16, 3), 3: (6, 4, 3), 4: (4, 3, 5, 2), 5: (3, 2, 4, 5, 3)}
# First non-batch, middle, last, and negative (the first non-batch axis
# counted from the end) for each rank; duplicates dropped.
AXES = {
    rank: sorted({1, rank // 2, rank - 1, -(rank - 1)}, key=lambda a: (a < 0, a))
    for rank in SHAPES
}
RANK_AXIS = [(rank, axis) for rank in SHAPES for axis in AXES[rank]]
CENTER_SCALE = [(True, True), (False, True), (True, False), (False, False)]
# rmin/rmax/dmax close to 1 / 0 so that clipping is active for some channels
# and not for others (see `_randomize`: r is about 0.7..1.7).
CLIPPING = [None, {"rmax": 1.2, "rmin": 0.8, "dmax": 0.3}, {"rmax": 1.1}]


def _data(shape, seed=0):
    return np.random.default_rng(seed).normal(5.0, 10.0, size=shape).astype(
        "float32"
    )


def _randomize(layer, seed=0):
    """Valid, non-default weights: moving statistics far from the batch's,
    so that training and inference outputs differ, and renorm corrections
    that are neither 1/0 nor always clipped."""
    rng = np.random.default_rng(seed)
    draw = {
        "gamma": lambda s: rng.normal(1.0, 0.2, s),
        "beta": lambda s: rng.normal(0.0, 0.5, s),
        "moving_mean": lambda s: rng.normal(5.0, 3.0, s),
        "moving_variance": lambda s: rng.uniform(50.0, 150.0, s),
        "moving_stddev": lambda s: rng.uniform(7.0, 12.0, s),
        "renorm_mean": lambda s: rng.normal(5.0, 3.0, s),
        "renorm_stddev": lambda s: rng.uniform(6.0, 14.0, s),
    }
    for weight in layer.weights:
        weight.assign(draw[weight.name](tuple(weight.shape)).astype("float32"))


def _pair(kwargs, shape, seed=0, source="keras"):
    """A Keras layer and ours, built, with the same random weights copied
    from `source` to the other with set_weights."""
    keras_layer, our_layer = KerasBN(**kwargs), OurBN(**kwargs)
    keras_layer.build(shape)
    our_layer.build(shape)
    if source == "keras":
        _randomize(keras_layer, seed)
        our_layer.set_weights(keras_layer.get_weights())
    else:
        _randomize(our_layer, seed)
        keras_layer.set_weights(our_layer.get_weights())
    return keras_layer, our_layer


def _named_weights(layer):
    return {w.name: to_numpy(w) for w in layer.weights}


def _assert_same_weights(ours, reference, what):
    ours, reference = _named_weights(ours), _named_weights(reference)
    assert list(ours) == list(reference)
    for name in reference:
        np.testing.assert_allclose(
            ours[name], reference[name], **TOL, err_msg=f"{what}: {name}"
        )


def _train_step(layer, x, upstream, mask=None):
    """A training call; returns (output, [d loss / d x, d loss / d each
    trainable weight]) for loss = sum(output * upstream). The moving
    statistics are updated as by any training call."""
    weights = layer.trainable_weights
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True, mask=mask)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x] + [w.value for w in weights])
    elif BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss_fn(x, trainable):
            y, new_non_trainable = layer.stateless_call(
                trainable, non_trainable, x, training=True, mask=mask
            )
            return jnp.sum(y * upstream), (y, new_non_trainable)

        (grad_x, grad_w), (y, new_non_trainable) = jax.grad(
            loss_fn, argnums=(0, 1), has_aux=True
        )(jnp.asarray(x), [v.value for v in layer.trainable_variables])
        for variable, value in zip(layer.non_trainable_variables, new_non_trainable):
            variable.assign(value)
        grads = [grad_x] + list(grad_w)
    elif BACKEND == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        y = layer(x, training=True, mask=mask)
        loss = torch.sum(y * torch.as_tensor(upstream))
        grads = torch.autograd.grad(loss, [x] + [w.value for w in weights])
    else:
        pytest.skip(f"no gradients on the {BACKEND} backend")
    # A missing gradient (None) would compare equal to another missing one.
    assert all(g is not None for g in grads)
    return to_numpy(y), [to_numpy(g) for g in grads]


def _check_parity(kwargs, shape, mask=None, steps=2, seed=0, source="keras"):
    """Training steps then inference calls on both layers, compared."""
    keras_layer, our_layer = _pair(kwargs, shape, seed, source)
    initial = _named_weights(keras_layer)
    x = _data(shape, seed)
    rng = np.random.default_rng(seed + 1)
    names = ["inputs"] + [w.name for w in keras_layer.trainable_weights]
    for step in range(steps):
        # A new batch each step: the renorm corrections and moving averages
        # of the second step depend on the first step's updates.
        x_step = x + np.float32(step)
        upstream = rng.normal(size=shape).astype("float32")
        y_ref, g_ref = _train_step(keras_layer, x_step, upstream, mask)
        y, g = _train_step(our_layer, x_step, upstream, mask)
        np.testing.assert_allclose(y, y_ref, **TOL, err_msg=f"output, step {step}")
        assert len(g) == len(g_ref)
        for name, grad, grad_ref in zip(names, g, g_ref):
            np.testing.assert_allclose(
                grad, grad_ref, **TOL, err_msg=f"gradient wrt {name}, step {step}"
            )
        _assert_same_weights(our_layer, keras_layer, f"after training step {step}")

    # The updates really happened (momentum < 1 in every case here).
    if keras_layer.trainable:
        updated = _named_weights(keras_layer)
        assert not np.allclose(updated["moving_mean"], initial["moving_mean"])

    # Inference: moving statistics, no update, mask irrelevant.
    trained = _named_weights(our_layer)
    for training in (False, None):
        y_ref = to_numpy(keras_layer(x, training=training, mask=mask))
        y = to_numpy(our_layer(x, training=training, mask=mask))
        np.testing.assert_allclose(y, y_ref, **TOL, err_msg=f"training={training}")
    for name, value in _named_weights(our_layer).items():
        np.testing.assert_array_equal(value, trained[name], err_msg=name)
    _assert_same_weights(our_layer, keras_layer, "after inference")


# Eager grid ------------------------------------------------------------------


@pytest.mark.parametrize("center,scale", CENTER_SCALE)
@pytest.mark.parametrize("rank,axis", RANK_AXIS)
def test_eager_parity_axis_center_scale(rank, axis, center, scale):
    _check_parity(
        {"axis": axis, "center": center, "scale": scale, "momentum": 0.9},
        SHAPES[rank],
    )


@pytest.mark.parametrize("epsilon", [1e-5, 1e-3, 0.5])
@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.99])
@pytest.mark.parametrize("rank,axis", [(4, -1), (3, 1)])
def test_eager_parity_momentum_epsilon(rank, axis, momentum, epsilon):
    _check_parity(
        {"axis": axis, "momentum": momentum, "epsilon": epsilon}, SHAPES[rank]
    )


def _keras_mask(shape, seed=0):
    # Keras's convention (what keras.layers.Masking produces): one flag per
    # position of inputs.shape[:-1], shared by all channels on the last axis.
    rng = np.random.default_rng(seed + 2)
    mask = rng.uniform(size=shape[:-1]) < 0.6
    mask.flat[0] = True  # never fully masked: Keras is wrong there
    return mask


@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("rank", sorted(SHAPES))
def test_eager_parity_mask(rank, renorm):
    shape = SHAPES[rank]
    kwargs = {"axis": -1, "momentum": 0.5, "renorm": renorm}
    _check_parity(kwargs, shape, mask=_keras_mask(shape))


def test_eager_mask_changes_statistics():
    # Guards the mask tests against a mask that is silently ignored by both.
    shape = SHAPES[3]
    x = _data(shape)
    masked, unmasked = OurBN(momentum=0.0), OurBN(momentum=0.0)
    masked(x, training=True, mask=_keras_mask(shape))
    unmasked(x, training=True)
    assert not np.allclose(to_numpy(masked.moving_mean), to_numpy(unmasked.moving_mean))


@pytest.mark.parametrize("clipping", CLIPPING)
@pytest.mark.parametrize("rank,axis", [(r, a) for r in SHAPES for a in (1, -1)])
def test_eager_parity_renorm(rank, axis, clipping):
    kwargs = {
        "axis": axis, "momentum": 0.9, "renorm": True, "renorm_momentum": 0.8,
        "renorm_clipping": clipping,
    }
    _check_parity(kwargs, SHAPES[rank], steps=3)


@pytest.mark.parametrize("center,scale", CENTER_SCALE)
def test_eager_parity_renorm_center_scale(center, scale):
    kwargs = {
        "center": center, "scale": scale, "renorm": True,
        "renorm_clipping": CLIPPING[1],
    }
    _check_parity(kwargs, SHAPES[2])


@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("rank", [2, 4])
def test_eager_parity_frozen(rank, renorm):
    # trainable=False: moving statistics even with training=True, no update.
    keras_layer, our_layer = _pair({"renorm": renorm}, SHAPES[rank])
    keras_layer.trainable = False
    our_layer.trainable = False
    before = _named_weights(our_layer)
    _check_parity_frozen(keras_layer, our_layer, SHAPES[rank])
    for name, value in _named_weights(our_layer).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def _check_parity_frozen(keras_layer, our_layer, shape):
    x = _data(shape)
    upstream = np.random.default_rng(3).normal(size=shape).astype("float32")
    y_ref, g_ref = _train_step(keras_layer, x, upstream)
    y, g = _train_step(our_layer, x, upstream)
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(g[0], g_ref[0], **TOL)
    # Frozen means inference: the same output as training=False.
    np.testing.assert_allclose(y, to_numpy(keras_layer(x, training=False)), **TOL)


def test_eager_parity_weights_from_ours():
    # The other direction of set_weights: our random weights into Keras.
    _check_parity({"axis": 1, "renorm": True}, SHAPES[4], source="ours")
    _check_parity({"axis": -1, "momentum": 0.5}, SHAPES[3], source="ours")


# Variables and weight interchange ----------------------------------------------

VARIABLE_CASES = [
    {},
    {"center": False},
    {"scale": False},
    {"center": False, "scale": False},
    {"axis": 1},
    {"renorm": True},
    {"renorm": True, "dtype": "mixed_float16"},
    {"dtype": "mixed_bfloat16"},
]


def _describe(weights):
    return [
        (w.name, w.path, tuple(w.shape), keras.backend.standardize_dtype(w.dtype))
        for w in weights
    ]


@pytest.mark.parametrize("kwargs", VARIABLE_CASES, ids=str)
def test_variables_match_keras(kwargs):
    shape = SHAPES[4]
    keras_layer = KerasBN(name="bn", **kwargs)
    our_layer = OurBN(name="bn", **kwargs)
    keras_layer.build(shape)
    our_layer.build(shape)
    assert _describe(our_layer.weights) == _describe(keras_layer.weights)
    assert _describe(our_layer.trainable_weights) == _describe(
        keras_layer.trainable_weights
    )
    assert _describe(our_layer.non_trainable_weights) == _describe(
        keras_layer.non_trainable_weights
    )
    for weight in our_layer.weights:
        assert keras.backend.standardize_dtype(weight.dtype) == "float32"
    # Initial values too (moving_stddev is sqrt of the variance initializer).
    _assert_same_weights(our_layer, keras_layer, "initial values")


@pytest.mark.parametrize("source", ["keras", "ours"])
@pytest.mark.parametrize("renorm", [False, True])
def test_weights_interchange_set_weights(source, renorm):
    shape = SHAPES[3]
    keras_layer, our_layer = _pair({"axis": 1, "renorm": renorm}, shape, source=source)
    _assert_same_weights(our_layer, keras_layer, "copied weights")
    x = _data(shape)
    np.testing.assert_allclose(
        to_numpy(our_layer(x)), to_numpy(keras_layer(x)), **TOL
    )


def _single_bn_model(bn_cls, shape, **kwargs):
    inputs = keras.Input(shape[1:])
    return keras.Model(inputs, bn_cls(**kwargs)(inputs))


@pytest.mark.parametrize("source", ["keras", "ours"])
def test_weights_interchange_weights_file(source, tmp_path):
    # A `.weights.h5` written by a model with one layer loads into the
    # model with the other.
    shape = SHAPES[4]
    kwargs = {"axis": 2, "renorm": True}
    keras_model = _single_bn_model(KerasBN, shape, **kwargs)
    our_model = _single_bn_model(OurBN, shape, **kwargs)
    writer, reader = (
        (keras_model, our_model) if source == "keras" else (our_model, keras_model)
    )
    _randomize(writer.layers[-1])
    path = str(tmp_path / "bn.weights.h5")
    writer.save_weights(path)
    reader.load_weights(path)
    _assert_same_weights(our_model.layers[-1], keras_model.layers[-1], "loaded")
    x = _data(shape)
    np.testing.assert_allclose(
        to_numpy(our_model(x)), to_numpy(keras_model(x)), **TOL
    )


# Compiled fit / evaluate / predict -------------------------------------------
#
# TF compiles are slow, so each model has several branches (input -> [Masking]
# -> Dense -> BN), one per case: one fit, evaluate and predict per model and
# layer class cover them all. The Dense layer (identity kernel, so the data
# stay well conditioned) trains on the gradient BN passes to its inputs.

# group -> (which model's random weights are copied into the other, branches)
FIT_MODELS = {
    "axes_center_scale_momentum_epsilon_frozen": ("keras", [
        # (non-batch shape, BN kwargs, trainable, masked)
        ((3,), {}, True, False),
        ((4, 3), {"axis": 1, "center": False}, True, False),
        ((3, 5, 2), {"axis": 2, "scale": False, "momentum": 0.5}, True, False),
        (
            (2, 4, 5, 3),
            {"axis": -4, "center": False, "scale": False, "epsilon": 0.1},
            True,
            False,
        ),
        ((3, 5, 2), {"axis": -1, "momentum": 0.0}, True, False),
        ((4, 3), {"axis": -1}, False, False),
    ]),
    "masks_renorm": ("ours", [
        ((5, 3), {"momentum": 0.5}, True, True),
        ((3, 4, 2), {"momentum": 0.9, "epsilon": 1e-2}, True, True),
        ((3,), {"renorm": True, "momentum": 0.9, "renorm_momentum": 0.8}, True, False),
        (
            (3, 5, 2),
            {"axis": 1, "renorm": True, "renorm_clipping": CLIPPING[1]},
            True,
            False,
        ),
        ((5, 3), {"renorm": True, "renorm_clipping": CLIPPING[2]}, True, True),
    ]),
}


def _fit_model(bn_cls, branches):
    inputs, outputs = [], []
    for i, (shape, kwargs, trainable, masked) in enumerate(branches):
        x = keras.Input(shape, name=f"x{i}")
        inputs.append(x)
        h = keras.layers.Masking(0.0, name=f"masking{i}")(x) if masked else x
        h = keras.layers.Dense(
            shape[-1], kernel_initializer="identity", name=f"dense{i}"
        )(h)
        bn = bn_cls(name=f"bn{i}", **kwargs)
        bn.trainable = trainable
        outputs.append(bn(h))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")  # default settings: jit_compile="auto"
    return model


def _fit_data(branches, n=16, seed=0):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i, (shape, _, _, masked) in enumerate(branches):
        x = _data((n,) + shape, seed + i)
        if masked:
            # Positions whose features all equal the mask value (0) are
            # masked by keras.layers.Masking; keep one unmasked per batch.
            drop = rng.uniform(size=(n,) + shape[:-1]) < 0.4
            drop.reshape(n, -1)[:, 0] = False
            x[drop] = 0.0
        xs.append(x)
        ys.append(rng.normal(size=(n,) + shape).astype("float32"))
    return xs, ys


@pytest.mark.parametrize("group", list(FIT_MODELS))
def test_fit_evaluate_predict_parity(group):
    source, branches = FIT_MODELS[group]
    keras_model = _fit_model(KerasBN, branches)
    our_model = _fit_model(OurBN, branches)
    bn_names = [f"bn{i}" for i in range(len(branches))]
    writer, reader = (
        (keras_model, our_model) if source == "keras" else (our_model, keras_model)
    )
    for i, name in enumerate(bn_names):
        _randomize(writer.get_layer(name), seed=i)
    reader.set_weights(writer.get_weights())
    initial = {n: _named_weights(our_model.get_layer(n)) for n in bn_names}
    xs, ys = _fit_data(branches)

    # Two SGD steps (batches of 8): the second sees the first's updates.
    fit_kwargs = {"batch_size": 8, "epochs": 1, "shuffle": False, "verbose": 0}
    history_ref = keras_model.fit(xs, ys, **fit_kwargs).history
    history = our_model.fit(xs, ys, **fit_kwargs).history
    np.testing.assert_allclose(history["loss"], history_ref["loss"], **TOL)
    for ours, ref in zip(our_model.weights, keras_model.weights):
        assert ours.path == ref.path
        np.testing.assert_allclose(
            to_numpy(ours), to_numpy(ref), **TOL, err_msg=f"after fit: {ref.path}"
        )
    # Trainable branches updated their moving statistics, frozen ones not.
    for (_, _, trainable, _), name in zip(branches, bn_names):
        now = _named_weights(our_model.get_layer(name))["moving_mean"]
        assert np.allclose(now, initial[name]["moving_mean"]) != trainable, name

    eval_ref = keras_model.evaluate(xs, ys, batch_size=8, verbose=0)
    evaluated = our_model.evaluate(xs, ys, batch_size=8, verbose=0)
    np.testing.assert_allclose(evaluated, eval_ref, **TOL)

    predicted_ref = keras_model.predict(xs, batch_size=8, verbose=0)
    predicted = our_model.predict(xs, batch_size=8, verbose=0)
    for name, y, y_ref in zip(bn_names, predicted, predicted_ref):
        np.testing.assert_allclose(y, y_ref, **TOL, err_msg=f"predict: {name}")
    # evaluate and predict are inference: nothing changed.
    for ours, ref in zip(our_model.weights, keras_model.weights):
        np.testing.assert_allclose(to_numpy(ours), to_numpy(ref), **TOL)

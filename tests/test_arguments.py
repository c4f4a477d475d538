"""Bad arguments and bad inputs (issue 2): each gets a ValueError whose
message names the argument and the value received, and a call that fails
changes nothing. Also: `axis` as a list/tuple of ints (as tf-keras allowed)."""

import json

import keras
import numpy as np
import pytest
import reference
from helpers import assert_weights_equal
from helpers import to_numpy
from helpers import weight_values

import keras_bn_ext

BN = keras_bn_ext.BatchNormalization

# kwargs -> the fragments the message must contain (argument name and value).
BAD_CONSTRUCTOR_ARGS = {
    "momentum_above_1": ({"momentum": 1.5}, ["Received: momentum=1.5"]),
    "momentum_negative": ({"momentum": -0.1}, ["Received: momentum=-0.1"]),
    "momentum_nan": ({"momentum": float("nan")}, ["Received: momentum=nan"]),
    "momentum_string": ({"momentum": "0.9"}, ["Received: momentum='0.9'"]),
    "momentum_bool": ({"momentum": True}, ["Received: momentum=True"]),
    "renorm_momentum_above_1": (
        {"renorm": True, "renorm_momentum": 1.5}, ["Received: renorm_momentum=1.5"]),
    "renorm_momentum_negative": (
        {"renorm": True, "renorm_momentum": -1}, ["Received: renorm_momentum=-1"]),
    "epsilon_zero": ({"epsilon": 0}, ["Received: epsilon=0"]),
    "epsilon_negative": ({"epsilon": -1e-3}, ["Received: epsilon=-0.001"]),
    "epsilon_nan": ({"epsilon": float("nan")}, ["Received: epsilon=nan"]),
    "epsilon_string": ({"epsilon": "1e-3"}, ["Received: epsilon='1e-3'"]),
    "axis_string": ({"axis": "1"}, ["Received: axis='1'"]),
    "axis_float": ({"axis": 1.0}, ["Received: axis=1.0"]),
    "axis_none": ({"axis": None}, ["Received: axis=None"]),
    "axis_bool": ({"axis": True}, ["Received: axis=True"]),
    "axis_empty_list": ({"axis": []}, ["Received: axis=[]"]),
    "axis_list_with_string": ({"axis": [1, "a"]}, ["Received: axis=[1, 'a']"]),
    "renorm_clipping_unknown_key": (
        {"renorm": True, "renorm_clipping": {"rmax": 2.0, "rmx": 3.0}},
        ["renorm_clipping", "rmx"]),
    "rmax_below_rmin": (
        {"renorm": True, "renorm_clipping": {"rmax": 0.5, "rmin": 2.0}},
        ["renorm_clipping", "rmax=0.5", "rmin=2.0"]),
    "dmax_negative": (
        {"renorm": True, "renorm_clipping": {"dmax": -1.0}},
        ["renorm_clipping", "dmax=-1.0"]),
    "mode_unknown": ({"mode": "frozen"}, ["Received: mode='frozen'"]),
    "mode_none": ({"mode": None}, ["Received: mode=None"]),
    "mode_wrong_case": ({"mode": "Batch"}, ["Received: mode='Batch'"]),
    "virtual_batch_size_zero": ({"virtual_batch_size": 0}, ["virtual_batch_size=0"]),
    "virtual_batch_size_float": ({"virtual_batch_size": 2.5}, ["virtual_batch_size=2.5"]),
}


@pytest.mark.parametrize("name", list(BAD_CONSTRUCTOR_ARGS))
def test_bad_constructor_argument(name):
    kwargs, fragments = BAD_CONSTRUCTOR_ARGS[name]
    with pytest.raises(ValueError) as info:
        BN(**kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(
    "kwargs",
    [{"momentum": 0}, {"momentum": 1}, {"momentum": 0.0}, {"momentum": None},
     {"epsilon": 1e-12}, {"axis": np.int64(1)}, {"axis": (1, -1)},
     {"renorm": True, "renorm_momentum": 0.0, "renorm_clipping": {"rmax": 1.0, "rmin": 1.0,
                                                                "dmax": 0.0}},
     {"mode": "moving"}, {"mode": "batch"}],
)
def test_edge_values_are_accepted(kwargs):
    # The bounds themselves are valid, so the checks above are not too wide.
    layer = BN(**kwargs)
    y = layer(np.random.default_rng(0).random((4, 3, 3)).astype("float32"), training=True)
    assert tuple(y.shape) == (4, 3, 3)
    # Stored as plain Python ints (a NumPy int would break the JSON config).
    axis = layer.get_config()["axis"]
    assert all(type(a) is int for a in (axis if isinstance(axis, list) else [axis]))
    json.dumps(layer.get_config())


# Errors at build / call time ----------------------------------------------------

BAD_AXES = [
    # (axis, input shape, message fragment)
    (3, (4, 3), "axis=3"),
    (-3, (4, 3), "axis=-3"),
    (4, (2, 3, 4, 5), "axis=4"),
    ([1, 5], (2, 3, 4), "axis=[1, 5]"),
    ([1, 1], (2, 3, 4), "axis=[1, 1]"),
    ([1, -2], (2, 3, 4), "axis=[1, -2]"),  # -2 is 1 again
    ((2, -1), (2, 3, 4), "axis=(2, -1)"),
]


@pytest.mark.parametrize("axis,shape,fragment", BAD_AXES)
@pytest.mark.parametrize("symbolic", [False, True], ids=["eager", "symbolic"])
def test_axis_out_of_range_or_repeated(axis, shape, fragment, symbolic):
    layer = BN(axis=axis)
    x = keras.Input(shape[1:], batch_size=shape[0]) if symbolic else np.ones(shape, "float32")
    with pytest.raises(ValueError) as info:
        layer(x)
    # A tuple axis may be reported as a list; either spelling names the value.
    message = str(info.value)
    assert fragment in message or fragment.replace("(", "[").replace(")", "]") in message, \
        message
    assert not layer.built and layer.weights == []


@pytest.mark.parametrize("shape,axis", [((None,), -1), ((None, 3), 1), ((4, None), [1, 2])])
def test_undefined_channel_dimension_at_build(shape, axis):
    layer = BN(axis=axis)
    with pytest.raises(ValueError) as info:
        layer(keras.Input(shape))
    message = str(info.value)
    assert f"axis={axis}" in message and "input_shape=(None, " in message, message
    # Nothing was created; the layer can still be built with a defined shape.
    assert not layer.built and layer.weights == []
    defined = tuple(3 if s is None else s for s in shape)
    layer(keras.Input(defined))
    full = (None,) + defined
    param_shape = tuple(full[a] for a in (axis if isinstance(axis, list) else [axis]))
    assert layer.built and [tuple(w.shape) for w in layer.weights] == [param_shape] * 4


@pytest.mark.parametrize(
    "input_shape,axis,mask_shape",
    [((4, 5, 3), -1, (4, 6)),        # wrong length on a reduced axis
     ((4, 5, 3), -1, (5,)),          # wrong rank
     ((4, 5, 3), -1, (4, 5, 3, 1)),  # rank above the inputs'
     ((4, 3, 5), 1, (4, 3, 4)),      # full rank, does not broadcast
     ((4, 3, 5), 1, (4, 4))],        # neither (N, T) nor Keras's (N, C)
)
def test_mask_that_does_not_fit(input_shape, axis, mask_shape):
    layer = BN(axis=axis)
    x = np.ones(input_shape, "float32")
    with pytest.raises(ValueError) as info:
        layer(x, training=True, mask=np.ones(mask_shape, bool))
    message = str(info.value)
    assert f"mask.shape={mask_shape}" in message, message


@pytest.mark.parametrize("built_shape,call_shape", [((4, 3), (4, 2, 3)), ((2, 3, 4, 4), (2, 3, 4))])
def test_input_rank_differs_from_built_rank(built_shape, call_shape):
    layer = BN()
    layer(np.ones(built_shape, "float32"))
    with pytest.raises(ValueError) as info:
        layer(np.ones(call_shape, "float32"), training=True)
    message = str(info.value)
    # Keras's InputSpec message: the expected and received rank and the shape.
    assert f"ndim={len(built_shape)}" in message and f"ndim={len(call_shape)}" in message, message
    assert str(call_shape) in message, message


# A call that fails changes nothing ----------------------------------------------

FAILING_CALLS = {
    "bad_mask": ({}, (8, 5, 3), lambda: (np.ones((8, 5, 3), "float32"),
                                         {"mask": np.ones((8, 4), bool)})),
    "bad_rank": ({}, (8, 5, 3), lambda: (np.ones((8, 3), "float32"), {})),
    "bad_channels": ({}, (8, 5, 3), lambda: (np.ones((8, 5, 4), "float32"), {})),
    # A batch virtual_batch_size does not divide is no error (issue 11):
    # a failing ghost call is one with a bad mask.
    "ghost_bad_mask": ({"virtual_batch_size": 4}, (8, 5, 3),
                       lambda: (np.ones((6, 5, 3), "float32"),
                                {"mask": np.ones((6, 4), bool)})),
    "counter_bad_mask": ({"track_updates": True, "momentum": None}, (8, 5, 3),
                         lambda: (np.ones((8, 5, 3), "float32"),
                                  {"mask": np.ones((8, 5, 2), bool)})),
}


@pytest.mark.parametrize("name", list(FAILING_CALLS))
def test_failed_call_changes_nothing(name):
    kwargs, shape, make_call = FAILING_CALLS[name]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + 1).astype("float32")
    layer = BN(**{"momentum": 0.5, **kwargs})
    twin = BN.from_config(layer.get_config())
    layer(x, training=True)  # a trained, non-initial state
    twin(x, training=True)
    before = weight_values(layer)

    bad_x, call_kwargs = make_call()
    with pytest.raises(ValueError):
        layer(bad_x, training=True, **call_kwargs)

    assert_weights_equal(before, weight_values(layer))
    # No hidden state either: the next good call behaves exactly as on a
    # layer that never saw the failed call.
    x2 = (rng.standard_normal(shape) * 3 - 1).astype("float32")
    np.testing.assert_array_equal(to_numpy(layer(x2, training=True)),
                                  to_numpy(twin(x2, training=True)))
    assert_weights_equal(weight_values(twin), weight_values(layer))


# axis as a list/tuple of ints ---------------------------------------------------


@pytest.mark.parametrize("axis", [[1, 3], (1, 3), [-3, -1], [3, 1]])
def test_list_axis_gives_per_h_c_statistics(axis):
    # (N, H, W, C) normalized per (H, C): statistics over N and W only.
    x = np.random.default_rng(0).standard_normal((8, 4, 5, 3)).astype("float32")
    x = x * (1 + np.arange(3)) + np.arange(4)[None, :, None, None] * 10
    x = x.astype("float32")
    layer = BN(axis=axis, momentum=0.0)

    y = to_numpy(layer(x, training=True))

    expected = reference.batch_norm(x, axis=axis)  # over N and W
    for weight in layer.weights:
        assert tuple(weight.shape) == (4, 3), weight.path
    np.testing.assert_allclose(to_numpy(layer.moving_mean), expected.mean, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), expected.variance,
                               rtol=1e-5)
    np.testing.assert_allclose(y, expected.output, rtol=1e-5, atol=1e-5)
    # Inference with the moving statistics gives the same normalization.
    np.testing.assert_allclose(to_numpy(layer(x, training=False)), expected.output,
                               rtol=1e-5, atol=1e-5)


def test_list_axis_through_fit():
    # The same per-(H, C) statistics inside compiled fit().
    x = np.random.default_rng(1).standard_normal((16, 4, 5, 3)).astype("float32") + 2.0
    inputs = keras.Input((4, 5, 3))
    bn = BN(axis=[1, 3], momentum=0.0)
    model = keras.Model(inputs, keras.layers.Dense(1)(bn(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros((16, 4, 5, 1), "float32"), batch_size=16, epochs=1, verbose=0)
    mean, variance, _ = reference.moments(x, axis=[1, 3])
    np.testing.assert_allclose(to_numpy(bn.moving_mean), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_numpy(bn.moving_variance), variance, rtol=1e-5)

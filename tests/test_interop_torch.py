"""PyTorch import/export: parity with torch.nn.BatchNorm1d/2d/3d on every
Keras backend (torch is installed whatever the backend), in training and
eval, with momentum=None, affine=False, track_running_stats=False, and the
round trip back to torch."""

import keras
import numpy as np
import pytest
import torch
from helpers import to_numpy

import keras_bn_ext
from keras_bn_ext import BatchNormalization
from keras_bn_ext.interop import from_torch
from keras_bn_ext.interop import to_torch

# The bar: outputs and running statistics within 1e-5.
TOL = dict(atol=1e-5, rtol=1e-5)

CASES = {
    "1d_NC": (torch.nn.BatchNorm1d, (8, 4)),
    "1d_NCL": (torch.nn.BatchNorm1d, (6, 4, 5)),
    "2d": (torch.nn.BatchNorm2d, (4, 3, 5, 6)),
    "3d": (torch.nn.BatchNorm3d, (2, 3, 3, 4, 4)),
}


def make_module(cls, channels, seed=0, **kwargs):
    """A module whose weights and running statistics are not the defaults,
    so a swapped or dropped tensor shows up."""
    torch.manual_seed(seed)
    module = cls(channels, **kwargs)
    with torch.no_grad():
        if module.affine:
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-1.0, 1.0)
        if module.track_running_stats:
            module.running_mean.uniform_(-1.0, 1.0)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return module


def batches(shape, steps, seed=0):
    rng = np.random.default_rng(seed)
    # A mean far from 0 and a std far from 1, different per step.
    return [rng.normal(1.5 + i, 2.0 + 0.5 * i, shape).astype("float32")
            for i in range(steps)]


def torch_numpy(tensor):
    return tensor.detach().cpu().numpy()


def assert_same_state(layer, module, **tol):
    """The layer's state equals the module's (within `tol`)."""
    assert layer.epsilon == pytest.approx(module.eps)
    if module.affine:
        np.testing.assert_allclose(to_numpy(layer.gamma), torch_numpy(module.weight), **tol)
        np.testing.assert_allclose(to_numpy(layer.beta), torch_numpy(module.bias), **tol)
    else:
        assert layer.gamma is None and layer.beta is None
    if module.track_running_stats:
        np.testing.assert_allclose(
            to_numpy(layer.moving_mean), torch_numpy(module.running_mean), **tol
        )
        np.testing.assert_allclose(
            to_numpy(layer.moving_variance), torch_numpy(module.running_var), **tol
        )
        assert int(to_numpy(layer.num_batches_tracked)) == int(module.num_batches_tracked)


def train_side_by_side(layer, module, xs):
    """The same batches through the module (train mode) and the layer
    (training=True): outputs and running statistics agree after each."""
    module.train()
    for x in xs:
        expected = torch_numpy(module(torch.from_numpy(x)))
        actual = to_numpy(layer(x, training=True))
        np.testing.assert_allclose(actual, expected, **TOL)
        assert_same_state(layer, module, **TOL)


def eval_side_by_side(layer, module, x):
    module.eval()
    with torch.no_grad():
        expected = torch_numpy(module(torch.from_numpy(x)))
    actual = to_numpy(layer(x, training=False))
    np.testing.assert_allclose(actual, expected, **TOL)
    return actual


# Parity ----------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("case", list(CASES))
def test_training_and_eval_parity_then_round_trip(case, momentum):
    cls, shape = CASES[case]
    module = make_module(cls, shape[1], momentum=momentum)
    layer = from_torch(module, input_shape=(None,) + shape[1:])

    assert layer.axis == 1
    assert layer.unbiased_moving_variance
    assert layer.momentum == (None if momentum is None else pytest.approx(1 - momentum))
    assert tuple(layer.moving_mean.shape) == (shape[1],)
    assert_same_state(layer, module, atol=0, rtol=0)  # a copy, exact

    xs = batches(shape, steps=4)
    train_side_by_side(layer, module, xs)
    assert int(module.num_batches_tracked) == 7 + 4
    x_eval = batches(shape, steps=1, seed=1)[0]
    y_eval = eval_side_by_side(layer, module, x_eval)

    # Round trip: the exported module holds exactly the layer's state.
    exported = to_torch(layer)
    assert type(exported) is cls
    assert exported.momentum == momentum
    assert_same_state(layer, exported, atol=0, rtol=0)
    for key, value in module.state_dict().items():
        np.testing.assert_allclose(
            torch_numpy(exported.state_dict()[key]), torch_numpy(value), **TOL
        )
    exported.eval()
    with torch.no_grad():
        y_exported = torch_numpy(exported(torch.from_numpy(x_eval)))
    np.testing.assert_allclose(y_exported, y_eval, atol=1e-6, rtol=1e-6)

    # And the exported module keeps training as the original does.
    exported.train()
    module.train()
    x_more = batches(shape, steps=1, seed=2)[0]
    np.testing.assert_allclose(
        torch_numpy(exported(torch.from_numpy(x_more))),
        torch_numpy(module(torch.from_numpy(x_more))), **TOL
    )
    np.testing.assert_allclose(
        torch_numpy(exported.running_var), torch_numpy(module.running_var), **TOL
    )


@pytest.mark.parametrize("momentum", [0.1, None])
def test_affine_false_parity(momentum):
    module = make_module(torch.nn.BatchNorm2d, 3, affine=False, momentum=momentum)
    layer = from_torch(module)
    assert not layer.center and not layer.scale
    assert [v.name for v in layer.weights][:2] == ["moving_mean", "moving_variance"]
    xs = batches((4, 3, 5, 5), steps=3)
    train_side_by_side(layer, module, xs)
    eval_side_by_side(layer, module, batches((4, 3, 5, 5), 1, seed=1)[0])
    exported = to_torch(layer)
    assert not exported.affine and exported.weight is None
    assert_same_state(layer, exported, atol=0, rtol=0)


@pytest.mark.parametrize("case", ["1d_NC", "2d"])
def test_track_running_stats_false_uses_batch_stats_everywhere(case):
    cls, shape = CASES[case]
    module = make_module(cls, shape[1], track_running_stats=False)
    layer = from_torch(module, input_shape=(None,) + shape[1:])
    assert layer.mode == "batch"
    assert layer.num_batches_tracked is None
    xs = batches(shape, steps=2)
    train_side_by_side(layer, module, xs)
    # PyTorch without running statistics normalizes with the batch's
    # statistics in eval mode too: so does mode="batch".
    eval_side_by_side(layer, module, xs[0])

    exported = to_torch(layer)
    assert not exported.track_running_stats
    assert exported.running_mean is None and exported.num_batches_tracked is None
    exported.eval()
    with torch.no_grad():
        y = torch_numpy(exported(torch.from_numpy(xs[1])))
    np.testing.assert_allclose(y, to_numpy(layer(xs[1])), **TOL)


def test_eps_and_momentum_are_converted():
    module = torch.nn.BatchNorm1d(3, eps=1e-3, momentum=0.01)
    layer = from_torch(module)
    assert layer.epsilon == pytest.approx(1e-3)
    assert layer.momentum == 0.99
    assert layer.num_batches_tracked is not None
    back = to_torch(layer)
    assert back.eps == pytest.approx(1e-3)
    assert back.momentum == 0.01


def test_a_trained_keras_default_layer_exports_to_batchnorm1d():
    # axis=-1 on (N, C) inputs is the channel axis 1: PyTorch's layout.
    layer = BatchNormalization(momentum=0.9)
    for x in batches((8, 4), steps=3):
        layer(x, training=True)
    module = to_torch(layer)
    assert type(module) is torch.nn.BatchNorm1d
    assert module.momentum == pytest.approx(0.1)
    # No counter in a default layer: PyTorch's starts at 0.
    assert int(module.num_batches_tracked) == 0
    x = batches((8, 4), 1, seed=3)[0]
    module.eval()
    with torch.no_grad():
        expected = torch_numpy(module(torch.from_numpy(x)))
    np.testing.assert_allclose(to_numpy(layer(x, training=False)), expected, **TOL)


def test_mode_moving_exports_in_eval_mode():
    layer = BatchNormalization(axis=1, mode="moving")
    layer.build((None, 3, 4, 4))
    module = to_torch(layer)
    assert type(module) is torch.nn.BatchNorm2d
    assert not module.training


# The layer and the module do not share memory ---------------------------------------


def test_from_torch_copies_the_values():
    module = make_module(torch.nn.BatchNorm1d, 3)
    layer = from_torch(module)
    before = to_numpy(layer.moving_mean).copy()
    with torch.no_grad():
        module.running_mean.add_(10.0)
        module.weight.mul_(3.0)
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), before)
    assert not np.allclose(to_numpy(layer.gamma), torch_numpy(module.weight))


def test_to_torch_copies_the_values():
    layer = from_torch(make_module(torch.nn.BatchNorm1d, 3))
    module = to_torch(layer)
    before = torch_numpy(module.running_mean).copy()
    layer(batches((8, 3), 1)[0], training=True)
    np.testing.assert_array_equal(torch_numpy(module.running_mean), before)


# What cannot map: clear errors naming the argument and its value ---------------------


@pytest.mark.parametrize(
    "kwargs, shape, expected",
    [
        ({"axis": -1}, (None, 5, 3), "axis=-1"),
        ({"axis": 2}, (None, 3, 4, 4), "axis=2"),
        ({"axis": [1, 2]}, (None, 3, 4, 4), "axis=[1, 2]"),
        ({"axis": 1, "renorm": True}, (None, 3, 4), "renorm=True"),
        ({"axis": 1, "virtual_batch_size": 2}, (None, 3, 4), "virtual_batch_size=2"),
        ({"axis": 1, "center": False}, (None, 3), "center=False"),
        ({"axis": 1, "synchronized": True}, (None, 3), "synchronized=True"),
        ({"axis": 1}, (None, 3, 2, 2, 2, 2), "rank 6"),
    ],
)
def test_to_torch_rejects_what_pytorch_cannot_express(kwargs, shape, expected):
    layer = BatchNormalization(**kwargs)
    layer.build(shape)
    with pytest.raises(ValueError, match="Received") as info:
        to_torch(layer)
    assert expected in str(info.value)


def test_to_torch_needs_a_built_layer():
    with pytest.raises(ValueError, match="built"):
        to_torch(BatchNormalization(axis=1))


@pytest.mark.parametrize(
    "module, expected",
    [
        (torch.nn.LayerNorm(3), "LayerNorm"),
        (torch.nn.InstanceNorm2d(3), "InstanceNorm2d"),
        (torch.nn.BatchNorm1d(3, momentum=1.5), "momentum=1.5"),
    ],
)
def test_from_torch_rejects_what_it_cannot_map(module, expected):
    with pytest.raises(ValueError, match="Received") as info:
        from_torch(module)
    assert expected in str(info.value)


def test_from_torch_rejects_an_input_shape_of_the_wrong_rank_or_channels():
    with pytest.raises(ValueError, match=r"input_shape=\(None, 3, 4, 4\)"):
        from_torch(torch.nn.BatchNorm1d(3), input_shape=(None, 3, 4, 4))
    with pytest.raises(ValueError, match=r"C=3"):
        from_torch(torch.nn.BatchNorm2d(3), input_shape=(None, 5, 4, 4))


def test_from_torch_rejects_an_uninitialized_lazy_module():
    with pytest.raises(ValueError, match="lazy"):
        from_torch(torch.nn.LazyBatchNorm2d())


def test_the_imported_layer_explains_itself():
    layer = from_torch(make_module(torch.nn.BatchNorm2d, 3))
    text = layer.explain()
    assert "Updated 7 times" in text
    assert "unbiased_moving_variance" in text
    with keras_bn_ext.debug.capture() as records:
        layer(batches((2, 3, 4, 4), 1)[0], training=True)
    assert records[0].num_batches_tracked == 8


def test_to_torch_names_a_layer_that_is_not_ours():
    keras_layer = keras.layers.BatchNormalization(axis=1)
    keras_layer.build((None, 3))
    with pytest.raises(ValueError, match=r"exports a keras_bn_ext.BatchNormalization; "
                       r"keras_bn_ext.convert_model\(model\).*Received: layer of type"):
        keras_bn_ext.interop.to_torch(keras_layer)

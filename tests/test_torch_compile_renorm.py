"""Batch Renormalization in compiled training steps (`jit_compile=True`).

On torch, AOTAutograd's partitioner recomputed renorm's `r` and `d` in the
backward from the renorm variables themselves, which the layer's update had
meanwhile assigned in place. Where the update ran in another graph (a graph
break: the layer's reduction axes were a Keras `TrackedList`, which dynamo
cannot pass to `torch.sum`), `fit` failed with "one of the variables needed
for gradient computation has been modified by an inplace operation"; in one
graph, the gradients silently used the updated statistics. Compiled training
must give what eager training gives, on every backend.
"""

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import to_numpy

import keras_bn_ext

RENORM_VARIABLES = (
    "moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev",
)


def _fresh_torch_compile():
    """Dynamo's cache is per code object, shared by every model: after 8
    recompilations it runs those frames eagerly, which would hide the
    failure from the tests that come later."""
    if BACKEND == "torch":
        import torch

        torch._dynamo.reset()


def _fitted(jit_compile, layers, x, y, **bn_kwargs):
    _fresh_torch_compile()
    keras.utils.set_random_seed(7)
    bn = keras_bn_ext.BatchNormalization(renorm=True, **bn_kwargs)
    model = keras.Sequential([keras.Input(x.shape[1:]), *layers(bn)])
    model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
    history = model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    return model, bn, history.history["loss"]


def _dense(bn):
    return [keras.layers.Dense(16), bn, keras.layers.Dense(1)]


def _conv_channels_first(bn):
    return [keras.layers.Conv2D(4, 3, padding="same"), bn,
            keras.layers.Flatten(), keras.layers.Dense(1)]


# (layers around the layer, input shape, input mean and stddev, its arguments)
CASES = {
    "dense": (_dense, (8,), (2.0, 3.0), {}),
    # renorm_momentum=0.5: the statistics move a lot at each update, so
    # gradients computed from the updated ones are far off.
    "dense_fast_renorm": (_dense, (8,), (2.0, 3.0), {"renorm_momentum": 0.5}),
    "dense_clipping": (_dense, (8,), (2.0, 3.0), {
        "renorm_clipping": {"rmin": 0.5, "rmax": 2.0, "dmax": 1.0}}),
    "conv_axis_1": (_conv_channels_first, (3, 4, 4), (0.5, 1.0), {"axis": 1}),
}


def _assert_compiled_fit_matches_eager(case):
    layers, shape, (mean, stddev), bn_kwargs = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.normal(mean, stddev, size=(64, *shape)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    compiled, bn_compiled, losses = _fitted(True, layers, x, y, **bn_kwargs)
    eager, bn_eager, eager_losses = _fitted(False, layers, x, y, **bn_kwargs)
    assert np.all(np.isfinite(losses)) and max(losses) < 10, losses  # stable
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    for name in RENORM_VARIABLES:
        np.testing.assert_allclose(
            to_numpy(getattr(bn_compiled, name)), to_numpy(getattr(bn_eager, name)),
            rtol=1e-5, atol=1e-6, err_msg=name,
        )
    for a, b in zip(compiled.trainable_weights, eager.trainable_weights):
        np.testing.assert_allclose(
            to_numpy(a), to_numpy(b), rtol=1e-5, atol=1e-6, err_msg=a.path
        )


@pytest.mark.parametrize("case", sorted(CASES))
def test_renorm_fit_under_jit_compile_matches_eager(case):
    _assert_compiled_fit_matches_eager(case)


@pytest.mark.skipif(BACKEND != "torch", reason="dynamo graph breaks are torch's")
def test_renorm_fit_with_graph_breaks_in_the_layer(monkeypatch):
    # As before the axes were a tuple: the list is tracked as a TrackedList,
    # which breaks dynamo's graph at every reduction, and the update runs in
    # another graph than r and d. Their backward must still find the
    # statistics they were computed from.
    build = keras_bn_ext.BatchNormalization.build

    def build_with_list_axes(self, input_shape):
        build(self, input_shape)
        self._reduction_axes = list(self._reduction_axes)

    monkeypatch.setattr(keras_bn_ext.BatchNormalization, "build", build_with_list_axes)
    _assert_compiled_fit_matches_eager("dense_fast_renorm")


@pytest.mark.skipif(BACKEND != "torch", reason="dynamo graph breaks are torch's")
@pytest.mark.parametrize("renorm", [False, True])
def test_a_training_call_is_one_torch_graph(renorm):
    import torch

    _fresh_torch_compile()
    layer = keras_bn_ext.BatchNormalization(renorm=renorm)
    x = torch.randn(16, 8) * 3 + 2
    layer(x, training=True)  # built outside dynamo
    explanation = torch._dynamo.explain(lambda t: layer(t, training=True))(x)
    reasons = [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1

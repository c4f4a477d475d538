"""`call` makes no host round trip when debugging is off: on torch, no
`.item()` (`aten::_local_scalar_dense`, a device sync on a GPU) in a train
step or an inference call, for every option that changes the path."""

import keras
import numpy as np
import pytest

import keras_bn_ext

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch profiler"
)

OPTIONS = {
    "default": {},
    "channels first": {"axis": 1},
    "masked": {},
    "virtual batches": {"virtual_batch_size": 4},
    "renorm": {"renorm": True},
    "cumulative, torch conventions": {"momentum": None, "unbiased_moving_variance": True},
    "debiased": {"debias": True},
    "several axes": {"axis": [1, 2]},
}


def _host_reads(fn):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()
            if e.name in ("aten::item", "aten::_local_scalar_dense")]


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_no_host_read_in_train_step_or_inference(name):
    import torch

    layer = keras_bn_ext.BatchNormalization(**OPTIONS[name])
    x = torch.tensor(np.random.default_rng(0).normal(size=(8, 5, 6, 3)),
                     dtype=torch.float32, requires_grad=True)
    mask = torch.ones((8, 5, 6), dtype=torch.bool) if name == "masked" else None
    layer(x, training=True, mask=mask)  # builds; the first call may read

    def train():
        layer(x, training=True, mask=mask).sum().backward()

    def infer():
        with torch.no_grad():
            layer(x, training=False, mask=mask)

    assert _host_reads(train) == []
    assert _host_reads(infer) == []

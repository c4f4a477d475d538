"""synchronized=True with torch.distributed (gloo, 2 processes on loopback)."""

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402


def worker(rank, port, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    import keras

    import keras_bn_ext

    x = np.random.default_rng(0).normal(3, 2, (16, 4)).astype("float32")
    x[8:] += 10
    local = x[rank * 8:(rank + 1) * 8]
    layer = keras_bn_ext.BatchNormalization(synchronized=True, momentum=0.0)
    inputs = torch.tensor(local, requires_grad=True)
    y = layer(inputs, training=True)
    y.sum().backward()  # the all-reduce is differentiable
    queue.put((
        rank,
        keras.ops.convert_to_numpy(layer.moving_mean),
        keras.ops.convert_to_numpy(layer.moving_variance),
    ))
    dist.destroy_process_group()


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    x = np.random.default_rng(0).normal(3, 2, (16, 4)).astype("float32")
    x[8:] += 10
    for rank, mean, var in results:
        np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
        np.testing.assert_allclose(var, x.var(0), rtol=1e-4)
    print("OK", file=sys.stderr)

"""A DistributedDataParallel training loop over 2 processes (gloo on
loopback): synchronized statistics of the global batch, per-process ones
without synchronization, one debug record per process and step (its rank as
`replica`), gradients equal to whole-batch training, save and load."""

import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "torch"
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

STEPS, LOCAL = 3, 8


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, (STEPS, 2 * LOCAL, 4)).astype("float32")
    x[:, LOCAL:] += 10  # the two processes see different data
    x[:, :, 1] += 1e4  # far from zero
    return x


def train(rank, synchronized, debugging):
    import keras

    import keras_bn_ext

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    bn = keras_bn_ext.BatchNormalization(synchronized=synchronized, momentum=0.5, name="bn")
    model = keras.Model(inputs, keras.layers.Dense(1)(bn(inputs)))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    records = []
    hook = bn.add_debug_hook(records.append) if debugging else None
    for batch in data():
        local = torch.tensor(batch[rank * LOCAL:(rank + 1) * LOCAL])
        optimizer.zero_grad()
        ddp(local, training=True).square().mean().backward()
        optimizer.step()
    if hook is not None:
        hook.remove()
    return model, records


def worker(rank, port, queue):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    import keras

    out = {}
    for synchronized in (True, False):
        for debugging in (False, True):
            model, records = train(rank, synchronized, debugging)
            bn = model.get_layer("bn")
            out[synchronized, debugging] = (
                keras.ops.convert_to_numpy(bn.moving_mean),
                keras.ops.convert_to_numpy(bn.moving_variance),
                [(r.replica, r.count, r.branch) for r in records],
            )
    # recalibrate in every process on the same data: one consistent set.
    import keras_bn_ext

    keras_bn_ext.recalibrate(model, [data()[0]], verbose=0)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_mean), data()[0].astype(np.float64).mean(0),
        rtol=1e-6,
    )
    # diagnose in every process: exact, changes nothing.
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.variables]
    diagnosis = keras_bn_ext.diagnose(model, data()[0] + 3.0)
    shift = 3.0 / np.sqrt(data()[0].astype(np.float64).var(0) + bn.epsilon)
    np.testing.assert_allclose(diagnosis["bn"].mean_shift, shift, rtol=1e-4)
    for b, v in zip(before, model.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), b)
    if rank == 0:
        path = os.path.join(tempfile.mkdtemp(), "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        x = data()[0]
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
            rtol=1e-5, atol=1e-5,
        )
    queue.put((rank, out))
    dist.destroy_process_group()


def expected(batches):
    mean, var = np.zeros(4), np.ones(4)
    for batch in batches:
        batch = batch.astype(np.float64)
        mean = mean * 0.5 + batch.mean(0) * 0.5
        var = var * 0.5 + batch.var(0) * 0.5
    return mean, var


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
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    x = data()
    for rank, out in results.items():
        for (synchronized, debugging), (mean, var, records) in out.items():
            seen = x if synchronized else x[:, rank * LOCAL:(rank + 1) * LOCAL]
            want_mean, want_var = expected(seen)
            np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
            np.testing.assert_allclose(var, want_var, rtol=1e-4)
            count = 2 * LOCAL if synchronized else LOCAL
            assert records == ([(rank, count, "batch")] * STEPS if debugging else []), records
    print("OK", file=sys.stderr)

"""The benchmark's cases and, per backend, the compiled steps it times.

A *step* is a zero-argument callable that runs one train step (forward,
backward, moving-statistics update) or one inference call and blocks until
the result is computed. Each backend builds it the way Keras's `fit` /
`predict` compile it:

- JAX: `jax.jit` of `layer.stateless_call` under `jax.vjp` (what
  `jax.value_and_grad` does inside `fit`, with the upstream gradient `dy`
  given instead of a synthetic loss, so nothing but the layer is timed); the
  new non-trainable state is returned, as `fit` does.
- TensorFlow: `tf.function(jit_compile=True)` with a `GradientTape`
  (`output_gradients=dy`); the moving statistics are assigned in the graph.
  `jit_compile=False` for the hook-on case (XLA cannot call back to Python),
  compared with debugging off without XLA too.
- PyTorch: eager (`fit`'s default on torch), `y.backward(dy)`; inference
  under `torch.no_grad()`, as `predict` does. `torch.compile` optionally.

Backend modules are imported inside the functions: this file is imported
before the backend is chosen.
"""

import dataclasses

import numpy as np

MOMENTUM = 0.99
EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    shape: tuple
    axis: int
    masked: bool = False

    @property
    def channels(self):
        return self.shape[self.axis]

    @property
    def size(self):
        return int(np.prod(self.shape))

    @property
    def mask_shape(self):
        # Keras's convention: the mask covers inputs.shape[:-1].
        return self.shape[:-1]

    def describe(self):
        dims = "x".join(str(d) for d in self.shape)
        extra = ", mask" if self.masked else ""
        return f"{self.name} ({dims}, axis={self.axis}{extra})"


FULL_CASES = (
    Case("dense", (256, 1024), -1),
    Case("conv NHWC", (32, 32, 32, 64), -1),
    Case("conv NCHW", (32, 64, 32, 32), 1),
    Case("sequence", (32, 128, 256), -1, masked=True),
)

# For the smoke test: same layouts, tiny sizes.
TINY_CASES = (
    Case("dense", (8, 16), -1),
    Case("conv NHWC", (2, 4, 4, 8), -1),
    Case("conv NCHW", (2, 8, 4, 4), 1),
    Case("sequence", (2, 6, 8), -1, masked=True),
)


def make_data(case, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(case.shape) * 2.0 + 3.0).astype("float32")
    dy = rng.standard_normal(case.shape).astype("float32")
    data = {"x": x, "dy": dy}
    if case.masked:
        # Padded sequences: each sample keeps a random-length prefix.
        batch, steps = case.mask_shape
        lengths = rng.integers(steps // 4, steps + 1, size=batch)
        data["mask"] = np.arange(steps)[None, :] < lengths[:, None]
    return data


def step_bytes(case, mode):
    """Bytes a step must move at the least (the roofline's numerator).

    Inference: read x, write y (2 passes). Train: statistics read x; the
    normalization reads x and writes y; the backward's two reductions
    (sum dy, sum dy*x_hat) read dy and x; dx reads dy and x and writes dx:
    8 passes over float32 (a mask, if any, is read 4 times too).
    """
    passes = 2 if mode.startswith("infer") else 8
    total = passes * case.size * 4
    if case.masked:
        mask_reads = 1 if mode.startswith("infer") else 4
        total += mask_reads * int(np.prod(case.mask_shape))
    return total


class HookCounter:
    """A debug hook doing the least a hook can: count the records."""

    def __init__(self):
        self.calls = 0

    def __call__(self, record):
        self.calls += 1


def make_layer(impl, case, hook=None):
    """A built Keras or keras_bn_ext layer with non-trivial moving stats."""
    import keras

    import keras_bn_ext

    if impl == "keras":
        layer = keras.layers.BatchNormalization(
            axis=case.axis, momentum=MOMENTUM, epsilon=EPSILON
        )
    else:
        layer = keras_bn_ext.BatchNormalization(
            axis=case.axis, momentum=MOMENTUM, epsilon=EPSILON
        )
    layer.build(case.shape)
    rng = np.random.default_rng(1)
    layer.moving_mean.assign(rng.uniform(2.0, 4.0, case.channels).astype("float32"))
    layer.moving_variance.assign(
        rng.uniform(3.0, 5.0, case.channels).astype("float32")
    )
    if impl == "ours_hook":
        layer.add_debug_hook(hook)
    return layer


# JAX ---------------------------------------------------------------------------


def jax_step(layer, case, mode, data, memory=None):
    import jax
    import jax.numpy as jnp

    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]
    x = jnp.asarray(data["x"])
    dy = jnp.asarray(data["dy"])
    mask = jnp.asarray(data["mask"]) if case.masked else None

    if mode == "train":

        def step(tv, ntv, x, dy, mask):
            def forward(tv, x):
                y, new_ntv = layer.stateless_call(tv, ntv, x, training=True, mask=mask)
                return y, new_ntv

            y, vjp, new_ntv = jax.vjp(forward, tv, x, has_aux=True)
            grad_tv, grad_x = vjp(dy)
            return y, grad_x, grad_tv, new_ntv

        args = (tv, ntv, x, dy, mask)
    elif mode == "infer":

        def step(tv, ntv, x, mask):
            y, _ = layer.stateless_call(tv, ntv, x, training=False, mask=mask)
            return y

        args = (tv, ntv, x, mask)
    else:
        raise ValueError(f"Unknown mode for jax: {mode}")

    compiled = jax.jit(step).lower(*args).compile()
    if memory is not None:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and "bytes accessed" in cost:
            # XLA's own count of the bytes the step's kernels read and write.
            memory["bytes_accessed"] = float(cost["bytes accessed"])
        analysis = compiled.memory_analysis()
        if analysis is not None:
            memory["temp_bytes"] = int(analysis.temp_size_in_bytes)
            memory["output_bytes"] = int(analysis.output_size_in_bytes)
            memory["argument_bytes"] = int(analysis.argument_size_in_bytes)
            memory["method"] = "jax compiled.memory_analysis() (XLA buffer assignment)"

    def run():
        jax.block_until_ready(compiled(*args))

    return run


# TensorFlow --------------------------------------------------------------------


def tf_step(layer, case, mode, data, xla):
    import tensorflow as tf

    x = tf.constant(data["x"])
    dy = tf.constant(data["dy"])
    mask = tf.constant(data["mask"]) if case.masked else None
    tvars = layer.trainable_variables

    if mode == "train":

        @tf.function(jit_compile=xla)
        def step(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True, mask=mask)
            grads = tape.gradient(y, [x] + tvars, output_gradients=dy)
            return y, grads

        def run():
            _, grads = step(x, dy)
            grads[-1].numpy()  # a small read-back: the step has finished

    elif mode == "infer":

        @tf.function(jit_compile=xla)
        def step(x):
            return layer(x, training=False, mask=mask)

        def run():
            step(x)[:1, ...].numpy()

    else:
        raise ValueError(f"Unknown mode for tensorflow: {mode}")
    return run


# PyTorch -----------------------------------------------------------------------


def torch_step(layer, case, mode, data, compiled=False):
    import torch

    x = torch.from_numpy(data["x"].copy())
    dy = torch.from_numpy(data["dy"].copy())
    mask = torch.from_numpy(data["mask"].copy()) if case.masked else None
    params = [v.value for v in layer.trainable_variables]

    if mode == "train":
        x.requires_grad_(True)

        def forward(x):
            return layer(x, training=True, mask=mask)

        if compiled:
            forward = torch.compile(forward)

        def run():
            x.grad = None
            for p in params:
                p.grad = None
            y = forward(x)
            y.backward(dy)

    elif mode == "infer":

        def forward(x):
            return layer(x, training=False, mask=mask)

        if compiled:
            forward = torch.compile(forward)

        def run():
            with torch.no_grad():
                forward(x)

    else:
        raise ValueError(f"Unknown mode for torch: {mode}")
    return run


def torch_native_module(case):
    """torch.nn.BatchNorm{1,2}d on the same memory layout, or None.

    NHWC data is a channels_last NCHW tensor for PyTorch (same bytes, no
    copy); NCHW is PyTorch's default layout. The masked sequence has no
    native counterpart (PyTorch's BatchNorm takes no mask).
    """
    import torch

    if case.masked:
        return None
    momentum = 1.0 - MOMENTUM  # PyTorch's momentum is the new value's weight.
    if len(case.shape) == 2:
        return torch.nn.BatchNorm1d(case.channels, eps=EPSILON, momentum=momentum)
    if len(case.shape) == 4:
        return torch.nn.BatchNorm2d(case.channels, eps=EPSILON, momentum=momentum)
    return None


def _to_torch_layout(case, array):
    import torch

    t = torch.from_numpy(array.copy())
    if len(case.shape) == 4 and case.axis in (-1, 3):
        t = t.permute(0, 3, 1, 2)  # a channels_last view, no copy
    return t


def torch_native_step(module, case, mode, data):
    import torch

    x = _to_torch_layout(case, data["x"]).detach()
    dy = _to_torch_layout(case, data["dy"])
    if len(case.shape) == 4 and case.axis in (-1, 3):
        assert x.is_contiguous(memory_format=torch.channels_last)
    params = list(module.parameters())

    if mode == "train":
        module.train()
        x.requires_grad_(True)

        def run():
            x.grad = None
            for p in params:
                p.grad = None
            y = module(x)
            y.backward(dy)

    else:
        module.eval()

        def run():
            with torch.no_grad():
                module(x)

    return run


def torch_peak_bytes(run):
    """Peak bytes allocated during one call of `run`, above what was live
    before it, from torch.profiler's allocation records (CPU allocator)."""
    import itertools

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    ]
    events.sort(key=lambda e: e.start_ns())
    cumulative = list(itertools.accumulate(e.nbytes() for e in events))
    return max([0] + cumulative)


def torch_op_counts(run):
    """Number of aten operator calls and of full-size kernels in one call,
    for the docs' explanation of where torch time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    top_level = [e for e in ops if e.cpu_parent is None
                 or not e.cpu_parent.name.startswith("aten::")]
    return {"aten_calls": len(ops), "top_level_aten_calls": len(top_level)}

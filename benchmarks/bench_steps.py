"""The benchmark's cases and, per backend, the steps it times.

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


@dataclasses.dataclass(frozen=True)
class Step:
    mode: str  # "train..." or "infer...": what `build_step` builds
    label: str  # the table's "step" column
    impls: tuple  # the implementations timed side by side


# The backends, and the steps each one times. "ours_hook" is our layer with
# one debug hook; "native" is torch.nn.BatchNorm.
STEPS = {
    "jax": (
        Step("train", "train (jit)", ("keras", "ours", "ours_hook")),
        Step("infer", "infer (jit)", ("keras", "ours")),
    ),
    "tensorflow": (
        Step("train", "train (XLA)", ("keras", "ours")),
        Step("train_graph", "train (graph, no XLA)", ("keras", "ours", "ours_hook")),
        Step("infer", "infer (XLA)", ("keras", "ours")),
    ),
    "torch": (
        Step("train", "train (eager)", ("keras", "ours", "ours_hook", "native")),
        Step("infer", "infer (eager)", ("keras", "ours", "native")),
        Step("train_compiled", "train (torch.compile)", ("keras", "ours")),
        Step("infer_compiled", "infer (torch.compile)", ("keras", "ours")),
    ),
}
BACKENDS = tuple(STEPS)


def steps_for(backend, case, torch_compile="none"):
    """The steps timed for `case` on `backend`.

    `torch_compile`: "none", "one" (the conv NHWC case) or "all": the cases
    that also time torch.compile.
    """
    compile_case = torch_compile == "all" or (
        torch_compile == "one" and case.name == "conv NHWC"
    )
    return [s for s in STEPS[backend]
            if compile_case or not s.mode.endswith("_compiled")]


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
    infer = mode.startswith("infer")
    total = (2 if infer else 8) * case.size * 4
    if case.masked:
        total += (1 if infer else 4) * int(np.prod(case.mask_shape))
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

    cls = (keras.layers.BatchNormalization if impl == "keras"
           else keras_bn_ext.BatchNormalization)
    layer = cls(axis=case.axis, momentum=MOMENTUM, epsilon=EPSILON)
    layer.build(case.shape)
    rng = np.random.default_rng(1)
    layer.moving_mean.assign(rng.uniform(2.0, 4.0, case.channels).astype("float32"))
    layer.moving_variance.assign(
        rng.uniform(3.0, 5.0, case.channels).astype("float32")
    )
    if impl == "ours_hook":
        layer.add_debug_hook(hook)
    return layer


def build_step(backend, impl, case, mode, data, hook=None):
    """The step of `impl` ("keras", "ours", "ours_hook" or "native") for
    `mode` on `backend`, or None where `impl` has no such step."""
    if impl == "native":
        return torch_native_step(case, mode, data) if backend == "torch" else None
    builders = {"jax": jax_step, "tensorflow": tf_step, "torch": torch_step}
    return builders[backend](make_layer(impl, case, hook), case, mode, data)


# JAX ---------------------------------------------------------------------------


def jax_compile(layer, case, mode, x, dy, mask=None):
    """The compiled JAX step and its arguments. `x`, `dy` and `mask` may be
    arrays or `jax.ShapeDtypeStruct`s (to compile without data)."""
    import jax

    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]
    if mode == "train":

        def step(tv, ntv, x, dy, mask):
            def forward(tv, x):
                return layer.stateless_call(tv, ntv, x, training=True, mask=mask)

            y, vjp, new_ntv = jax.vjp(forward, tv, x, has_aux=True)
            grad_tv, grad_x = vjp(dy)
            return y, grad_x, grad_tv, new_ntv

        args = (tv, ntv, x, dy, mask)
    elif mode == "infer":

        def step(tv, ntv, x, mask):
            return layer.stateless_call(tv, ntv, x, training=False, mask=mask)[0]

        args = (tv, ntv, x, mask)
    else:
        raise ValueError(f"Unknown mode for jax. Received: mode={mode!r}")
    return jax.jit(step).lower(*args).compile(), args


def jax_step(layer, case, mode, data):
    import jax
    import jax.numpy as jnp

    mask = jnp.asarray(data["mask"]) if case.masked else None
    compiled, args = jax_compile(
        layer, case, mode, jnp.asarray(data["x"]), jnp.asarray(data["dy"]), mask
    )
    return lambda: jax.block_until_ready(compiled(*args))


# TensorFlow --------------------------------------------------------------------


def tf_step(layer, case, mode, data):
    """`mode`: "train", "train_graph" (the same, without XLA) or "infer"."""
    import tensorflow as tf

    x = tf.constant(data["x"])
    dy = tf.constant(data["dy"])
    mask = tf.constant(data["mask"]) if case.masked else None
    tvars = layer.trainable_variables

    if mode.startswith("train"):

        @tf.function(jit_compile=mode != "train_graph")
        def train(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True, mask=mask)
            return y, tape.gradient(y, [x] + tvars, output_gradients=dy)

        # A small read-back: the step has finished.
        return lambda: train(x, dy)[1][-1].numpy()

    @tf.function(jit_compile=True)
    def infer(x):
        return layer(x, training=False, mask=mask)

    return lambda: infer(x)[:1, ...].numpy()


# PyTorch -----------------------------------------------------------------------


def _torch_run(forward, x, dy, params, training):
    """One eager train step (`y.backward(dy)`) or inference call."""
    import torch

    if not training:

        def infer():
            with torch.no_grad():
                forward(x)

        return infer
    x.requires_grad_(True)

    def train():
        for t in (x, *params):
            t.grad = None
        forward(x).backward(dy)

    return train


def torch_step(layer, case, mode, data):
    """`mode`: "train" or "infer", "_compiled" appended for torch.compile."""
    import torch

    x = torch.from_numpy(data["x"].copy())
    dy = torch.from_numpy(data["dy"].copy())
    mask = torch.from_numpy(data["mask"].copy()) if case.masked else None
    training = mode.startswith("train")

    def forward(x):
        return layer(x, training=training, mask=mask)

    if mode.endswith("_compiled"):
        forward = torch.compile(forward)
    params = [v.value for v in layer.trainable_variables]
    return _torch_run(forward, x, dy, params, training)


def _to_torch_layout(case, array):
    import torch

    t = torch.from_numpy(array.copy())
    if len(case.shape) == 4 and case.axis in (-1, 3):
        t = t.permute(0, 3, 1, 2)  # a channels_last view, no copy
        assert t.is_contiguous(memory_format=torch.channels_last)
    return t


def torch_native_step(case, mode, data):
    """torch.nn.BatchNorm{1,2}d on the same memory layout, or None.

    NHWC data is a channels_last NCHW tensor for PyTorch (same bytes, no
    copy); NCHW is PyTorch's default layout. The masked sequence has no
    native counterpart (PyTorch's BatchNorm takes no mask).
    """
    import torch

    modules = {2: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}
    if case.masked or len(case.shape) not in modules:
        return None
    momentum = 1.0 - MOMENTUM  # PyTorch's momentum is the new value's weight.
    module = modules[len(case.shape)](case.channels, eps=EPSILON, momentum=momentum)
    training = mode.startswith("train")
    module.train(training)
    x = _to_torch_layout(case, data["x"]).detach()
    dy = _to_torch_layout(case, data["dy"])
    return _torch_run(module, x, dy, list(module.parameters()), training)


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

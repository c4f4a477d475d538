"""The few operations `keras.ops` cannot express, one small module per backend.

The module is chosen once, at import time, from `keras.backend.backend()`.
Each module defines only what differs from the defaults in `_common.py`:

Statistics kernels:
- `custom_vjp(forward, backward)`: a function with a hand-written gradient
  (`jax.custom_vjp`, `tf.custom_gradient`, `torch.autograd.Function`).
- `channel_sum(x, axes)`: a keepdims sum that stays accurate in float32 over
  many elements (TensorFlow blocks it in two levels).
- `native_batch_norm(x, axes, gamma, beta, epsilon)`: the backend's own
  training kernel where it is both faster and accurate (torch), else None.
- `multiply_add(x, scale, offset)`: `x * scale + offset`, one kernel on torch.
- `reshape(x, shape)`: `keras.ops.reshape` for the per-step reshapes of small
  vectors (torch: the tensor's own, 2 us against 30 us).
- `all_reduce_sum(tensors)`: sums across replicas/processes for
  `synchronized=True`; returns the tensors unchanged when not distributed.
- `is_distributed()`, `replica_id()`: whether each replica runs its own copy
  of the call (TF strategy, torch.distributed; not JAX sharding, whose
  computation is global) and which one this is (else None).

Host callbacks and variable reads:
- `host_callback(fn, payload)`: runs `fn(**numpy_payload)` on the host each time
  the surrounding computation really executes (eager, jit, tf.function).
- `widest_float()`: the widest float dtype it computes in (float32 on JAX
  without x64), for accumulators.
- `flush()`: waits until every callback issued so far has run.
- `stages_callbacks()`: whether callbacks made now are staged into a
  compiled step (JAX, tf.function), so several can be packed into one.
- `host_value(variable)`: the variable's current value as NumPy, even while a
  function is being traced; `None` where it cannot be read.
- `stored_value(variable)`: the value stored on the variable while a
  stateless scope traces another (JAX), as NumPy; else None.
- `value_moved_to_trainer(variable)` and `call_on_host_if(predicate, fn)`:
  Keras's JAX trainer moves variable values into its compiled functions
  (predict/evaluate purge them; predict_on_batch/test_on_batch trace them),
  so a check of them must run on device and call back only when true.
- `callbacks_supported()`: `(ok, why_not)` for the current tracing context.
- `is_shape_inference()`: inside Keras's shape-inference pass (symbolic
  build, `compute_output_spec`), which is not a real execution.
- `is_compiling()`: inside torch.compile's tracing (else False).

Compilation and evaluation:
- `jit_compatible(debugging)`: whether a layer may be XLA-compiled now
  (TensorFlow cannot call back to Python from XLA, so not while debugging).
- `set_model_jit(model, debugging)`: switches a compiled model's XLA setting
  off while its layers debug through host callbacks, and back after
  (TensorFlow; else nothing).
- `no_grad()`: a context that records no gradients (torch), for passes that
  only read statistics.
"""

import importlib
from typing import TYPE_CHECKING
from typing import Any

import keras

from keras_bn_ext.backend import _common
from keras_bn_ext.backend.supported import BACKENDS  # noqa: F401

_MODULES = {
    "tensorflow": "_tensorflow",
    "jax": "_jax",
    "torch": "_torch",
    "numpy": "_numpy",
    "openvino": "_numpy",
}

name = keras.backend.backend()
if name not in _MODULES:
    raise ImportError(
        f"keras_bn_ext does not support the Keras backend {name!r}. "
        f"Supported: {sorted(_MODULES)}."
    )
ops_impl = importlib.import_module(f"keras_bn_ext.backend.{_MODULES[name]}")

__all__ = [
    "custom_vjp",
    "channel_sum",
    "native_batch_norm",
    "multiply_add",
    "reshape",
    "all_reduce_sum",
    "is_distributed",
    "replica_id",
    "host_callback",
    "flush",
    "stages_callbacks",
    "host_value",
    "stored_value",
    "value_moved_to_trainer",
    "call_on_host_if",
    "callbacks_supported",
    "is_shape_inference",
    "is_compiling",
    "jit_compatible",
    "set_model_jit",
    "no_grad",
    "widest_float",
]


def overrides(module=ops_impl):
    """The names of `__all__` that `module` defines itself."""
    return sorted(n for n in __all__ if n in vars(module))


for _name in __all__:
    globals()[_name] = getattr(ops_impl, _name, None) or getattr(_common, _name)
del _name

if TYPE_CHECKING:
    # The names above are set in a loop, which a type checker cannot follow.
    def __getattr__(name: str) -> Any: ...

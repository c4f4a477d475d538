"""The few operations `keras.ops` cannot express, one small module per backend.

The module is chosen once, at import time, from `keras.backend.backend()`.
Each module defines only what differs from the defaults in `_common.py`:

- `moments(x, axes)`: numerically stable per-channel mean and biased variance,
  or `None` to let `keras_bn_ext.statistics` use its portable shifted formula.
- `host_callback(fn, payload)`: runs `fn(**numpy_payload)` on the host each time
  the surrounding computation really executes (eager, jit, tf.function).
- `host_value(variable)`: the variable's current value as NumPy, even while a
  function is being traced; `None` where it cannot be read.
- `value_moved_to_trainer(variable)` and `call_on_host_if(predicate, fn)`:
  Keras's JAX trainer moves variable values into compiled predict/evaluate,
  so a check of them must run on device and call back only when true.
- `callbacks_supported()`: `(ok, why_not)` for the current tracing context.
- `multiply_add(x, scale, offset)`: `x * scale + offset`, fused where the
  backend runs eagerly (torch.addcmul).
- `is_shape_inference()`: inside Keras's shape-inference pass (symbolic
  build, `compute_output_spec`), which is not a real execution.
- `fused_batch_norm_training(x, axis, gamma, beta, epsilon)` and
  `fused_batch_norm_inference(...)`: the backend's native batch-norm kernels
  where they beat the portable formula (torch), else None.
- `is_compiling()`: inside torch.compile's tracing (else False).
- `accumulator_dtype(dtype, count)`: the dtype sums over a channel accumulate
  in, given the elements per channel (None: unknown at trace time).
- `all_reduce_sum(tensors)`: sums across replicas/processes for
  `synchronized=True`; returns the tensors unchanged when not distributed.
"""

import keras

from keras_bn_ext.backend import _common
from keras_bn_ext.backend._common import is_shape_inference

_name = keras.backend.backend()
if _name == "tensorflow":
    from keras_bn_ext.backend import _tensorflow as ops_impl
elif _name == "jax":
    from keras_bn_ext.backend import _jax as ops_impl
elif _name == "torch":
    from keras_bn_ext.backend import _torch as ops_impl
else:  # numpy / openvino: inference-only backends, no host callbacks needed.
    from keras_bn_ext.backend import _numpy as ops_impl


def _pick(name):
    """The backend's own function, else the shared default in `_common`."""
    return getattr(ops_impl, name, None) or getattr(_common, name)


moments = _pick("moments")
host_callback = _pick("host_callback")
host_value = _pick("host_value")
callbacks_supported = _pick("callbacks_supported")
all_reduce_sum = _pick("all_reduce_sum")
flush = _pick("flush")
multiply_add = _pick("multiply_add")
fused_batch_norm_training = _pick("fused_batch_norm_training")
fused_batch_norm_inference = _pick("fused_batch_norm_inference")
is_compiling = _pick("is_compiling")
accumulator_dtype = _pick("accumulator_dtype")
value_moved_to_trainer = _pick("value_moved_to_trainer")
call_on_host_if = _pick("call_on_host_if")

__all__ = [
    "is_shape_inference",
    "moments",
    "host_callback",
    "host_value",
    "callbacks_supported",
    "all_reduce_sum",
    "flush",
    "multiply_add",
    "fused_batch_norm_training",
    "fused_batch_norm_inference",
    "is_compiling",
    "accumulator_dtype",
    "value_moved_to_trainer",
    "call_on_host_if",
]

"""See which statistics every BatchNormalization call used, and why.

- `add_hook(fn)`: `fn(record)` for every call of every layer; returns a
  handle with `.remove()`. Per layer: `layer.add_debug_hook(fn)`.
- `capture(model=None)`: a context manager yielding the list of
  `StatsRecord`s made inside it.
- `retrace(model)`: make a model's compiled `fit`/`evaluate`/`predict`
  functions pick up hooks switched on (or off) after they were compiled.
- `reset()`: remove every global hook and end every active capture.
- `BatchNormalization(debug=True)`: one log line per call on the standard
  `logging` logger `"keras_bn_ext"`.

Records are made on the host when the computation really runs (eagerly, in
`tf.function`, under `jax.jit`), never at trace time or in Keras's shape
inference. With debugging off, nothing is compiled in: zero cost.
"""

from keras_bn_ext.debug.freshness import NeverUpdatedWarning
from keras_bn_ext.debug.records import StatsRecord
from keras_bn_ext.debug.registry import HookHandle
from keras_bn_ext.debug.registry import add_hook
from keras_bn_ext.debug.registry import capture
from keras_bn_ext.debug.registry import reset
from keras_bn_ext.debug.registry import retrace

__all__ = [
    "StatsRecord",
    "NeverUpdatedWarning",
    "HookHandle",
    "add_hook",
    "capture",
    "reset",
    "retrace",
]

"""Hook registry and capture: who receives the records."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from typing import TYPE_CHECKING

from keras_bn_ext import backend as backend_ops
from keras_bn_ext.debug import step_callbacks

if TYPE_CHECKING:
    import keras

    # records imports this module.
    from keras_bn_ext.debug.records import StatsRecord

# A debug hook: called with each record; what it returns is ignored.
Hook = Callable[["StatsRecord"], object]

logger = logging.getLogger("keras_bn_ext")

_global_hooks: dict[int, Hook] = {}
_captures: list[list[StatsRecord]] = []
_hook_ids = itertools.count()


class HookHandle:
    """Returned by `add_hook`/`add_debug_hook`; `.remove()` detaches it.

    Also a context manager: the hook is removed when the block ends.
    """

    def __init__(self, hooks: dict[int, Hook], key: int) -> None:
        self._hooks = hooks
        self._key = key

    def remove(self) -> None:
        """Detaches the hook (again: no effect)."""
        self._hooks.pop(self._key, None)

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def add_hook_to(hooks: dict[int, Hook], fn: Hook) -> HookHandle:
    if not callable(fn):
        raise ValueError(f"A debug hook must be callable. Received: fn={fn!r}")
    key = next(_hook_ids)
    hooks[key] = fn
    return HookHandle(hooks, key)


def add_hook(fn: Hook) -> HookHandle:
    """Calls `fn(record)` for every call of every keras_bn_ext layer.

    Examples:
        >>> import numpy as np, keras_bn_ext
        >>> seen = []
        >>> handle = keras_bn_ext.debug.add_hook(seen.append)
        >>> _ = keras_bn_ext.BatchNormalization()(np.ones((2, 3)), training=True)
        >>> seen[-1].branch
        'batch'
        >>> handle.remove()
    """
    return add_hook_to(_global_hooks, fn)


def reset() -> None:
    """Removes every global hook and ends every active capture.

    Per-layer hooks (`layer.add_debug_hook`) stay. A `capture` block that is
    still open keeps the records made before the reset and gets no more.
    Useful between tests or notebook cells, so one run's hooks do not see the
    next run's calls.

    Examples:
        >>> import numpy as np, keras_bn_ext
        >>> seen = []
        >>> _ = keras_bn_ext.debug.add_hook(seen.append)
        >>> keras_bn_ext.debug.reset()
        >>> _ = keras_bn_ext.BatchNormalization()(np.ones((2, 3)), training=True)
        >>> seen
        []
    """
    _global_hooks.clear()
    _captures.clear()


def is_active() -> bool:
    """Whether any global hook or capture is active (trace-time check)."""
    return bool(_global_hooks or _captures)


def dispatch(record: StatsRecord, layer_hooks: Iterable[Hook]) -> None:
    """Sends a record to the layer's hooks (functions), the global hooks and
    captures.

    A hook that raises is logged with its name; the others still run and the
    layer's state is untouched (the update already happened on device).
    """
    for fn in list(layer_hooks) + list(_global_hooks.values()):
        try:
            fn(record)
        except Exception:
            logger.exception(
                "keras_bn_ext debug hook %s raised on a record of layer %r; "
                "the layer and the other hooks are unaffected.",
                getattr(fn, "__qualname__", repr(fn)),
                record.layer,
            )
    for records in _captures:
        records.append(record)


@contextlib.contextmanager
def capture(model: keras.Model | None = None) -> Iterator[list[StatsRecord]]:
    """Yields the list of `StatsRecord`s made while the block runs.

    Args:
        model: optional Keras model whose compiled functions are retraced on
            entry and exit (see `retrace`), so that `fit`/`evaluate`/`predict`
            compiled before the block make records inside it.

    Examples:
        >>> import numpy as np, keras_bn_ext
        >>> layer = keras_bn_ext.BatchNormalization()
        >>> with keras_bn_ext.debug.capture() as records:
        ...     _ = layer(np.ones((4, 2)), training=True)
        >>> [r.branch for r in records], records[0].count
        (['batch'], 4)
    """
    records: list[StatsRecord] = []
    _captures.append(records)
    if model is not None:
        retrace(model)
    try:
        yield records
    finally:
        step_callbacks.flush()
        # By identity: another open capture may hold an equal list, and
        # `reset()` may already have ended this one.
        _captures[:] = [other for other in _captures if other is not records]
        if model is not None:
            retrace(model)


def _debuggable_layers(model):
    # Any layer with the debugging surface (ours); no import of the layer.
    return [
        layer for layer in model._flatten_layers() if hasattr(layer, "debugging")
    ]


def retrace(model: keras.Model) -> keras.Model:
    """Drops a model's compiled train/test/predict functions.

    Hooks are compiled in when a function is traced, so switching debugging
    on (or off) after `fit`/`predict` already ran needs a retrace: the next
    `fit`/`evaluate`/`predict` traces again and picks up the current hooks.
    On TensorFlow, XLA (`jit_compile=True`) cannot call back to Python: the
    model's steps return their records with their outputs instead, and keep
    XLA. Only where they cannot (a distribution strategy with several
    replicas, `steps_per_execution > 1`) does the model run as a plain
    `tf.function` while a layer is debugging; the XLA setting comes back
    when debugging is off again.

    Returns:
        The model.
    """
    for name in ("train_function", "test_function", "predict_function"):
        if hasattr(model, name):
            setattr(model, name, None)
    debugging = any(layer.debugging for layer in _debuggable_layers(model))
    needs_callbacks = debugging and not step_callbacks.steps_return_records(model)
    backend_ops.set_model_jit(model, needs_callbacks)
    step_callbacks.wrap_steps(model)  # records leave with each step
    return model

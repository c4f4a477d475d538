"""`StatsRecord`: what one call of a layer did, built on the host."""

import dataclasses
import functools
import itertools
import logging

import keras
import numpy as np
from keras import ops

from keras_bn_ext import backend as backend_ops
from keras_bn_ext.debug import registry
from keras_bn_ext.debug import step_callbacks
from keras_bn_ext.debug.stack import warn_at_user

logger = logging.getLogger("keras_bn_ext")
_record_index = itertools.count()
_BACKEND = keras.backend.backend()  # fixed for the process


@dataclasses.dataclass(frozen=True)
class StatsRecord:
    """One real execution of a `BatchNormalization` layer.

    Attributes:
        layer: the layer's name.
        branch: `"batch"` (this batch's statistics) or `"moving"`.
        reason: why that branch, in a sentence.
        training: the `training` argument the call received.
        mean: the mean used to normalize (NumPy; shape `(G, C)` with `G`
            virtual batches).
        variance: the variance used to normalize (same shape).
        moving_mean: the moving mean after the call.
        moving_variance: the moving variance after the call.
        updated: whether the moving statistics were updated.
        count: elements reduced per channel (batch branch; over the global
            batch when synchronized): an `int`, or with a mask, whose counts
            differ per channel, an int array of the statistics' shape.
            With virtual batches, per virtual batch (an array when they
            differ, e.g. a smaller last one). None in the moving branch.
        flags: e.g. "never_updated", "nonfinite", "empty_batch",
            "empty_channel", "tiny_variance", "update_skipped".
        backend: the Keras backend.
        index: a running index over all records of the process.
        num_batches_tracked: the update counter after the call, if the layer
            keeps one.
        replica: the replica that made the record where each replica runs
            its own copy of the call (TensorFlow distribution strategy, torch
            DDP rank), else None (also under JAX sharding, where one record
            has the global numbers).
    """

    layer: str
    branch: str
    reason: str
    training: bool | None
    mean: np.ndarray
    variance: np.ndarray
    moving_mean: np.ndarray
    moving_variance: np.ndarray
    updated: bool
    count: int | np.ndarray | None
    flags: tuple[str, ...]
    backend: str
    index: int
    num_batches_tracked: int | None = None
    replica: int | None = None

    def __str__(self) -> str:
        flags = ",".join(self.flags) or "-"
        count = "" if self.count is None else f" count={_short(self.count)}"
        return (
            f"#{self.index} {self.layer}: {self.branch} statistics "
            f"(training={self.training}){count} mean={_short(self.mean)} "
            f"var={_short(self.variance)} updated={self.updated} "
            f"flags={flags} | {self.reason}"
        )


def _short(array, n=4):
    array = np.asarray(array)
    if array.ndim == 0:
        return f"{array.item():.6g}"
    flat = array.ravel()
    text = " ".join(f"{v:.4g}" for v in flat[:n])
    return f"[{text}{' ...' if flat.size > n else ''}]"


class RecordBuilder:
    """Turns one traced call into a host callback that makes a record.

    Reads only the layer's public surface (`name`, `epsilon`, `debug`, the
    moving statistics, `debug_hooks`); its never-updated check (shared with
    the layer's seed warning, so the warning comes once) is passed in.
    """

    def __init__(self, layer, never_updated):
        self.layer = layer
        self.never_updated = never_updated
        self.warned_no_callbacks = False

    # Emitting ----------------------------------------------------------------

    def emit(self, decision, training, mean, variance, batch, updated):
        """Adds a host callback that builds a record each time this runs."""
        # A staged callback runs later, maybe on a backend's thread: note the
        # user's line now. (Inline, the record's warning finds it itself; a
        # stack walk on every eager call would cost ~0.1 ms.)
        if backend_ops.stages_callbacks():
            self.never_updated.note_caller()
        ok, why_not = backend_ops.callbacks_supported()
        if not ok and not step_callbacks.returns_with_step():
            if not self.warned_no_callbacks:
                self.warned_no_callbacks = True
                message = (
                    f"keras_bn_ext: no debug records from layer "
                    f"{self.layer.name!r} here: {why_not}. Compile with "
                    "jit_compile=False, or call "
                    "keras_bn_ext.debug.retrace(model) (debug.capture(model) "
                    "does it for you) before fit/evaluate/predict."
                )
                warn_at_user(message, RuntimeWarning)
                logger.warning(message)
            return
        layer = self.layer
        dtype = mean.dtype
        if updated is None:
            updated = {
                "moving_mean": ops.cast(layer.moving_mean, dtype),
                "moving_variance": ops.cast(layer.moving_variance, dtype),
                "updated": ops.convert_to_tensor(False),
            }
        payload = {
            "mean": mean,
            "variance": variance,
            "moving_mean": updated["moving_mean"],
            "moving_variance": updated["moving_variance"],
            "updated": updated["updated"],
        }
        if batch is not None:
            payload["count"] = ops.cast(batch.count, "float32")
        if layer.num_batches_tracked is not None:
            payload["num_batches_tracked"] = ops.convert_to_tensor(
                layer.num_batches_tracked
            )
        replica = backend_ops.replica_id()
        if replica is not None:
            payload["replica"] = ops.convert_to_tensor(replica, "int32")
        static = dict(
            layer=layer.name,
            branch=str(decision.branch),
            reason=decision.reason,
            training=training if isinstance(training, (bool, type(None))) else bool(training),
            wants_update=decision.update,
            # Virtual batches: counts per virtual batch and channel.
            ghost=batch is not None and getattr(batch, "group_sizes", None) is not None,
        )
        step_callbacks.host_callback(functools.partial(self.on_host, static), payload)

    def on_host(self, static, mean, variance, moving_mean, moving_variance,
                updated, count=None, num_batches_tracked=None, replica=None):
        # Runs for every record of every step: array methods, not np.all()
        # and friends (each a few microseconds of dispatch).
        layer = self.layer
        mean, variance = np.asarray(mean), np.asarray(variance)
        flags = []
        if static["branch"] == "moving" and self.never_updated(
            moving_mean, moving_variance, num_batches_tracked
        ):
            flags.append("never_updated")
        if count is not None:
            count = np.asarray(count)
            if count.ndim == 0:  # no mask: one count for every channel
                count = int(count)
                if not count:
                    flags.append("empty_batch")
            else:
                if not count.any():
                    flags.append("empty_batch")
                elif not count.all():
                    flags.append("empty_channel")
                if static["ghost"] and (count == count.flat[0]).all():
                    # Every virtual batch counted the same (TensorFlow's
                    # None batch pads and masks even when it divides): one
                    # number, as on the other backends.
                    count = count.flat[0]
                count = int(count) if count.ndim == 0 else count.astype(int)
            if not (np.isfinite(mean).all() and np.isfinite(variance).all()):
                flags.append("nonfinite")
        if (variance < layer.epsilon).any():
            flags.append("tiny_variance")
        updated = bool(updated)
        if static["wants_update"] and not updated:
            flags.append("update_skipped")
        record = StatsRecord(
            layer=static["layer"],
            branch=static["branch"],
            reason=static["reason"],
            training=static["training"],
            mean=mean,
            variance=variance,
            moving_mean=np.asarray(moving_mean),
            moving_variance=np.asarray(moving_variance),
            updated=updated,
            count=count,
            flags=tuple(flags),
            backend=_BACKEND,
            index=next(_record_index),
            num_batches_tracked=None if num_batches_tracked is None
            else int(num_batches_tracked),
            replica=None if replica is None else int(replica),
        )
        if layer.debug:
            logger.info("%s", record)
        if "never_updated" in flags:
            self.never_updated.warn()
        registry.dispatch(record, layer.debug_hooks)

"""Were a BatchNormalization layer's moving statistics ever updated?

One answer for the layer's warning, its records, `explain()` and `report()`,
for this package's layer and Keras's alike (public attributes only): an
update counter says it exactly; otherwise the statistics are compared with
what a constant initializer gave (a random initializer leaves no trace).
"""

import functools
from typing import Any

import numpy as np
from keras import initializers
from keras import ops

from keras_bn_ext import backend as backend_ops
from keras_bn_ext._typing import Tensor
from keras_bn_ext.debug.stack import Location
from keras_bn_ext.debug.stack import user_location
from keras_bn_ext.debug.stack import warn_at_user


class NeverUpdatedWarning(UserWarning):
    """Inference ran on moving statistics that were never updated.

    Given once per layer, pointing at the user's line that ran the inference
    (a direct call, `predict()`, `evaluate()`, `predict_on_batch()`,
    `test_on_batch()`). To silence it:
    `warnings.filterwarnings("ignore", category=keras_bn_ext.NeverUpdatedWarning)`.
    """


def constant_initializer_value(initializer, shape):
    """The values a deterministic initializer gives (NumPy, so it works while
    tracing too), else None."""
    if isinstance(initializer, initializers.Zeros):
        return np.zeros(shape, "float32")
    if isinstance(initializer, initializers.Ones):
        return np.ones(shape, "float32")
    if isinstance(initializer, initializers.Constant):
        value = initializer.get_config()["value"]
        return np.broadcast_to(np.asarray(value, "float32"), shape).copy()
    return None


def initial_statistics(layer, shape):
    """`(mean, variance)` the layer's initializers give, each None if unknown."""
    return (
        constant_initializer_value(layer.moving_mean_initializer, shape),
        constant_initializer_value(layer.moving_variance_initializer, shape),
    )


def never_updated(
    layer: Any,
    moving_mean: Tensor,
    moving_variance: Tensor,
    num_batches_tracked: Tensor = None,
) -> bool:
    """Whether the given moving statistics are still their initial values."""
    return NeverUpdatedCheck(layer)(moving_mean, moving_variance, num_batches_tracked)


class NeverUpdatedCheck:
    """One layer's check, its initial values computed once, and its
    `NeverUpdatedWarning`, given at most once (the layer's seed warning and
    its records share it)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.warned = False
        # The user's line that last traced the layer, for a warning given
        # later from a backend's callback thread (no user frame there).
        self.caller: Location | None = None

    @functools.cached_property
    def initial(self):
        return initial_statistics(self.layer, tuple(self.layer.moving_mean.shape))

    def __call__(self, moving_mean, moving_variance, num_batches_tracked=None):
        """`never_updated` for these values (NumPy) of the statistics."""
        if num_batches_tracked is not None:
            return int(num_batches_tracked) == 0
        if moving_mean is None or moving_variance is None:
            return False
        init_mean, init_var = self.initial
        if init_mean is None or init_var is None:
            return False
        return bool(
            np.array_equal(np.asarray(moving_mean, "float32"), init_mean)
            and np.array_equal(np.asarray(moving_variance, "float32"), init_var)
        )

    def now(self):
        """True/False from the variables' host values; None if unreadable."""
        return self._from(backend_ops.host_value)

    def stored(self):
        """Like `now()`, from the values stored on the variables even where a
        stateless scope traces others (Keras's JAX predict_on_batch, a user's
        jit loop): a hint about the traced values, not them. None where the
        trainer purged them (JAX predict/evaluate) or where nothing else is
        stored."""
        return self._from(backend_ops.stored_value)

    def _from(self, read):
        """The check on the values `read(variable)` gives; None if any is."""
        layer = self.layer
        counter = None
        if layer.num_batches_tracked is not None:
            counter = read(layer.num_batches_tracked)
            if counter is None:
                return None
        moving_mean = read(layer.moving_mean)
        moving_variance = read(layer.moving_variance)
        if moving_mean is None or moving_variance is None:
            return None
        return self(moving_mean, moving_variance, counter)

    def on_device(self):
        """A traced boolean: the moving statistics hold their initial values
        (None where a random initializer leaves nothing to compare with).
        Call it while tracing, on the user's thread: the warning it leads to
        may come from a backend's callback thread, with no user frame."""
        self.note_caller()
        layer = self.layer
        if layer.num_batches_tracked is not None:
            return ops.equal(layer.num_batches_tracked, 0)
        init_mean, init_var = self.initial
        if init_mean is None or init_var is None:
            return None
        return ops.logical_and(
            ops.all(ops.equal(layer.moving_mean, init_mean)),
            ops.all(ops.equal(layer.moving_variance, init_var)),
        )

    def note_caller(self):
        """Remembers where the user's code is now (call it while tracing)."""
        self.caller = user_location() or self.caller

    def warn(self):
        """Warns once, pointing at the user's line (see `debug.stack`)."""
        if not self.warned:
            self.warned = True
            warn_at_user(self.message(), NeverUpdatedWarning, self.caller)

    def message(self):
        layer = self.layer
        if layer.mode == "moving":
            advice = (
                "mode='moving' never updates them: load or assign trained "
                "statistics (e.g. set_weights), or use mode='auto'."
            )
        else:
            advice = (
                "Train with fit() (or call with training=True) first, or use "
                "mode='batch' to always normalize with the batch's statistics."
            )
        return (
            f"BatchNormalization layer {layer.name!r} normalized with its "
            "moving statistics, which were never updated (still their initial "
            "values, e.g. mean 0 and variance 1): the output is about "
            f"x / sqrt(1 + {layer.epsilon:g}), not a normalized batch. "
            "Inference (predict(), evaluate(), training=False/None) uses the "
            f"moving statistics; they change only in training mode. {advice} "
            "See layer.explain()."
        )

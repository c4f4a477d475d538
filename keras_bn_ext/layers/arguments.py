"""Argument and mask checks for `BatchNormalization`: each error names the
argument and the value received (`Received: axis=5`).

Each `check_*` function returns the value to store (e.g. `int(axis)`) or
raises a `ValueError`; `keras_bn_ext.layers.options` says which one checks
each extension option.
"""

import math
import numbers

from keras import ops

from keras_bn_ext.branching import decide_branch

RENORM_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def check_axis(axis):
    """An int or a non-empty list of ints (a tuple becomes a list)."""
    if isinstance(axis, (list, tuple)):
        if not axis or not all(_is_int(a) for a in axis):
            raise ValueError(
                "`axis` must be an int or a non-empty list of ints. "
                f"Received: axis={axis!r}"
            )
        return [int(a) for a in axis]
    if not _is_int(axis):
        raise ValueError(
            f"`axis` must be an int or a list of ints. Received: axis={axis!r}"
        )
    return int(axis)


def resolve_axes(axis, ndim):
    """Non-negative, sorted channel axes for inputs of rank `ndim`."""
    axes = [axis] if isinstance(axis, int) else list(axis)
    resolved = []
    for a in axes:
        if a >= ndim or a < -ndim:
            raise ValueError(
                f"Axis {a} is out of bounds for inputs of rank {ndim}. "
                f"Received: axis={axis}"
            )
        resolved.append(a % ndim)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"`axis` contains a repeated axis. Received: axis={axis}")
    return sorted(resolved)


def check_momentum(value, name, allow_none=False):
    """A momentum in [0, 1] as a float (`None` too when `allow_none`)."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 <= float(value) <= 1.0
    ):
        extra = " or None (cumulative average)" if allow_none else ""
        raise ValueError(
            f"`{name}` must be a number in [0, 1]{extra}. Received: {name}={value!r}"
        )
    return float(value)


def check_epsilon(value):
    """A finite epsilon > 0 as a float."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not float(value) > 0.0
        or not math.isfinite(float(value))
    ):
        raise ValueError(
            f"`epsilon` must be a finite number > 0. Received: epsilon={value!r}"
        )
    return float(value)


def check_renorm_clipping(renorm, clipping):
    """The `renorm_clipping` dict (unchecked, as Keras, when `renorm` is off)."""
    if not renorm:
        return clipping
    clipping = dict(clipping or {})
    unknown = set(clipping) - set(RENORM_CLIPPING_KEYS)
    if unknown:
        raise ValueError(
            "Received invalid keys for `renorm_clipping` argument: "
            f"{sorted(unknown)}. Supported values: {list(RENORM_CLIPPING_KEYS)}. "
            f"Received: renorm_clipping={clipping}"
        )
    rmax, rmin, dmax = (clipping.get(k) for k in RENORM_CLIPPING_KEYS)
    if rmax is not None and rmin is not None and rmax < rmin:
        raise ValueError(
            "rmax should be greater than rmin in the `renorm_clipping` "
            f"argument. Received: rmax={rmax}, rmin={rmin}"
        )
    if dmax is not None and dmax < 0:
        raise ValueError(
            "dmax should be non-negative in the `renorm_clipping` argument. "
            f"Received: dmax={dmax}"
        )
    return clipping


def check_mode(mode):
    """One of `branching.MODES`.

    The branch rule checks its `mode` (it is public); asking it here keeps
    that check the only one, and the layer's error the same as the rule's.
    """
    decide_branch(None, True, mode)
    return mode


def check_virtual_batch_size(value):
    """A positive int, or None (no virtual batches)."""
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(
            "`virtual_batch_size` must be a positive int or None. "
            f"Received: virtual_batch_size={value!r}"
        )
    return int(value)


def check_virtual_batch_grouping(value):
    """`"contiguous"` or `"strided"` (see `keras_bn_ext.layers.ghost`)."""
    if value not in ("contiguous", "strided"):
        raise ValueError(
            "`virtual_batch_grouping` must be 'contiguous' or 'strided'. "
            f"Received: virtual_batch_grouping={value!r}"
        )
    return value


def check_combinations(layer):
    """Options that contradict each other get an error naming both."""
    if layer.renorm and layer.mode != "auto":
        raise ValueError(
            "Batch Renormalization corrects the batch statistics during "
            "training, so it needs mode='auto'. Received: renorm=True, "
            f"mode={layer.mode!r}"
        )
    if layer.renorm and (layer.momentum is None or layer.debias):
        raise ValueError(
            "Batch Renormalization keeps Keras's moving stddev average; it "
            "cannot be combined with a cumulative or debiased average. "
            f"Received: renorm=True, momentum={layer.momentum}, "
            f"debias={layer.debias}"
        )
    if layer.debias and layer.momentum is None:
        raise ValueError(
            "A cumulative average (momentum=None) is already unbiased. "
            "Received: debias=True, momentum=None"
        )
    if layer.synchronized and layer.virtual_batch_size:
        raise ValueError(
            "Virtual batches are per replica. Received: synchronized=True, "
            f"virtual_batch_size={layer.virtual_batch_size}"
        )
    if layer.mode == "moving" and layer.virtual_batch_size:
        raise ValueError(
            "mode='moving' never computes batch statistics, so virtual "
            "batches would change nothing. Received: mode='moving', "
            f"virtual_batch_size={layer.virtual_batch_size}"
        )
    if layer.mode == "moving" and layer.debias:
        raise ValueError(
            "mode='moving' never updates the moving statistics, so there is "
            "nothing to debias. Received: mode='moving', debias=True"
        )


def standardize_mask(mask, x, axis, channel_axes=None):
    """A boolean mask broadcastable to `x`, or None when `mask` is None.

    Accepted masks: the shape of `x` without its channel axes (the natural
    mask for any `axis`), Keras's convention `x.shape[:-1]` (one channel
    axis), or the rank of `x`; each broadcastable.

    Args:
        mask: a mask tensor (any dtype; nonzero counts) or None.
        x: the inputs.
        axis: the layer's `axis` argument (named in the error).
        channel_axes: `resolve_axes(axis, len(x.shape))`, if already known.
    """
    if mask is None:
        return None
    ndim = len(x.shape)
    if channel_axes is None:
        channel_axes = resolve_axes(axis, ndim)
    mask_shape = tuple(mask.shape)
    candidates = []
    if len(mask_shape) == ndim:
        candidates.append(mask_shape)
    elif len(mask_shape) == ndim - len(channel_axes):
        # The natural mask: inputs' shape without the channel axes.
        natural = list(mask_shape)
        for a in channel_axes:
            natural.insert(a, 1)
        candidates.append(tuple(natural))
        if len(channel_axes) == 1:
            # Keras's convention: the mask covers inputs.shape[:-1].
            candidates.append(mask_shape + (1,))
    for shape in candidates:
        if _broadcastable(shape, x.shape):
            return ops.reshape(ops.cast(mask, "bool"), shape)
    raise ValueError(
        "The mask must be broadcastable to the inputs without their "
        f"channel axis (axis={axis}), or have the inputs' rank. "
        f"Received: mask.shape={mask_shape}, inputs.shape={tuple(x.shape)}"
    )


def _broadcastable(shape, target):
    """Whether a static `shape` broadcasts to `target` (None: unknown, ok)."""
    if len(shape) != len(target):
        return False
    for s, t in zip(shape, target):
        if s is None or t is None or s == 1 or s == t:
            continue
        return False
    return True


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)

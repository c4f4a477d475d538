"""Statistics math on `keras.ops`: moments (shifted, masked, ghost, synced),
moving-average weights, and Batch Renormalization corrections.

Everything here is a pure function of tensors; the layer owns the variables.
"""

import math
from typing import NamedTuple

import keras
from keras import ops

from keras_bn_ext import backend as backend_ops


class BatchStatistics(NamedTuple):
    """Per-channel statistics of one batch.

    `mean` and `variance` have the parameter shape (e.g. `(C,)`), or
    `(G, C)` for `G` virtual (ghost) batches. `count` is the number of
    elements reduced per channel (a scalar tensor, or per channel with a
    mask). `valid` says, per channel, whether the statistics may update the
    moving averages (non-empty and, when checked, finite).
    """

    mean: object
    variance: object
    count: object
    valid: object


def reduced_count(x, axes):
    """Number of elements per channel: the product of the reduced dims."""
    count = 1
    shape = ops.shape(x)
    for a in axes:
        count = count * shape[a]
    return ops.cast(count, x.dtype)


def _static_count(x, axes):
    """Elements per channel if known at trace time, else None."""
    dims = [x.shape[a] for a in axes]
    return None if None in dims else math.prod(dims)


def _first_element(x, axes):
    """The first element of each channel (0 for an empty batch).

    Slicing 0:1 never fails on an empty dimension, and a sum over at most one
    element is exact, so this is a cheap, data-dependent shift.
    """
    index = tuple(slice(0, 1) if i in axes else slice(None) for i in range(len(x.shape)))
    return ops.sum(x[index], axis=axes, keepdims=True)


def unmasked_moments(x, axes):
    """Mean and biased variance over `axes`, keepdims, numerically stable.

    Shifted two-pass: with `s` one element of each channel, the mean is
    `s + E[x - s]` (no large-magnitude sums) and the variance is
    `E[(x - s - E[x - s])^2]` (no cancellation, unlike E[x^2] - E[x]^2,
    which goes negative in float32 for |mean| >> std).
    """
    native = backend_ops.moments(x, axes)
    if native is not None:
        return native
    shift = ops.stop_gradient(_first_element(x, axes))
    dtype = backend_ops.accumulator_dtype(
        keras.backend.standardize_dtype(x.dtype), _static_count(x, axes)
    )
    centered = ops.cast(x - shift, dtype)
    count = ops.maximum(ops.cast(reduced_count(x, axes), dtype), 1.0)
    mean_centered = ops.sum(centered, axis=axes, keepdims=True) / count
    variance = (
        ops.sum(ops.square(centered - mean_centered), axis=axes, keepdims=True)
        / count
    )
    return shift + ops.cast(mean_centered, x.dtype), ops.cast(variance, x.dtype)


def masked_moments(x, mask, axes):
    """Exact masked mean and variance (two passes), safe when all masked.

    `mask` is boolean and broadcastable to `x`. Channels with no unmasked
    element get mean 0, variance 0 and count 0.
    """
    mask = ops.broadcast_to(mask, ops.shape(x))
    weights = ops.cast(mask, x.dtype)
    count = ops.sum(weights, axis=axes, keepdims=True)
    safe_count = ops.maximum(count, 1.0)
    # where(), not x * weights, so that a NaN/inf at a masked position stays out.
    mean = ops.sum(ops.where(mask, x, 0.0), axis=axes, keepdims=True) / safe_count
    centered = ops.where(mask, x - mean, 0.0)
    variance = ops.sum(ops.square(centered), axis=axes, keepdims=True) / safe_count
    return mean, variance, count


def synchronized_moments(x, mask, axes):
    """Moments over the global batch across replicas: two exact rounds."""
    weights = ops.ones_like(x) if mask is None else ops.cast(
        ops.broadcast_to(mask, ops.shape(x)), x.dtype
    )
    masked_x = x if mask is None else ops.where(ops.cast(weights, "bool"), x, 0.0)
    count, total = backend_ops.all_reduce_sum(
        [
            ops.sum(weights, axis=axes, keepdims=True),
            ops.sum(masked_x, axis=axes, keepdims=True),
        ]
    )
    safe_count = ops.maximum(count, 1.0)
    mean = total / safe_count
    (squares,) = backend_ops.all_reduce_sum(
        [ops.sum(weights * ops.square(masked_x - mean), axis=axes, keepdims=True)]
    )
    return mean, squares / safe_count, count


def batch_statistics(x, axes, param_shape, mask=None, synchronized=False,
                     check_finite=True):
    """`BatchStatistics` of `x` reduced over `axes`.

    Returns the statistics in `param_shape`, the count and the validity.
    """
    if synchronized:
        mean, variance, count = synchronized_moments(x, mask, axes)
        count = ops.reshape(count, param_shape)
    elif mask is not None:
        mean, variance, count = masked_moments(x, mask, axes)
        count = ops.reshape(count, param_shape)
    else:
        mean, variance = unmasked_moments(x, axes)
        count = reduced_count(x, axes)
    mean = ops.reshape(mean, param_shape)
    variance = ops.reshape(variance, param_shape)
    return BatchStatistics(
        mean, variance, count, _validity(count, mean, variance, check_finite)
    )


def fused_batch_statistics(x, axes, param_shape, gamma, beta, epsilon,
                           check_finite=True):
    """Outputs and `BatchStatistics` from the backend's native training
    kernel (one channel axis), or None where there is none."""
    if len(param_shape) != 1 or len(axes) != len(x.shape) - 1:
        return None
    (axis,) = [i for i in range(len(x.shape)) if i not in axes]
    fused = backend_ops.fused_batch_norm_training(x, axis, gamma, beta, epsilon)
    if fused is None:
        return None
    outputs, mean, variance = fused
    count = reduced_count(x, axes)
    return outputs, BatchStatistics(
        mean, variance, count, _validity(count, mean, variance, check_finite)
    )


def ghost_statistics(x, axes, param_shape, virtual_batch_size, mask=None,
                     check_finite=True):
    """Statistics per virtual batch of `virtual_batch_size` samples.

    `x` is split along axis 0 into `G` groups; returns `BatchStatistics`
    whose mean and variance have shape `(G,) + param_shape`, with counts and
    validity per group, and the grouped input (shape `(G, k, ...)`), so the
    caller can normalize each group with its own statistics.
    """
    k = virtual_batch_size
    grouped_shape = (-1, k) + tuple(ops.shape(x)[1:])
    grouped = ops.reshape(x, grouped_shape)
    group_axes = [1] + [a + 1 for a in axes if a != 0]
    group_param_shape = (-1,) + tuple(param_shape)
    if mask is not None:
        mask = ops.reshape(ops.broadcast_to(mask, ops.shape(x)), grouped_shape)
        mean, variance, count = masked_moments(grouped, mask, group_axes)
        count = ops.reshape(count, group_param_shape)
    else:
        mean, variance = unmasked_moments(grouped, group_axes)
        count = reduced_count(grouped, group_axes)
    mean = ops.reshape(mean, group_param_shape)
    variance = ops.reshape(variance, group_param_shape)
    valid = ops.broadcast_to(
        _validity(count, mean, variance, check_finite), ops.shape(mean)
    )
    return BatchStatistics(mean, variance, count, valid), grouped


def _validity(count, mean, variance, check_finite):
    """Per channel: non-empty and, when checked, the whole batch finite (one
    non-finite channel means a bad batch, so no channel updates)."""
    valid = count > 0
    if check_finite:
        finite = ops.logical_and(
            ops.all(ops.isfinite(mean)), ops.all(ops.isfinite(variance))
        )
        valid = ops.logical_and(valid, finite)
    return valid


def update_weight(momentum, debias, step):
    """Weight `w` of the new batch in `moving = moving + w * (batch - moving)`.

    - momentum (Keras convention: the weight of the old value): `w = 1 - m`.
    - momentum=None: cumulative average, `w = 1 / t` (t = this update's index).
    - debias: `w = (1 - m) / (1 - m^t)`, which keeps the moving average
      exactly equal to `(m_t - m^t m_0) / (1 - m^t)` for any initial `m_0`.

    `step` is the 1-based index of this update (a float tensor), used only
    by the cumulative and debiased forms.
    """
    if momentum is None:
        return 1.0 / step
    if debias:
        return (1.0 - momentum) / (1.0 - ops.power(momentum, step))
    return None  # the plain Keras form, with Python-float momentum


def moving_average(old, new, momentum, weight=None):
    """Keras's `old * m + new * (1 - m)`, or the weighted form."""
    if weight is None:
        return old * momentum + new * (1.0 - momentum)
    return old + (new - old) * weight


def renorm_corrections(mean, variance, renorm_mean, renorm_stddev, epsilon,
                       clipping):
    """Batch Renormalization's `r` and `d` (Ioffe, 2017), as Keras 3.15."""
    stddev = ops.sqrt(variance + epsilon)
    # Avoid dividing by zero early in training.
    renorm_stddev = ops.maximum(renorm_stddev, math.sqrt(epsilon))
    r = stddev / renorm_stddev
    d = (mean - renorm_mean) / renorm_stddev
    clipping = clipping or {}
    if clipping.get("rmin") is not None:
        r = ops.maximum(r, clipping["rmin"])
    if clipping.get("rmax") is not None:
        r = ops.minimum(r, clipping["rmax"])
    if clipping.get("dmax") is not None:
        d = ops.clip(d, -clipping["dmax"], clipping["dmax"])
    return ops.stop_gradient(r), ops.stop_gradient(d)


def scale_and_offset(mean, variance, gamma, beta, epsilon):
    """Folds normalization into one per-channel scale and offset.

    `y = (x - mean) / sqrt(var + eps) * gamma + beta = x * scale + offset`,
    so the full-size tensor is touched by one multiply-add.
    """
    scale = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        scale = scale * gamma
    offset = -mean * scale
    if beta is not None:
        offset = offset + beta
    return scale, offset

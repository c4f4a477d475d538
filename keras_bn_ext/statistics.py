"""Statistics math on `keras.ops`: one moments function (shifted, masked,
cross-replica), the training kernel with its hand-written gradient, the
moving-average weights and Batch Renormalization's corrections.

Everything here is a pure function of tensors; the layer owns the variables.
"""

import functools
import math
from typing import NamedTuple

from keras import ops

from keras_bn_ext import backend as backend_ops


class Moments(NamedTuple):
    """Per-channel moments over the reduced axes, each with `keepdims`.

    The mean is kept as `shift + offset`: `shift` is a value near the data
    (no gradient) and `offset = E[x - shift]` is small, so for |mean| >> std
    neither the mean nor `(x - shift) - offset` loses digits to rounding.
    `count` is the number of elements reduced per channel: a scalar without
    a mask, per channel with one.
    """

    shift: object
    offset: object
    variance: object
    count: object

    @property
    def mean(self):
        return self.shift + self.offset


class BatchStatistics(NamedTuple):
    """One batch's statistics in the parameter shape (e.g. `(C,)`, or
    `(G, C)` for `G` virtual batches), for the moving update and the debug
    records. `valid` says, per channel, whether they may update the moving
    averages (non-empty and, when checked, finite). `group_sizes`: for
    virtual batches, the `(G,)` samples in each (None when all hold the
    same number).
    """

    mean: object
    variance: object
    count: object
    valid: object
    group_sizes: object = None


def _no_reduce(tensors):
    return tensors


def moments(x, axes, mask=None, reduce=None):
    """Mean and biased variance of `x` over `axes`: exact, stable, masked.

    Shifted two-pass: with `s` a value near each channel's data, the mean is
    `s + E[x - s]` and the variance `E[((x - s) - E[x - s])^2]`: no
    large-magnitude sums and no cancellation (unlike `E[x^2] - E[x]^2`).

    Args:
        x: float tensor.
        axes: the axes to reduce (a list of ints).
        mask: optional boolean tensor broadcastable to `x`, `True` where an
            element counts. A channel with no element gets mean 0, variance 0
            and count 0; values at masked positions (even NaN) never enter.
        reduce: optional cross-replica sum, `reduce(list_of_tensors)` ->
            list of sums over replicas (for synchronized statistics). The
            replicas first agree on a shared shift, then sum exact counts,
            centered sums and squared deviations: no precision is lost,
            whatever the replica count or local batch sizes.

    Returns:
        `Moments` with `keepdims` shapes.
    """
    reduce = reduce or _no_reduce
    if mask is None:
        valid = None
        count = reduced_count(x, axes)
        local_shift = first_element(x, axes)
    else:
        valid = mask  # broadcasts against x where it is used
        count = masked_count(mask, x, axes)
        local_shift = _sum(_where(valid, x), axes) / _at_least_one(count)
    shift = ops.stop_gradient(local_shift)
    if reduce is not _no_reduce:
        # The replicas holding data agree on one shift: the mean of theirs.
        has_data = ops.cast(count > 0, x.dtype) * ops.ones_like(shift)
        total, holders = reduce([shift * has_data, has_data])
        shift = ops.stop_gradient(total / _at_least_one(holders))
    count, centered_sum = reduce(
        [count, _sum(_where(valid, x - _distinct(shift, 2.0)), axes)]
    )
    safe_count = _at_least_one(count)
    # The mean as `head + tail`, exactly `shift + E[x - shift]`: `head` is the
    # float nearest to it and `tail` the rounding error (Fast2Sum).
    offset = centered_sum / safe_count
    head = shift + offset
    tail = offset - (head - shift)
    # E[(x - head)^2] = var + tail^2, with |tail| <= half an ulp of the mean:
    # no cancellation, and each reduction subtracts one per-channel vector,
    # which XLA fuses into a single read of `x`. d(variance)/d(head) is
    # exactly 0, so autodiff need not go through it: a reduction less.
    head, tail = ops.stop_gradient(head), ops.stop_gradient(tail)
    deviations = x - _distinct(head, 0.0)
    (squares,) = reduce([_sum(ops.square(_where(valid, deviations)), axes)])
    variance = ops.relu(squares / safe_count - ops.square(tail))
    # Gradients reach the mean through `offset`; its value is head + tail.
    tail = tail + (offset - ops.stop_gradient(offset))
    return Moments(head, tail, variance, count)


def centered(x, m):
    """`(x - shift) - offset`, in that order: exact for |mean| >> std."""
    return (x - m.shift) - m.offset


def batch_statistics(m, param_shape, check_finite=True):
    """`BatchStatistics` (parameter shape) from keepdims `Moments`."""
    mean = backend_ops.reshape(m.mean, param_shape)
    variance = backend_ops.reshape(m.variance, param_shape)
    count = m.count
    if len(count.shape):
        count = backend_ops.reshape(count, param_shape)
    valid = _validity(count, mean, variance, check_finite)
    return BatchStatistics(
        mean, variance, count, ops.broadcast_to(valid, ops.shape(mean))
    )


def normalize_batch(x, m, gamma, beta, epsilon):
    """`((x - shift) - offset) / sqrt(var + eps) * gamma + beta`.

    Subtracting the shift first keeps the output exact for |mean| >> std,
    where `x * scale + offset` loses it (1% of the std at mean 1e6). `gamma`
    and `beta` broadcast like the moments (or are None).
    """
    return _scale_and_shift(centered(x, m), m.variance, gamma, beta, epsilon)


def normalize_moving(x, mean, variance, gamma, beta, epsilon):
    """Inference: `(x - mean) * (gamma / sqrt(var + eps)) + beta`, one pass;
    subtracting the mean first keeps it exact for |mean| >> std."""
    return _scale_and_shift(x - mean, variance, gamma, beta, epsilon)


def _scale_and_shift(centered_x, variance, gamma, beta, epsilon):
    scale = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        scale = scale * gamma
    if beta is None:
        return centered_x * scale
    return backend_ops.multiply_add(centered_x, scale, beta)


def batch_norm(x, axes, gamma, beta, epsilon, mask=None, reduce=None):
    """Training kernel: `(outputs, Moments)`, `x` normalized with its own
    moments over `axes` (see `moments` for `mask` and `reduce`), with a
    hand-written gradient.

    Autodiff of the forward formula reads and writes the full-size tensor
    about 17 times under XLA; this gradient needs 10 passes in all: forward
    2 reductions and the normalization, backward 2 reductions and `dx`.
    With `xc = (x - shift) - offset`, `inv = 1 / sqrt(var + eps)` and `w`
    the mask (1 without one):

        dbeta  = sum(dy)
        dgamma = inv * sum(dy * xc)
        dx     = gamma * inv * dy
                 + w * (- gamma * inv^3 * xc * sum(dy * xc)
                        - gamma * inv * sum(dy)
                        + d mean + 2 * xc * d var) / n

    where `d mean`, `d var` are the cotangents of the returned mean and
    variance, and the sums run over the global batch under `reduce`.
    `gamma` and `beta` are tensors broadcastable to `x` (never None: pass
    ones/zeros), and get gradients in their own shapes. Where torch's
    native kernel runs (unmasked, local), the returned statistics carry no
    gradient; the layer uses them only for the moving update.
    """
    if mask is None and reduce is None:
        native = backend_ops.native_batch_norm(x, axes, gamma, beta, epsilon)
        if native is not None:
            y, mean, variance = native
            count = reduced_count(x, axes)
            return y, Moments(mean, ops.zeros_like(mean), variance, count)
    reduce = reduce or _no_reduce
    kernel = backend_ops.custom_vjp(
        functools.partial(_kernel_forward, axes, epsilon, reduce),
        functools.partial(_kernel_backward, axes, reduce),
    )
    args = (x, gamma, beta) + (() if mask is None else (mask,))
    y, mean, variance, count = kernel(*args)
    # The kernels return the mean whole (as its own shift, offset 0): the
    # outputs are already normalized, so the split is no longer needed.
    return y, Moments(mean, ops.zeros_like(mean), variance, count)


def _kernel_forward(axes, epsilon, reduce, x, gamma, beta, *mask):
    """`batch_norm`'s forward: outputs and statistics, and the residuals."""
    m = moments(x, axes, *mask, reduce=reduce)
    y = normalize_batch(x, m, gamma, beta, epsilon)
    inv = ops.rsqrt(m.variance + epsilon)
    residuals = (x, m.shift, m.offset, inv, m.count, gamma) + mask
    return (y, m.mean, m.variance, m.count), residuals


def _kernel_backward(axes, reduce, residuals, cotangents):
    """`batch_norm`'s gradient (see its docstring for the formulas)."""
    x, shift, offset, inv, count, gamma, *mask = residuals
    dy, dmean, dvar, _ = cotangents
    sum_dy = _sum(dy, axes)
    sum_dy_x = _sum(dy * (x - _distinct(shift, 1.0)), axes)
    sum_dy, sum_dy_x = reduce([sum_dy, sum_dy_x])
    sum_dy_xc = sum_dy_x - offset * sum_dy
    a = gamma * inv
    n = _at_least_one(count)
    b = (2.0 * dvar - a * inv * inv * sum_dy_xc) / n
    c = (dmean - a * sum_dy) / n
    through_statistics = ((x - shift) - offset) * b + c
    dx = a * dy + _where(mask[0] if mask else None, through_statistics)
    dgamma = _sum_to_shape(inv * sum_dy_xc, gamma.shape)
    dbeta = _sum_to_shape(sum_dy, gamma.shape)
    return (dx, dgamma, dbeta) + (None,) * len(mask)


def _distinct(vector, tag):
    """`vector` (per channel), in a form XLA can neither prove equal to
    another use of it nor fuse into a full-size loop.

    XLA CPU hands a reduction to a fast library kernel only when the reduced
    operand reads `x` and small per-channel operands directly. If two
    reductions share `x - vector`, or the vector's own computation is fused
    into that subtraction, XLA writes `x - vector` to memory first: two more
    full-size passes. A select on finiteness does neither (a distinct `tag`
    per use); a non-finite vector makes the batch non-finite anyway.
    """
    # `tag` a Python float: full_like() would read it back from the device
    # (a host sync on torch).
    return ops.where(ops.isfinite(vector), vector, tag)


def _at_least_one(count):
    # A tensor bound, not a Python float: Keras on torch would promote the
    # result to float32, losing float64 statistics.
    return ops.maximum(count, ops.ones_like(count))


def _where(valid, x):
    # where(), not x * weights, so that a NaN/inf at a masked position stays
    # out. A scalar zero: no full-size tensor of zeros to fill and read.
    return x if valid is None else ops.where(valid, x, 0.0)


def _sum(x, axes):
    return backend_ops.channel_sum(x, axes)


def _sum_to_shape(x, shape):
    """Sums the axes where `shape` is 1 and `x` is not (undoes broadcasting)."""
    axes = [i for i, d in enumerate(shape) if d == 1 and x.shape[i] != 1]
    return ops.sum(x, axis=axes, keepdims=True) if axes else x


def reduced_count(x, axes):
    """Number of elements per channel: the product of the reduced dims."""
    count = 1
    shape = ops.shape(x)
    for a in axes:
        count = count * shape[a]
    return ops.cast(count, x.dtype)


def masked_count(mask, x, axes):
    """Elements of `x` per channel where `mask` (broadcastable to `x`) is
    true (keepdims). Counted on the mask itself, usually without the
    channel axis: no full-size copy of it is made and read."""
    count = ops.sum(ops.cast(mask, x.dtype), axis=axes, keepdims=True)
    shape = ops.shape(x)
    for a in axes:
        if mask.shape[a] == 1 and x.shape[a] != 1:
            count = count * ops.cast(shape[a], x.dtype)  # broadcast along a
    keepdims = [1 if a in axes else shape[a] for a in range(len(x.shape))]
    return ops.broadcast_to(count, keepdims)


def first_element(x, axes):
    """The first element of each channel (keepdims; 0 for an empty batch).

    Slicing 0:1 never fails on an empty dimension, and a sum over at most one
    element is exact, so this is a cheap, data-dependent shift.
    """
    index = tuple(
        slice(0, 1) if i in axes else slice(None) for i in range(len(x.shape))
    )
    return ops.sum(x[index], axis=axes, keepdims=True)


def _validity(count, mean, variance, check_finite):
    """Per channel: non-empty and, when checked, the whole batch finite (one
    non-finite channel means a bad batch, so no channel updates)."""
    valid = count > 0
    if check_finite:
        # v * 0 is 0 exactly when v is finite (NaN for inf and NaN), and
        # tensor operators skip keras.ops' per-call work (~10 us on torch):
        # one keras.ops call for the whole check.
        valid = valid & ops.all(mean * 0.0 + variance * 0.0 == 0.0)
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

"""Ghost (virtual) batches: the `N` samples of a training batch split into
`G = ceil(N / k)` virtual batches of at most `k = virtual_batch_size`
samples, each normalized with its own statistics (Hoffer et al., 2017).

Two groupings (`virtual_batch_grouping`):

- `"contiguous"` (the default): virtual batch `g` holds samples
  `g*k, ..., g*k + k - 1`. When `k` does not divide `N`, the last one holds
  the `N mod k` samples left over.
- `"strided"` (tf-keras's): virtual batch `g` holds the samples `n < N` with
  `n mod G == g`: `g, g + G, g + 2G, ...`. tf-keras reshapes the batch to
  `(k, G, ...)` and reduces over the first axis; when `k` does not divide
  `N`, the batch is first padded at its end to `G*k` samples, so the padding
  takes the last places of that reshape and some virtual batches hold one
  sample less.

A batch that `k` does not divide, or whose size is unknown while tracing
(a TensorFlow graph with a `None` batch dimension), is padded with zeros up
to a multiple of `k`, and the padding is masked out: each virtual batch's
statistics are exactly those of its own samples.

The moving statistics follow the average of the virtual batches'
statistics, each weighted by its number of samples (the plain average, as
tf-keras's, when all hold `k`).
"""

from typing import NamedTuple

from keras import ops

GROUPINGS = ("contiguous", "strided")


class Groups(NamedTuple):
    """A batch grouped into virtual batches by `group`.

    Attributes:
        x: the inputs, `(G, k, ...)` (contiguous) or `(k, G, ...)` (strided).
        mask: the grouped mask (the user's, with the padding masked out), or
            None.
        axes: the reduction axes of `x` (the `k` axis and the non-channel
            axes of the inputs).
        channel_axes: the channel axes of `x`.
        group_axis: the axis of `x` that indexes the virtual batches.
        sizes: `(G,)` float tensor, the samples in each virtual batch; None
            when every one holds `k` (no padding).
        batch_size: `N`, an int or (while tracing) a scalar tensor.
    """

    x: object
    mask: object
    axes: list
    channel_axes: list
    group_axis: int
    sizes: object
    batch_size: object


def group(x, mask, k, grouping, axes, channel_axes):
    """`Groups` of `x` (`mask` broadcastable to it, or None) in virtual
    batches of `k` samples; `axes` and `channel_axes` are those of `x`."""
    contiguous = grouping == "contiguous"
    outer = (-1, k) if contiguous else (k, -1)
    group_axis, k_axis = (0, 1) if contiguous else (1, 0)
    batch_size, sizes = x.shape[0], None
    if batch_size is None or batch_size % k:
        batch_size = ops.shape(x)[0]  # a tensor while tracing a None batch
        x, mask, sample_valid = _pad_to_multiple(x, mask, k, batch_size)
        sample_valid = ops.reshape(ops.cast(sample_valid, x.dtype), outer)
        sizes = ops.sum(sample_valid, axis=k_axis)
    elif mask is not None:
        mask = ops.broadcast_to(mask, ops.shape(x))
    x = ops.reshape(x, outer + tuple(ops.shape(x)[1:]))
    if mask is not None:
        mask = ops.reshape(mask, outer + tuple(ops.shape(mask)[1:]))
    return Groups(
        x, mask, [k_axis] + [a + 1 for a in axes if a != 0],
        [a + 1 for a in channel_axes], group_axis, sizes, batch_size,
    )


def _pad_to_multiple(x, mask, k, batch_size):
    """`x` and the mask padded with zeros (masked out) to a multiple of `k`
    samples, and the `(padded N,)` boolean of the real samples."""
    padding = (k - batch_size % k) % k
    rest = tuple(ops.shape(x)[1:])
    sample_valid = ops.arange(batch_size + padding) < batch_size
    if mask is None:
        # One value per sample: broadcasts in the statistics, costs nothing.
        mask = ops.reshape(sample_valid, (-1,) + (1,) * len(rest))
    else:
        mask = ops.broadcast_to(mask, ops.shape(x))
        mask = ops.concatenate([mask, ops.zeros((padding,) + rest, "bool")], 0)
    x = ops.concatenate([x, ops.zeros((padding,) + rest, x.dtype)], axis=0)
    return x, mask, sample_valid


def ungroup(outputs, groups):
    """The grouped `outputs` back in the inputs' shape (padding dropped)."""
    outputs = ops.reshape(outputs, (-1,) + tuple(ops.shape(outputs)[2:]))
    if groups.sizes is not None:
        outputs = outputs[: groups.batch_size]
    return outputs


def average(values, sizes, axis=0, keepdims=False):
    """The average of `values` over the virtual batches (along `axis`), each
    weighted by its number of samples (`sizes`; None: equal weights)."""
    if sizes is None:
        return ops.mean(values, axis=axis, keepdims=keepdims)
    shape = [1] * len(values.shape)
    shape[axis] = -1
    weighted = ops.sum(values * ops.reshape(sizes, shape), axis=axis,
                       keepdims=keepdims)
    return weighted / ops.sum(sizes)


def whole_batch(moments, groups):
    """`(mean, variance)`: the grouped moments averaged over the virtual
    batches (keepdims), what renorm's corrections use, as in tf-keras."""
    return tuple(
        average(value, groups.sizes, groups.group_axis, keepdims=True)
        for value in (moments.mean, moments.variance)
    )


def for_update(batch):
    """`(mean, variance, count, valid)` of a ghost batch's statistics
    (`BatchStatistics` with a leading virtual batch axis) for the moving
    update: the averages over the virtual batches, the smallest count, and
    valid where every virtual batch is (and there is at least one)."""
    valid = ops.logical_and(
        ops.all(batch.valid, axis=0), ops.any(batch.valid, axis=0)
    )
    mean = average(batch.mean, batch.group_sizes)
    variance = average(batch.variance, batch.group_sizes)
    count = batch.count
    if len(count.shape):
        count = ops.min(count, axis=0)
    return mean, variance, count, valid

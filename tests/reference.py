"""BatchNormalization in float64 NumPy: the answer the numerical tests hold
the layer to.

Written to be read, not to be fast. It follows the layer's definitions:
Keras's for the common arguments and Batch Renormalization, PyTorch's for
`momentum=None` (cumulative average) and `unbiased_moving_variance`. Every
option the layer has is here, except `mode`/`trainable`, which only choose
between the two calls below, and `synchronized`, whose global batch is one
batch here.

    import reference
    result = reference.batch_norm(x, momentum=0.9)  # a training call
    result.output, result.mean, result.variance, result.count
    result.state.moving_mean, result.state.moving_variance
    reference.batch_norm(x, result.state, training=False).output  # inference
    reference.train(batches, momentum=None)[-1].state  # several steps

A call is pure: the state after it is in `result.state`, so "the layer did
not update" is checked against the state passed in.
"""

import dataclasses

import numpy as np

EPSILON = 1e-3  # Keras's default


@dataclasses.dataclass(frozen=True)
class State:
    """The layer's non-trainable weights, in float64 (the parameter shape).

    `num_batches_tracked` counts the updates whether or not the layer has the
    variable. The renorm fields are None without `renorm`.
    """

    moving_mean: np.ndarray
    moving_variance: np.ndarray
    num_batches_tracked: int = 0
    moving_stddev: np.ndarray = None
    renorm_mean: np.ndarray = None
    renorm_stddev: np.ndarray = None


@dataclasses.dataclass(frozen=True)
class Result:
    """What one call gives.

    `mean`/`variance` are the statistics that normalized: the batch's
    (`(G,) + parameter shape` for `G` virtual batches), or the moving ones at
    inference. `count` is the number of elements per channel (an int, or an
    array with a mask; None at inference). `updated`: whether any channel
    of the moving statistics changed.
    """

    output: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    count: object
    state: State
    updated: bool


def initial_state(shape, moving_mean=0.0, moving_variance=1.0, renorm=False):
    """A freshly built layer's state, for constant initializers.

    With renorm, `moving_stddev` and `renorm_stddev` start at the square root
    of the variance initializer, as in Keras.
    """
    mean = np.full(shape, moving_mean, "float64")
    variance = np.full(shape, moving_variance, "float64")
    if not renorm:
        return State(mean, variance)
    stddev = np.sqrt(variance)
    return State(mean, variance, 0, stddev, mean.copy(), stddev.copy())


def moments(x, axis=-1, mask=None):
    """Per-channel mean, biased variance and element count of `x`.

    `axis` is the channel axis, or a list of them; the others are reduced.
    `mask` (boolean, broadcastable to `x`) keeps only the elements where it
    is True; a channel with none gets mean 0, variance 0 and count 0.
    """
    x = np.asarray(x, "float64")
    axes = _channel_axes(axis, x.ndim)
    reduce = tuple(i for i in range(x.ndim) if i not in axes)
    shape = _param_shape(x, axes)
    keep = np.broadcast_to(True if mask is None else np.asarray(mask, bool), x.shape)
    count = keep.sum(axis=reduce, keepdims=True)
    safe_count = np.maximum(count, 1)
    # where(), not x * mask, so that a NaN or inf under the mask stays out.
    mean = np.where(keep, x, 0.0).sum(axis=reduce, keepdims=True) / safe_count
    squares = np.where(keep, x - mean, 0.0) ** 2
    variance = squares.sum(axis=reduce, keepdims=True) / safe_count
    if mask is None:
        count = int(np.prod([x.shape[i] for i in reduce]))
    else:
        count = count.reshape(shape)
    return mean.reshape(shape), variance.reshape(shape), count


def normalize(x, mean, variance, axis=-1, gamma=None, beta=None, epsilon=EPSILON):
    """`(x - mean) / sqrt(variance + epsilon) * gamma + beta` per channel.

    `gamma=None` is `scale=False`, `beta=None` is `center=False`; the
    statistics and weights have the parameter shape (or are scalars).
    """
    x = np.asarray(x, "float64")
    axes = _channel_axes(axis, x.ndim)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]

    def per_channel(value):
        value = np.asarray(value, "float64")
        return value.reshape(shape) if value.ndim else value

    y = (x - per_channel(mean)) / np.sqrt(per_channel(variance) + epsilon)
    if gamma is not None:
        y = y * per_channel(gamma)
    if beta is not None:
        y = y + per_channel(beta)
    return y


def batch_norm(x, state=None, *, training=True, axis=-1, mask=None, momentum=0.99,
               epsilon=EPSILON, gamma=None, beta=None, unbiased_moving_variance=False,
               debias=False, virtual_batch_size=None, renorm=False,
               renorm_clipping=None, renorm_momentum=0.99,
               skip_nonfinite_updates=True):
    """One call of the layer on `x`; returns a `Result`.

    `training=True`: normalize with the batch statistics and update the
    moving ones; `training=False`: normalize with `state`'s moving
    statistics. `state=None` is a freshly built layer's (`initial_state`).
    The other arguments are the layer's, with `gamma`/`beta` the values of
    its weights (None for `scale=False`/`center=False`).
    """
    x = np.asarray(x, "float64")
    axes = _channel_axes(axis, x.ndim)
    if state is None:
        state = initial_state(_param_shape(x, axes), renorm=renorm)
    if not training:
        output = normalize(x, state.moving_mean, state.moving_variance, axis,
                           gamma, beta, epsilon)
        return Result(output, state.moving_mean, state.moving_variance, None, state,
                      False)

    # The batch statistics, and the outputs they normalize.
    if virtual_batch_size:
        # Each virtual batch of k samples is a batch of its own; the moving
        # statistics follow their average.
        parts = np.split(x, len(x) // virtual_batch_size)
        part_masks = [None] * len(parts) if mask is None else np.split(
            np.broadcast_to(mask, x.shape), len(parts))
        groups = [moments(part, axis, m) for part, m in zip(parts, part_masks)]
        mean = np.stack([g[0] for g in groups])
        variance = np.stack([g[1] for g in groups])
        count = groups[0][2] if mask is None else np.stack([g[2] for g in groups])
        output = np.concatenate([
            normalize(part, m, v, axis, gamma, beta, epsilon)
            for part, m, v in zip(parts, mean, variance)
        ])
        valid = _valid(count, mean, variance, skip_nonfinite_updates).all(axis=0)
        update_mean, update_variance = mean.mean(axis=0), variance.mean(axis=0)
        update_count = count if mask is None else count.min(axis=0)
    else:
        mean, variance, count = moments(x, axis, mask)
        if renorm:
            # (x_hat * r + d) * gamma + beta: r and d fold into gamma and beta.
            r, d = _renorm_corrections(mean, variance, state, epsilon, renorm_clipping)
            g = 1.0 if gamma is None else np.asarray(gamma, "float64")
            b = 0.0 if beta is None else np.asarray(beta, "float64")
            gamma, beta = r * g, d * g + b
        output = normalize(x, mean, variance, axis, gamma, beta, epsilon)
        valid = _valid(count, mean, variance, skip_nonfinite_updates)
        update_mean, update_variance, update_count = mean, variance, count

    # The update of the moving statistics.
    if unbiased_moving_variance:
        # PyTorch stores n/(n-1) times the biased variance; n=1 skips.
        valid = valid & (np.asarray(update_count) > 1)
        update_variance = update_variance * update_count / np.maximum(update_count - 1, 1)
    updated = bool(np.any(valid))
    t = state.num_batches_tracked + 1
    if renorm:
        new = _renorm_updates(state, update_mean, update_variance, momentum,
                              renorm_momentum, epsilon)
    else:
        if momentum is None:
            w = 1.0 / t  # cumulative average
        elif debias:
            w = (1.0 - momentum) / (1.0 - momentum**t)
        else:
            w = 1.0 - momentum
        new = {
            "moving_mean": state.moving_mean + w * (update_mean - state.moving_mean),
            "moving_variance": state.moving_variance
            + w * (update_variance - state.moving_variance),
        }
    new = {name: np.where(valid, value, getattr(state, name))
           for name, value in new.items()}
    state = dataclasses.replace(
        state, num_batches_tracked=state.num_batches_tracked + int(updated), **new
    )
    return Result(output, mean, variance, count, state, updated)


def train(batches, state=None, **options):
    """`batch_norm` training calls on each batch in turn, each starting from
    the state the previous one left; returns the list of `Result`s."""
    results = []
    for x in batches:
        results.append(batch_norm(x, state, training=True, **options))
        state = results[-1].state
    return results


def _channel_axes(axis, ndim):
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return sorted(a % ndim for a in axes)


def _param_shape(x, axes):
    return tuple(x.shape[a] for a in axes)


def _valid(count, mean, variance, skip_nonfinite_updates):
    """Per channel: non-empty and, when checked, the whole batch finite (one
    non-finite channel means a bad batch, so no channel updates)."""
    valid = np.broadcast_to(np.asarray(count) > 0, np.shape(mean))
    if skip_nonfinite_updates:
        valid = valid & np.all(np.isfinite(mean)) & np.all(np.isfinite(variance))
    return valid


def _renorm_corrections(mean, variance, state, epsilon, clipping):
    """Batch Renormalization's `r` and `d` from the renorm averages before
    this call's update (Ioffe, 2017, as Keras)."""
    stddev = np.sqrt(variance + epsilon)
    # Keras keeps early training from dividing by zero.
    renorm_stddev = np.maximum(state.renorm_stddev, np.sqrt(epsilon))
    r = stddev / renorm_stddev
    d = (mean - state.renorm_mean) / renorm_stddev
    clipping = clipping or {}
    if clipping.get("rmin") is not None:
        r = np.maximum(r, clipping["rmin"])
    if clipping.get("rmax") is not None:
        r = np.minimum(r, clipping["rmax"])
    if clipping.get("dmax") is not None:
        d = np.clip(d, -clipping["dmax"], clipping["dmax"])
    return r, d


def _renorm_updates(state, mean, variance, momentum, renorm_momentum, epsilon):
    """Renorm tracks standard deviations: the moving variance is derived from
    `moving_stddev`."""
    stddev = np.sqrt(variance + epsilon)

    def average(old, new, m):
        return old * m + new * (1.0 - m)

    moving_stddev = average(state.moving_stddev, stddev, momentum)
    return {
        "moving_mean": average(state.moving_mean, mean, momentum),
        "moving_stddev": moving_stddev,
        "moving_variance": np.maximum(moving_stddev**2 - epsilon, 0.0),
        "renorm_mean": average(state.renorm_mean, mean, renorm_momentum),
        "renorm_stddev": average(state.renorm_stddev, stddev, renorm_momentum),
    }

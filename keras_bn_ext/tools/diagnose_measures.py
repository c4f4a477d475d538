"""From the moments `diagnose` collected to each layer's measurements.

For one layer, with `m`, `v` its moving mean and variance, `eps` its epsilon,
and over the data (each batch weighted by its element count) `mu` the mean
of the batch means and `s` the mean of the batch variances, per channel:

    mean_shift     = |mu - m| / sqrt(v + eps)
    variance_ratio = (s + eps) / (v + eps)
    gap            = sqrt(mean_shift**2 + (sqrt(variance_ratio) - 1)**2 * s / (s + eps))

`gap` is exactly the RMS difference between the layer's normalized outputs
(before gamma and beta) with the moving statistics and with `(mu, s)`, on
the same inputs; the layer's `gap` is its RMS over channels. It is measured
on the inputs the layer sees in inference mode, and `own_gap` on those it
sees in batch-statistics mode (every earlier layer, frozen ones included,
normalizing with batch statistics), which no earlier layer's gap reaches.
"""

import math

import numpy as np
from keras import ops

from keras_bn_ext.debug import freshness
from keras_bn_ext.tools.diagnose_result import LayerDiagnosis

WORST_CHANNELS = 3


def measure_layer(path, layer, seen, own):
    """The `LayerDiagnosis` of `layer` from its `ChannelMoments` in
    inference mode (`seen`) and batch-statistics mode (`own`)."""
    moving = (_host(layer.moving_mean), _host(layer.moving_variance))
    epsilon = float(layer.epsilon)
    means, variances, counts = seen.arrays()
    mean, variance = data_statistics(means, variances, counts)
    own_mean, own_variance = data_statistics(*own.arrays())
    shift, ratio, gap = channel_gaps(mean, variance, *moving, epsilon)
    state = layer_state(layer)
    if state == "mode=batch":  # inference normalizes with batch statistics too
        layer_gap = own_gap = 0.0
    else:
        layer_gap = _layer_gap(gap)
        own_gap = _layer_gap(channel_gaps(own_mean, own_variance, *moving, epsilon)[2])
    updates = _updates(layer)
    mean_spread, variance_spread = batch_spread(means, variances, counts, mean, variance, epsilon)
    weight, source = initial_weight(layer, updates, own_mean, own_variance, *moving)
    return LayerDiagnosis(
        layer=path,
        kind="keras_bn_ext" if hasattr(layer, "mode") else "keras",
        state=state,
        channels=int(moving[0].size),
        batches=seen.calls,
        count=_count_per_batch(layer, counts, seen.batch_sizes),
        mean_shift_median=_nan_reduce(np.nanmedian, shift),
        mean_shift_max=_nan_reduce(np.nanmax, shift),
        variance_ratio_min=_nan_reduce(np.nanmin, ratio),
        variance_ratio_median=_nan_reduce(np.nanmedian, ratio),
        variance_ratio_max=_nan_reduce(np.nanmax, ratio),
        worst_channels=_worst(gap),
        batch_mean_spread=mean_spread,
        batch_variance_spread=variance_spread,
        gap=layer_gap,
        own_gap=own_gap,
        updates=updates,
        never_updated=bool(freshness.never_updated(layer, *moving, updates)),
        initial_weight=weight,
        initial_weight_source=source,
        **_variance_problems(mean, variance, *moving, epsilon),
        own_nonfinite_input_channels=_nonfinite(own_mean, own_variance),
        mean_shift=shift,
        variance_ratio=ratio,
    )


def _variance_problems(mean, variance, moving_mean, moving_variance, epsilon):
    """Channel counts of non-finite or impossible statistics. A moving
    variance below epsilon counts only where the data's is not: dead
    channels (constant inputs) are harmless in both modes."""
    with np.errstate(invalid="ignore"):
        return dict(
            nonfinite_channels=int(np.sum(
                ~(np.isfinite(moving_mean) & np.isfinite(moving_variance)))),
            negative_variance_channels=int(np.sum(moving_variance < 0)),
            tiny_variance_channels=int(np.sum(
                (moving_variance >= 0) & (moving_variance < epsilon) & (variance >= epsilon))),
            nonfinite_input_channels=_nonfinite(mean, variance),
        )


def _nonfinite(mean, variance):
    return int(np.sum(~(np.isfinite(mean) & np.isfinite(variance))))


def layer_state(layer):
    """How the layer treats its statistics in `fit()`, in a word (as `report`)."""
    mode = getattr(layer, "mode", "auto")
    if mode == "moving":
        return "mode=moving"
    if not layer.trainable:
        return "trainable=False"
    return "mode=batch" if mode == "batch" else "trainable"


def data_statistics(means, variances, counts):
    """Per channel: the count-weighted mean of the batch means (the data's
    mean) and of the batch variances (what batch mode divides by, on average)."""
    total = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (counts * means).sum(axis=0) / total
        variance = (counts * variances).sum(axis=0) / total
    return mean, variance


def channel_gaps(mean, variance, moving_mean, moving_variance, epsilon):
    """Per channel `(mean_shift, variance_ratio, gap)`, as the module says."""
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.abs(mean - moving_mean) / np.sqrt(moving_variance + epsilon)
        ratio = (variance + epsilon) / (moving_variance + epsilon)
        scale_error = (np.sqrt(ratio) - 1.0) ** 2 * variance / (variance + epsilon)
        gap = np.sqrt(shift**2 + scale_error)
    return shift, ratio, gap


def batch_spread(means, variances, counts, mean, variance, epsilon):
    """Medians over channels of how much the batch statistics vary from
    batch to batch: the std of the batch means in units of the data's std,
    and the relative std of the batch variances (None for one batch)."""
    if len(means) < 2:
        return None, None
    total = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means_variance = (counts * (means - mean) ** 2).sum(axis=0) / total
        # The data's variance: within batches plus between their means.
        population_variance = variance + means_variance
        mean_spread = np.sqrt(means_variance / (population_variance + epsilon))
        variance_spread = np.sqrt(
            (counts * (variances - variance) ** 2).sum(axis=0) / total) / (variance + epsilon)
    return _nan_reduce(np.nanmedian, mean_spread), _nan_reduce(np.nanmedian, variance_spread)


def initial_weight(layer, updates, mean, variance, moving_mean, moving_variance):
    """`(weight, source)`: how much the moving statistics still weigh their
    initial values. From the update counter when the layer keeps one
    (`momentum**updates`; 0 after one update for `momentum=None` or
    `debias=True`), else estimated (`None, None` where it cannot be)."""
    momentum = layer.momentum
    if updates is not None:
        if updates == 0:
            return 1.0, "counter"
        if momentum is None or getattr(layer, "debias", False):
            return 0.0, "counter"
        return float(momentum) ** updates, "counter"
    return _estimated_weight(layer, mean, variance, moving_mean, moving_variance)


def _estimated_weight(layer, mean, variance, moving_mean, moving_variance):
    """Least squares `w` in `moving = w * initial + (1 - w) * data`, for the
    means (in units of the data's std) and variances (relative) together.
    Only where the initial values differ from the data's statistics and the
    moving statistics lie near that line (else they came from other data)."""
    initial_mean, initial_variance = freshness.initial_statistics(layer, moving_mean.shape)
    if initial_mean is None or initial_variance is None:
        return None, None
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(variance + layer.epsilon)
        direction = np.concatenate([(initial_mean - mean) / std,
                                    (initial_variance - variance) / (variance + layer.epsilon)])
        offset = np.concatenate([(moving_mean - mean) / std,
                                 (moving_variance - variance) / (variance + layer.epsilon)])
    if not (np.all(np.isfinite(direction)) and np.all(np.isfinite(offset))):
        return None, None
    spread = float(np.mean(direction**2))
    if spread < 0.01:  # initial values and data agree: nothing to tell apart
        return None, None
    weight = float(np.dot(offset, direction) / np.sum(direction**2))
    residual = float(np.sqrt(np.mean((offset - weight * direction) ** 2)))
    # Updates from these data leave the moving statistics on that line up to
    # the moving averages' noise; other data (a pretraining) leave them off it.
    if residual > 0.05 * math.sqrt(spread) + 0.02 or not -0.05 <= weight <= 1.05:
        return None, None
    return min(max(weight, 0.0), 1.0), "estimated"


def _count_per_batch(layer, counts, batch_sizes):
    """Elements per channel that one set of batch statistics reduces (the
    median over batches; per virtual batch for ghost batch normalization)."""
    per_batch = counts.min(axis=1)
    group = getattr(layer, "virtual_batch_size", None)
    if group:
        sizes = np.asarray(batch_sizes, "float64")
        per_batch = per_batch / np.maximum(sizes, 1) * np.minimum(sizes, group)
    return int(np.median(per_batch))


def _layer_gap(gap):
    finite = gap[np.isfinite(gap)]
    if finite.size < gap.size:
        return math.inf
    return float(np.sqrt(np.mean(finite**2))) if finite.size else 0.0


def _worst(gap):
    order = np.argsort(-np.nan_to_num(gap, nan=np.inf), kind="stable")
    return tuple(int(i) for i in order[:WORST_CHANNELS])


def _updates(layer):
    counter = getattr(layer, "num_batches_tracked", None)
    return None if counter is None else int(_host(counter))


def _nan_reduce(fn, values):
    if values.size == 0 or np.all(np.isnan(values)):
        return math.nan
    return float(fn(values))


def _host(variable):
    return np.asarray(ops.convert_to_numpy(variable), "float64")

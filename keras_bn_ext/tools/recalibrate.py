"""Precise BN: moving statistics recomputed as exact population statistics.

Moving averages lag behind the weights they summarize (and are noisy after a
short fine-tune or a weight average, as in SWA). `recalibrate` replaces them
by the true mean and variance of each layer's inputs over a data set, as
fvcore's precise BN does, but exactly:

- every sample counts the same: batches of unequal size are weighted by
  their size (not averaged with equal weights, as torch's `update_bn` does);
- per-channel count, mean and sum of squared deviations are merged batch by
  batch with Chan et al.'s stable formula, in float64 on the host;
- layers are recalibrated one at a time in the order the model runs them,
  each over the whole data set with the model in inference mode, so a layer
  sees its inputs as they will be at inference, after the layers before it
  were recalibrated (one pass over the data per layer; a pass stops at the
  layer it measures).
"""

import dataclasses
import warnings
from typing import Any

import keras
import numpy as np

from keras_bn_ext import backend as backend_ops
from keras_bn_ext import statistics
from keras_bn_ext.debug import NeverUpdatedWarning
from keras_bn_ext.layers import BatchNormalization
from keras_bn_ext.layers.arguments import resolve_axes
from keras_bn_ext.layers.arguments import standardize_mask
from keras_bn_ext.tools import data_forms
from keras_bn_ext.tools.report import batch_norm_layers


@dataclasses.dataclass(frozen=True)
class PopulationStatistics:
    """What `recalibrate` measured for one layer.

    Attributes:
        count: elements per channel (int, or an array when a mask made the
            counts differ between channels).
        mean: population mean per channel (float64, the variable's shape).
        variance: population (biased) variance per channel (float64); the
            layer stores `variance * count / (count - 1)` when it keeps an
            unbiased moving variance.
        batches: number of batches the layer saw.
    """

    count: int | np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    batches: int


class _StopForward(BaseException):
    # A BaseException, so no `except Exception` between here and the model
    # call (Keras adds call details to exceptions) catches or rewraps it.
    pass


def recalibrate(
    model: keras.Model,
    data: Any,
    steps: int | None = None,
    batch_size: int = 32,
    verbose: int = 1,
) -> dict[str, PopulationStatistics]:
    """Sets every BatchNormalization layer's moving statistics to the exact
    population statistics of its inputs over `data`.

    Keras's layers and ours, in nested models and custom layers too. Frozen
    layers (`trainable=False`, or our `mode="moving"`) keep their
    statistics but still run, in inference mode like every other layer;
    gamma, beta and every other weight are untouched. For Batch Renormalization layers `moving_stddev`
    (and `renorm_mean`, `renorm_stddev`) become the matching population
    values, `sqrt(variance + epsilon)`. An update counter
    (`num_batches_tracked`) becomes the number of batches measured, as after
    PyTorch's `update_bn`. Channels whose statistics come out non-finite, or
    that saw no element (masked out), keep their old values.

    Args:
        model: a Keras model, called on each batch as `model(x, training=False)`.
        data: as `fit()` takes it: whole arrays (`x`, `(x, y[, w])`, a dict
            of named inputs; split into batches of `batch_size`), or batches
            (`x`, `(x,)`, `(x, y[, w])`) from a list, generator,
            `tf.data.Dataset` or `keras.utils.PyDataset`; only `x` is used.
            A generator is read once and its batches kept in memory.
        steps: use only the first `steps` batches (needed for endless data).
        batch_size: batch size for array data.
        verbose: 1 shows a `keras.utils.Progbar` over the layers, 0 is silent.

    Returns:
        `{layer path: PopulationStatistics}` for every recalibrated layer, in
        the order the model runs them.

    Examples:
        >>> import numpy as np, keras, keras_bn_ext
        >>> model = keras.Sequential([keras.Input((2,)),
        ...     keras.layers.BatchNormalization(name="bn")])
        >>> batches = [np.array([[0., 10.], [2., 10.]]), np.array([[4., 20.]])]
        >>> stats = keras_bn_ext.recalibrate(model, batches, verbose=0)
        >>> stats["bn"].count, stats["bn"].mean
        (3, array([ 2.        , 13.33333333]))
        >>> np.round(keras.ops.convert_to_numpy(model.get_layer("bn").moving_variance), 4)
        array([ 2.6667, 22.2222], dtype=float32)
    """
    data_forms.check_model(model, "recalibrate")
    batches = _Batches(data, steps, batch_size, model)
    order, calls = _execution_order(model, batches)
    paths = {id(layer): path for path, layer in batch_norm_layers(model)}
    layers = [layer for layer in order if not _is_frozen(layer)]
    progress = keras.utils.Progbar(
        len(layers), unit_name="layer", stateful_metrics=["batches"]
    ) if verbose else None
    summary = {}
    for i, layer in enumerate(layers):
        accumulator = _measure(model, layer, batches, calls[id(layer)])
        summary[paths[id(layer)]] = _assign(layer, accumulator)
        if progress is not None:
            progress.update(i + 1, values=[("batches", accumulator.batches)])
    return summary


def _is_frozen(layer):
    return not layer.trainable or getattr(layer, "mode", "auto") == "moving"


# Data --------------------------------------------------------------------------


class _Batches:
    """Re-iterable `x` batches of `data`, at most `steps` of them (the forms
    of `data` are in keras_bn_ext/tools/data_forms.py)."""

    def __init__(self, data, steps, batch_size, model=None):
        data_forms.check_steps(steps)
        data_forms.check_data(data)
        self.steps = steps
        x = data_forms.whole_inputs(data, model)
        if x is not None:  # whole arrays, as fit(x, y) takes them
            data = data_forms.split(x, batch_size)
        if isinstance(data, keras.utils.PyDataset):
            self._source = _PyDatasetIterable(data, steps)
        elif hasattr(data, "as_numpy_iterator"):
            # tf.data: NumPy batches, so any backend's model accepts them.
            self._source = _NumpyDataset(data)
        elif iter(data) is data:
            # A one-shot iterator cannot be read once per layer: keep it.
            self._source = [_inputs(item) for item in _take(data, steps)]
        else:
            self._source = data
        if steps is None and _is_infinite(data):
            raise ValueError(
                "`data` is endless (e.g. a repeated dataset), so pass `steps`: "
                "the number of batches to recalibrate on. Received: steps=None"
            )

    def __iter__(self):
        for item in _take(iter(self._source), self.steps):
            yield _inputs(item)


class _PyDatasetIterable:
    def __init__(self, dataset, steps):
        self.dataset = dataset
        count = dataset.num_batches
        if count is None and steps is None:
            raise ValueError(
                "This PyDataset has no length (num_batches is None), so pass "
                "`steps`: the number of batches to recalibrate on. "
                "Received: steps=None"
            )
        self.count = count if steps is None else steps

    def __iter__(self):
        for i in range(self.count):
            yield self.dataset[i]


class _NumpyDataset:
    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        return self.dataset.as_numpy_iterator()


def _take(iterator, steps):
    for i, item in enumerate(iterator):
        if steps is not None and i >= steps:
            return
        yield item


def _inputs(item):
    if isinstance(item, list):
        item = tuple(item)
    if isinstance(item, tuple) and 1 <= len(item) <= 3:
        return item[0]
    return item


def _is_infinite(data):
    cardinality = getattr(data, "cardinality", None)
    if cardinality is None or not callable(cardinality):
        return False
    try:
        return int(cardinality()) == -1  # tf.data.INFINITE_CARDINALITY
    except Exception:
        return False


# Running the model -------------------------------------------------------------


def _run(model, x):
    with warnings.catch_warnings():
        # Fresh statistics are about to be replaced: no NeverUpdatedWarning.
        warnings.simplefilter("ignore", NeverUpdatedWarning)
        with backend_ops.no_grad():
            return model(x, training=False)


class _Intercept:
    """Replaces `layer.call` while the block runs; `on_call(inputs, mask)`
    sees every call of the layer, then the layer runs as usual."""

    def __init__(self, layer, on_call):
        self.layer = layer
        self.on_call = on_call

    def __enter__(self):
        original = self.layer.call

        def call(inputs, *args, **kwargs):
            self.on_call(inputs, kwargs.get("mask"))
            return original(inputs, *args, **kwargs)

        self.layer.call = call

    def __exit__(self, *exc):
        del self.layer.call  # back to the class's method


def _execution_order(model, batches):
    """The BatchNormalization layers in the order the model calls them on a
    batch, and how many times each is called per batch."""
    layers = [layer for _, layer in batch_norm_layers(model)]
    order, calls = [], {id(layer): 0 for layer in layers}

    def seen(layer):
        def on_call(inputs, mask):
            if not calls[id(layer)]:
                order.append(layer)
            calls[id(layer)] += 1

        return on_call

    first = next(iter(batches), None)
    if first is None:
        raise ValueError("`data` gave no batch: nothing to recalibrate on.")
    intercepts = [_Intercept(layer, seen(layer)) for layer in layers]
    for intercept in intercepts:
        intercept.__enter__()
    try:
        _run(model, first)
    finally:
        for intercept in intercepts:
            intercept.__exit__()
    return order, calls


def _measure(model, layer, batches, calls_per_batch):
    accumulator = _Accumulator(layer)
    state = {"calls": 0}

    def on_call(inputs, mask):
        accumulator.add(inputs, mask)
        state["calls"] += 1
        # The rest of the model cannot change what this layer saw.
        if state["calls"] == calls_per_batch:
            raise _StopForward()

    with _Intercept(layer, on_call):
        for x in batches:
            state["calls"] = 0
            try:
                _run(model, x)
            except _StopForward:
                pass
            accumulator.batches += 1
    return accumulator


# Statistics ------------------------------------------------------------------


class _Accumulator:
    """Per-channel count, mean and sum of squared deviations (M2), merged
    batch by batch with Chan et al.'s formula, in float64."""

    def __init__(self, layer):
        self.layer = layer
        self.count = None
        self.mean = None
        self.m2 = None
        self.batches = 0

    def add(self, inputs, mask):
        """Merges one batch's moments (the layer's own moments function, in
        the widest float dtype) into the running float64 population ones."""
        x = keras.ops.cast(inputs, backend_ops.widest_float())
        ndim = len(x.shape)
        channel_axes = resolve_axes(self.layer.axis, ndim)
        axes = [i for i in range(ndim) if i not in channel_axes]
        mask = standardize_mask(mask, x, self.layer.axis, channel_axes)
        moments = statistics.moments(x, axes, mask)
        shape = tuple(moments.variance.shape)  # keepdims: 1 on reduced axes

        def per_channel(value):
            value = np.asarray(keras.ops.convert_to_numpy(value), "float64")
            return np.broadcast_to(value, shape).reshape(-1)

        count = per_channel(moments.count)
        mean = per_channel(moments.shift) + per_channel(moments.offset)
        m2 = per_channel(moments.variance) * count
        if self.count is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, count / total, 0.0)
        delta = mean - self.mean
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2 + delta**2 * self.count * share
        self.count = total

    def statistics(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.mean, self.m2 / self.count


def _statistics_dtype(inputs):
    # As the layer: float64 inputs keep float64, the rest use float32.
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    return "float64" if dtype == "float64" else "float32"


def _assign(layer, accumulator):
    """Writes the population statistics into the layer's variables."""
    if accumulator.count is None:  # the layer never ran on this data
        shape = tuple(layer.moving_mean.shape)
        empty = np.full(shape, np.nan)
        return PopulationStatistics(0, empty, empty, accumulator.batches)
    shape = tuple(layer.moving_mean.shape)
    mean, variance = accumulator.statistics()
    count = accumulator.count
    stored = variance
    if isinstance(layer, BatchNormalization) and layer.unbiased_moving_variance:
        with np.errstate(invalid="ignore", divide="ignore"):
            stored = variance * count / (count - 1)
    keep = ~(np.isfinite(mean) & np.isfinite(stored) & (count > 0))
    values = {"moving_mean": mean, "moving_variance": stored}
    if layer.renorm:
        stddev = np.sqrt(variance + layer.epsilon)
        values.update(moving_stddev=stddev, renorm_mean=mean, renorm_stddev=stddev)
    for name, value in values.items():
        variable = getattr(layer, name)
        old = np.asarray(keras.ops.convert_to_numpy(variable)).reshape(-1)
        value = np.where(keep, old, value).reshape(shape)
        variable.assign(value.astype(variable.dtype))
    if getattr(layer, "num_batches_tracked", None) is not None:
        layer.num_batches_tracked.assign(accumulator.batches)
    counts = count.astype(int)
    counts = int(counts[0]) if np.all(counts == counts[0]) else counts.reshape(shape)
    return PopulationStatistics(
        counts, mean.reshape(shape), variance.reshape(shape), accumulator.batches
    )

"""The measuring run of `diagnose`: each batch goes through the model twice,
in inference mode and in batch-statistics mode, and nothing is written.

- Inference mode is an ordinary `model(x, training=False)` call.
- Batch-statistics mode is `model.stateless_call(..., training=True)`: every
  layer behaves as in `fit()` (batch statistics, dropout), but the updated
  moving statistics come back as values that are dropped, never assigned.
  Frozen BatchNormalization layers (`trainable=False`, `mode="moving"`),
  which `fit()` runs on their moving statistics, normalize with the batch's
  here too: this mode is "every layer follows the data".
- Every BatchNormalization layer's inputs are reduced on device, as they
  arrive, to per-channel mean, variance and count (the package's stable
  moments function); only those vectors reach the host.
"""

import contextlib
import warnings

import keras
import numpy as np
from keras import ops

from keras_bn_ext import backend as backend_ops
from keras_bn_ext import statistics
from keras_bn_ext.debug import NeverUpdatedWarning
from keras_bn_ext.layers.arguments import resolve_axes
from keras_bn_ext.layers.arguments import standardize_mask

INFERENCE = "inference"
BATCH = "batch"


class ChannelMoments:
    """One layer's inputs in one mode: per call, per channel, the mean,
    biased variance and element count (host float64, `(calls, channels)`)."""

    def __init__(self):
        self.means, self.variances, self.counts = [], [], []
        self.batch_sizes = []

    def add(self, moments, batch_size):
        mean, variance, count = _host_moments(moments)
        self.means.append(mean)
        self.variances.append(variance)
        self.counts.append(count)
        self.batch_sizes.append(batch_size)

    @property
    def calls(self):
        return len(self.means)

    def arrays(self):
        """`(means, variances, counts)`, each `(calls, channels)`."""
        return tuple(np.stack(values) for values in
                     (self.means, self.variances, self.counts))


def channel_moments(layer, inputs, mask):
    """`(x, axes, Moments)`: the inputs as the layer computes with them and
    their per-channel moments as it reduces them (its axis and mask)."""
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    x = ops.cast(inputs, "float64" if dtype == "float64" else "float32")
    ndim = len(x.shape)
    channel_axes = resolve_axes(layer.axis, ndim)
    axes = [i for i in range(ndim) if i not in channel_axes]
    mask = standardize_mask(mask, x, layer.axis, channel_axes)
    return x, channel_axes, statistics.moments(x, axes, mask)


def _host_moments(moments):
    shape = ops.shape(moments.variance)
    parts = [moments.shift, moments.offset, moments.variance, moments.count]
    dtype = moments.variance.dtype
    stacked = ops.stack([ops.broadcast_to(ops.cast(p, dtype), shape) for p in parts])
    host = np.asarray(ops.convert_to_numpy(stacked), "float64").reshape(4, -1)
    # The mean as shift + offset, summed in float64: exact for |mean| >> std.
    return host[0] + host[1], host[2], host[3]


def normalize_with_batch_statistics(layer, x, channel_axes, moments):
    """What a frozen layer would output if it followed the data: `x`
    normalized with its batch's statistics, then gamma and beta."""
    outputs = statistics.normalize_batch(x, moments, None, None, layer.epsilon)
    shape = [x.shape[i] if i in channel_axes else 1 for i in range(len(x.shape))]
    if layer.scale:
        outputs = outputs * ops.reshape(ops.cast(layer.gamma, x.dtype), shape)
    if layer.center:
        outputs = outputs + ops.reshape(ops.cast(layer.beta, x.dtype), shape)
    return ops.cast(outputs, layer.compute_dtype)


class OutputGap:
    """Sums over the data of how far the outputs of the two modes differ
    (per batch on device; a few scalars to the host)."""

    def __init__(self):
        self.squared_difference = 0.0
        self.squared_reference = 0.0
        self.max_abs_difference = 0.0
        self.rows = 0
        self.changed = 0
        self.classifier = None
        self.samples = 0

    def add(self, inference, batch):
        flat_inference = keras.tree.flatten(inference)
        flat_batch = keras.tree.flatten(batch)
        self.samples += int(flat_batch[0].shape[0]) if len(flat_batch[0].shape) else 1
        for a, b in zip(flat_inference, flat_batch):
            a, b = ops.cast(a, "float32"), ops.cast(b, "float32")
            difference = a - b
            sums = [ops.sum(ops.square(difference)), ops.sum(ops.square(b)),
                    ops.max(ops.abs(difference))]
            classifier = len(b.shape) >= 2 and b.shape[-1] >= 2
            if classifier:
                changed = ops.not_equal(ops.argmax(a, axis=-1), ops.argmax(b, axis=-1))
                sums.append(ops.sum(ops.cast(changed, "float32")))
            host = np.asarray(ops.convert_to_numpy(ops.stack(sums)), "float64")
            self.squared_difference += host[0]
            self.squared_reference += host[1]
            self.max_abs_difference = max(self.max_abs_difference, host[2])
            if classifier:
                self.changed += host[3]
                self.rows += int(np.prod(b.shape[:-1]))
            self.classifier = bool(classifier) if self.classifier is None else (
                self.classifier and classifier)


class Measurement:
    """Runs the data through `model` in both modes, collecting the moments
    of each layer's inputs per mode, the order the layers ran in (inference
    mode) and the output gap."""

    def __init__(self, model, layers):
        self.model = model
        self.layers = layers  # [(path, layer)]
        self.moments = {mode: {id(layer): ChannelMoments() for _, layer in layers}
                        for mode in (INFERENCE, BATCH)}
        self.order = []
        self.output_gap = OutputGap()
        self.batches = 0
        self._mode = None

    def run(self, batches):
        with self._intercepts(), _kept_warning_state(self.layers), \
                warnings.catch_warnings(), backend_ops.no_grad():
            # Measured statistics are the point: no NeverUpdatedWarning here.
            warnings.simplefilter("ignore", NeverUpdatedWarning)
            values = None
            for x in batches:
                self._mode = INFERENCE
                inference = self.model(x, training=False)
                if values is None:  # the first call built the model
                    values = _variable_values(self.model)
                self._mode = BATCH
                batch, _ = self.model.stateless_call(*values, x, training=True)
                self.output_gap.add(inference, batch)
                self.batches += 1
        if not self.batches:
            raise ValueError("`data` gave no batch: nothing to diagnose.")
        return self

    @contextlib.contextmanager
    def _intercepts(self):
        """Replaces each layer's `call` while the block runs: its inputs'
        moments are recorded, then it runs as usual, except that a frozen
        layer normalizes with the batch's statistics in batch mode."""
        try:
            for _, layer in self.layers:
                layer.call = self._call_of(layer, layer.call)
            yield
        finally:
            for _, layer in self.layers:
                if "call" in vars(layer):
                    del layer.call  # back to the class's method

    def _call_of(self, layer, original):
        frozen = not layer.trainable or getattr(layer, "mode", "auto") == "moving"

        def call(inputs, *args, **kwargs):
            x, channel_axes, moments = channel_moments(layer, inputs, kwargs.get("mask"))
            if self._mode == INFERENCE and all(seen is not layer for seen in self.order):
                self.order.append(layer)
            batch_size = int(x.shape[0]) if len(x.shape) else 1
            self.moments[self._mode][id(layer)].add(moments, batch_size)
            if frozen and self._mode == BATCH:
                return normalize_with_batch_statistics(layer, x, channel_axes, moments)
            return original(inputs, *args, **kwargs)

        return call


def _variable_values(model):
    # The state passed to stateless_call: the variables' current values.
    return ([v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables])


@contextlib.contextmanager
def _kept_warning_state(layers):
    """Our layer warns once about never-updated statistics, on its first
    inference call, and stops checking once it trained; diagnosing is not
    such a call, so those two flags are put back afterwards."""
    kept = []
    for _, layer in layers:
        check = getattr(layer, "_never_updated", None)
        if check is not None:
            kept.append((layer, check, layer._checked_fresh_statistics, check.warned))
    try:
        yield
    finally:
        for layer, check, checked, warned in kept:
            layer._checked_fresh_statistics = checked
            check.warned = warned

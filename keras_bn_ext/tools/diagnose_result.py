"""What `diagnose` returns: per-layer measurements, the model's output gap,
ranked findings, and the `Diagnosis` that holds them (table, JSON, plot)."""

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any
from typing import Optional

import numpy as np

FINDING_KINDS = (
    "never_updated", "warming_up", "data_shift", "small_batch",
    "frozen_mismatch", "bad_variance",
)


@dataclasses.dataclass(frozen=True)
class LayerDiagnosis:
    """One BatchNormalization layer, measured on the data.

    Attributes:
        layer: the layer's path in the model (`"backbone/bn1"`).
        kind: `"keras"` or `"keras_bn_ext"`.
        state: `"trainable"`, `"trainable=False"`, `"mode=moving"` or
            `"mode=batch"`: how the layer treats its statistics in `fit()`.
        channels: number of channels.
        batches: calls measured (batches, or more for a shared layer).
        count: elements per channel in a batch (median over batches).
        mean_shift_median: median over channels of the standardized mean
            shift `|mean - moving_mean| / sqrt(moving_variance + eps)`.
        mean_shift_max: its maximum over channels.
        variance_ratio_min: minimum over channels of the variance ratio
            `(batch variance + eps) / (moving_variance + eps)`.
        variance_ratio_median: its median over channels.
        variance_ratio_max: its maximum over channels.
        worst_channels: the channels with the largest gap, worst first.
        batch_mean_spread: the std of the batch means across batches, in
            units of the data's std (median over channels; None for one batch).
        batch_variance_spread: the relative std of the batch variances
            across batches (same).
        gap: RMS difference of the layer's normalized outputs between its
            moving statistics and the data's, on its inference-mode inputs.
        own_gap: the same on its inputs in batch-statistics mode (every
            earlier layer normalizing with the batch's statistics, as in
            `fit()`): the part of the gap no earlier layer causes.
        updates: the update counter (`num_batches_tracked`), or None.
        never_updated: the moving statistics are still their initial values.
        initial_weight: the weight the moving statistics still give their
            initial values (None where it cannot be told).
        initial_weight_source: `"counter"` (`momentum**updates`),
            `"estimated"` (fitted from the statistics) or None.
        nonfinite_channels: channels with a non-finite moving statistic.
        negative_variance_channels: channels with a negative moving variance.
        tiny_variance_channels: channels whose moving variance is below
            epsilon while the data's is not.
        nonfinite_input_channels: channels whose inputs were not finite.
        own_nonfinite_input_channels: the same for its inputs in
            batch-statistics mode.
        inherited_from: for a gap that comes from an earlier layer (small
            `own_gap`), or non-finite inputs that come from an earlier
            layer's finding, that layer's path; else None.
        mean_shift: the per-channel standardized mean shifts (NumPy).
        variance_ratio: the per-channel variance ratios (NumPy).
    """

    layer: str
    kind: str
    state: str
    channels: int
    batches: int
    count: int
    mean_shift_median: float
    mean_shift_max: float
    variance_ratio_min: float
    variance_ratio_median: float
    variance_ratio_max: float
    worst_channels: tuple
    batch_mean_spread: Optional[float]
    batch_variance_spread: Optional[float]
    gap: float
    own_gap: float
    updates: Optional[int]
    never_updated: bool
    initial_weight: Optional[float]
    initial_weight_source: Optional[str]
    nonfinite_channels: int
    negative_variance_channels: int
    tiny_variance_channels: int
    nonfinite_input_channels: int
    mean_shift: np.ndarray = dataclasses.field(repr=False)
    variance_ratio: np.ndarray = dataclasses.field(repr=False)
    own_nonfinite_input_channels: int = 0
    inherited_from: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Finding:
    """One cause of a train/inference difference, with its numbers and fix.

    Attributes:
        layer: the layer's path.
        kind: one of `FINDING_KINDS`.
        numbers: the measured values behind it (a dict).
        fix: what to do, naming the call.
        summary: what was found, in a sentence.
        effect: what the findings are ranked by: the RMS difference it makes
            to the layer's normalized outputs (the layer's gap; for
            `small_batch` the expected batch-to-batch noise).
    """

    layer: str
    kind: str
    numbers: dict
    fix: str
    summary: str
    effect: float


@dataclasses.dataclass(frozen=True)
class OutputGap:
    """How far the model's outputs in inference mode are from those in
    batch-statistics mode (as in `fit()`, with frozen BatchNormalization
    layers normalizing with the batch's statistics too) on the data.

    Attributes:
        relative_difference: `||inference - batch|| / ||batch||` over all
            outputs (Frobenius norms).
        max_abs_difference: the largest elementwise difference.
        predictions_changed: for outputs with a class axis (last dim >= 2),
            the share of rows whose argmax differs; else None.
        samples: rows seen.
    """

    relative_difference: float
    max_abs_difference: float
    predictions_changed: Optional[float]
    samples: int


class Diagnosis:
    """What `keras_bn_ext.diagnose` found.

    Attributes:
        model_name: the model's name.
        layers: one `LayerDiagnosis` per layer that ran, in the order the
            model runs them.
        findings: `Finding`s, largest effect first.
        output_gap: the model-level `OutputGap`.
        batches: batches measured.
        not_called: paths of BatchNormalization layers the data never reached.
    """

    def __init__(
        self,
        model_name: str,
        layers: list["LayerDiagnosis"],
        findings: list["Finding"],
        output_gap: "OutputGap",
        batches: int,
        not_called: Sequence[str] = (),
    ) -> None:
        self.model_name = model_name
        self.layers = list(layers)
        self.findings = list(findings)
        self.output_gap = output_gap
        self.batches = batches
        self.not_called = list(not_called)

    def __getitem__(self, path: str) -> "LayerDiagnosis":
        """The `LayerDiagnosis` of the layer with this path (or plain name)."""
        for row in self.layers:
            if row.layer == path or row.layer.rsplit("/", 1)[-1] == path:
                return row
        raise KeyError(f"No measured BatchNormalization layer named {path!r}.")

    def kinds(self, layer: str | None = None) -> list[str]:
        """The finding kinds, largest effect first (of one layer if given)."""
        return [f.kind for f in self.findings if layer in (None, f.layer)]

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (NaN and inf become None)."""
        layers = []
        for row in self.layers:
            values = dataclasses.asdict(row)
            values["worst_channels"] = list(row.worst_channels)
            values["mean_shift"] = row.mean_shift.tolist()
            values["variance_ratio"] = row.variance_ratio.tolist()
            layers.append(values)
        return _finite({
            "model": self.model_name,
            "batches": self.batches,
            "output_gap": dataclasses.asdict(self.output_gap),
            "layers": layers,
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "not_called": self.not_called,
        })

    def to_json(self, **kwargs: Any) -> str:
        """`to_dict()` as a JSON string (strict JSON: no NaN)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    def plot(self, path: str | os.PathLike) -> None:
        """Draws each layer's gap, mean shift and variance ratio to a PNG
        file (matplotlib, imported here). Returns the path."""
        from keras_bn_ext.tools.diagnose_format import plot

        return plot(self, path)

    def __str__(self):
        from keras_bn_ext.tools.diagnose_format import table

        return table(self)

    __repr__ = __str__


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.ndarray):
        return _finite(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value

"""`diagnose(model, data)`: why does the model behave differently in `fit()`
and in `predict()`? Measured per BatchNormalization layer, with the fix.

In `fit()` each BatchNormalization layer normalizes with the batch's
statistics; in `predict()`/`evaluate()` with its moving statistics. When the
two disagree on the data, so do the model's outputs. `diagnose` runs the
data through the model in both modes (one pass, nothing written: the
batch-statistics mode is a stateless call), measures at every layer how far
the data's statistics are from the moving ones, and names the causes:
never-updated or still-warming-up statistics, data unlike what they saw,
batches too small, frozen layers that don't fit, bad variances. See
docs/diagnose.md for the numbers and formulas.
"""

import math
from typing import Any

import keras

from keras_bn_ext.tools import data_forms
from keras_bn_ext.tools import diagnose_findings
from keras_bn_ext.tools.diagnose_measures import measure_layer
from keras_bn_ext.tools.diagnose_passes import BATCH
from keras_bn_ext.tools.diagnose_passes import INFERENCE
from keras_bn_ext.tools.diagnose_passes import Measurement
from keras_bn_ext.tools.diagnose_result import Diagnosis
from keras_bn_ext.tools.diagnose_result import OutputGap
from keras_bn_ext.tools.recalibrate import _Batches
from keras_bn_ext.tools.report import batch_norm_layers


def diagnose(
    model: keras.Model,
    data: Any,
    steps: int | None = None,
    batch_size: int = 32,
) -> Diagnosis:
    """Measures, per BatchNormalization layer, the gap between the moving
    statistics (inference) and the data's batch statistics (training), and
    why the model's outputs differ between `predict()` and `fit()`.

    Keras's layers and ours, nested models and custom layers too. Nothing
    changes: every weight, moving statistic and update counter is left
    bit-identical (batch-statistics mode runs as `model.stateless_call`),
    and nothing trains.

    Args:
        model: a Keras model.
        data: as `fit` accepts it (docs/diagnose.md has the rules): whole
            arrays split into batches of `batch_size` (an array, a dict of
            arrays, `(x, y)` or `(x, y, sample_weight)`), a `tf.data.Dataset`,
            a `keras.utils.PyDataset`, a torch `DataLoader`, a list,
            generator or iterable of batches, each `x`, `(x,)`, `(x, y)` or
            `(x, y, sample_weight)`; only `x` is used. Give the batches the
            model trains on: batch statistics depend on the batch size.
        steps: use only the first `steps` batches (needed for endless data).
        batch_size: batch size for array data.

    Raises:
        ValueError: naming a bad `model` (or one without BatchNormalization), `data`, `steps`.

    Returns:
        A `Diagnosis`: `print()` it for a table; `.findings` (ranked
        `Finding`s with `layer`, `kind`, `numbers`, `fix`), `.layers`
        (`LayerDiagnosis` per layer), `.output_gap`, `.plot(path)`,
        `.to_json()`.

    Examples:
        >>> import numpy as np, keras, keras_bn_ext
        >>> model = keras.Sequential([keras.Input((2,)),
        ...     keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1)])
        >>> x = np.array([[1.0, 5.0], [5.0, 1.0]] * 32, "float32")  # mean 3, variance 4
        >>> diagnosis = keras_bn_ext.diagnose(model, x)
        >>> [(f.layer, f.kind) for f in diagnosis.findings]
        [('bn', 'never_updated')]
        >>> row = diagnosis["bn"]  # 3 / sqrt(1 + 0.001), (4 + 0.001) / (1 + 0.001)
        >>> round(row.mean_shift_max, 3), round(row.variance_ratio_max, 3)
        (2.999, 3.997)
    """
    layers = _checked_layers(model, batch_size)
    batches = _Batches(data, steps, batch_size, model)
    measurement = Measurement(model, layers).run(batches)
    paths = {id(layer): path for path, layer in layers}
    rows = [
        measure_layer(paths[id(layer)], layer,
                      measurement.moments[INFERENCE][id(layer)],
                      measurement.moments[BATCH][id(layer)])
        for layer in measurement.order
    ]
    rows, findings = diagnose_findings.rank_findings(rows)
    ran = {id(layer) for layer in measurement.order}
    return Diagnosis(
        model.name, rows, findings, _output_gap(measurement.output_gap),
        measurement.batches,
        not_called=[path for path, layer in layers if id(layer) not in ran],
    )


def _checked_layers(model, batch_size):
    """`[(path, layer)]`, after checking `batch_size` and that `model` is a
    Keras model (or layer) with at least one BatchNormalization layer."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
        )
    data_forms.check_model(model, "diagnose")
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError(
            f"Model {model.name!r} has no BatchNormalization layer (Keras's or "
            "keras_bn_ext's): nothing to diagnose. A difference between its training "
            "and inference outputs comes from other layers (e.g. Dropout)."
        )
    return layers


def _output_gap(sums):
    reference = math.sqrt(sums.squared_reference)
    difference = math.sqrt(sums.squared_difference)
    if reference > 0:
        relative = difference / reference
    else:
        relative = 0.0 if difference == 0 else math.inf
    changed = float(sums.changed / sums.rows) if sums.classifier and sums.rows else None
    return OutputGap(relative, float(sums.max_abs_difference), changed, sums.samples)

"""`report(model)`: the state of every BatchNormalization layer in a model.

Works with Keras's layer and ours, nested models and custom layers included,
so it answers "what is in this model I was handed?" at a glance:

    >>> print(keras_bn_ext.report(model))               # doctest: +SKIP
    BatchNormalization layers of model 'net': 2 (1 keras, 1 keras_bn_ext), 1 flagged
      (mean and variance: the moving statistics, over channels)
      layer  kind          ch  momentum  epsilon  state      updates  mean min/avg/max  ...
      bn1    keras          8  0.99      0.001    trainable        -  0 / 0 / 0         ...
      bn2    keras_bn_ext   8  0.99      0.001    trainable        -  -0.3 / 0.1 / 0.4  ...
"""

import dataclasses
import math
import warnings
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_bn_ext.debug import freshness
from keras_bn_ext.layers import BatchNormalization

# A moving variance above this is flagged: activations of that size usually
# mean a diverging layer upstream (or float16 overflow waiting to happen).
HUGE_VARIANCE = 1e6

FLAG_MEANINGS = {
    "not_built": "the layer has no weights yet (never called)",
    "never_updated": "moving statistics still hold their initial values "
    "(mean 0, variance 1): inference returns about x / sqrt(1 + epsilon)",
    "nonfinite": "NaN or inf in the moving statistics: every prediction "
    "through this layer is NaN",
    "negative_variance": "a negative moving variance (impossible; the "
    "one-pass variance of large-mean inputs does this)",
    "tiny_variance": "a moving variance below epsilon: those channels are "
    "scaled by about 1 / sqrt(epsilon)",
    "huge_variance": f"a moving variance above {HUGE_VARIANCE:g}",
}


def is_batch_norm(layer: Any) -> bool:
    """Whether `layer` is a Keras or keras_bn_ext BatchNormalization."""
    return isinstance(
        layer, (keras.layers.BatchNormalization, BatchNormalization)
    )


def batch_norm_layers(model: Any) -> list[tuple[str, Any]]:
    """`(path, layer)` for every BatchNormalization layer inside `model`.

    Nested models and custom layers are searched too; a path names the
    enclosing layers, e.g. `"backbone/bn1"`. Each layer appears once, in the
    order the model lists its layers.

    Examples:
        >>> import keras
        >>> inner = keras.Sequential([keras.Input((2,)),
        ...     keras.layers.BatchNormalization(name="bn")], name="inner")
        >>> [path for path, _ in batch_norm_layers(keras.Sequential([inner]))]
        ['inner/bn']
    """
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def visit(layer, prefix):
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            path = f"{prefix}{sub.name}"
            if is_batch_norm(sub):
                found.append((path, sub))
            else:
                visit(sub, path + "/")

    if is_batch_norm(model):
        return [(model.name, model)]
    visit(model, "")
    return found


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """One row of the report.

    Attributes:
        name: the layer's path in the model (`"outer/bn"` when nested).
        kind: `"keras"` or `"keras_bn_ext"`.
        channels: number of normalized channels (None if not built).
        axis: the channel axis (or axes).
        momentum: the moving-average momentum (None: cumulative average).
        epsilon: the variance epsilon.
        trainable: the layer's `trainable` flag.
        mode: `"auto"`, `"moving"` or `"batch"` (always `"auto"` for Keras).
        updates: the update counter `num_batches_tracked`, if the layer
            keeps one, else None.
        mean_min: smallest moving mean over channels (NaNs left out; NaN
            if all are).
        mean_avg: average moving mean over channels (same).
        mean_max: largest moving mean over channels (same).
        var_min: smallest moving variance over channels (same).
        var_avg: average moving variance over channels (same).
        var_max: largest moving variance over channels (same).
        flags: problems found, keys of `FLAG_MEANINGS`.
    """

    name: str
    kind: str
    channels: int | None
    axis: int | list[int]
    momentum: float | None
    epsilon: float
    trainable: bool
    mode: str
    updates: int | None
    mean_min: float | None
    mean_avg: float | None
    mean_max: float | None
    var_min: float | None
    var_avg: float | None
    var_max: float | None
    flags: tuple[str, ...]

    @property
    def state(self) -> str:
        """How the layer treats its statistics in `fit()`, in a word."""
        if self.mode == "moving":
            return "mode=moving"
        if not self.trainable:
            return "trainable=False"
        return "mode=batch" if self.mode == "batch" else "trainable"


class Report:
    """The rows of `report(model)`; `str()` gives a terminal table.

    Attributes:
        model_name: the model's name.
        rows: one `LayerReport` per layer, in model order.
    """

    def __init__(self, model_name: str, rows: Iterable[LayerReport]) -> None:
        self.model_name = model_name
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[LayerReport]:
        return iter(self.rows)

    def __getitem__(self, name: str) -> LayerReport:
        """The row of the layer with this path (or plain name)."""
        for row in self.rows:
            if row.name == name or row.name.rsplit("/", 1)[-1] == name:
                return row
        raise KeyError(f"No BatchNormalization layer named {name!r}.")

    @property
    def flagged(self) -> list[LayerReport]:
        """The rows with at least one flag."""
        return [row for row in self.rows if row.flags]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """`{layer path: row as a dict}`, in model order (JSON-ready)."""
        return {row.name: _jsonable(dataclasses.asdict(row)) for row in self.rows}

    def __str__(self) -> str:
        return _format_table(self)

    __repr__ = __str__


def report(model: keras.Model, huge_variance: float = HUGE_VARIANCE) -> Report:
    """Reports every BatchNormalization layer (Keras's and ours) of a model.

    Args:
        model: a Keras model (or layer); nested models are searched.
        huge_variance: moving variances above this are flagged.

    Returns:
        A `Report`: `str(report)` is a table; `.rows` holds one `LayerReport`
        per layer; `.to_dict()` maps layer paths to plain dicts;
        `.flagged` lists the layers with problems.

    Examples:
        >>> import keras, keras_bn_ext
        >>> model = keras.Sequential([keras.Input((3,)),
        ...     keras.layers.BatchNormalization(name="bn")])
        >>> rows = keras_bn_ext.report(model).rows
        >>> rows[0].name, rows[0].channels, rows[0].flags
        ('bn', 3, ('never_updated',))
    """
    return Report(
        model.name,
        [_layer_report(path, layer, huge_variance)
         for path, layer in batch_norm_layers(model)],
    )


def _layer_report(path, layer, huge_variance):
    ours = isinstance(layer, BatchNormalization)
    common = dict(
        name=path,
        kind="keras_bn_ext" if ours else "keras",
        axis=layer.axis,
        momentum=layer.momentum,
        epsilon=float(layer.epsilon),
        trainable=bool(layer.trainable),
        mode=layer.mode if ours else "auto",
    )
    if not layer.built:
        return LayerReport(
            **common, channels=None, updates=None, mean_min=None,
            mean_avg=None, mean_max=None, var_min=None, var_avg=None,
            var_max=None, flags=("not_built",),
        )
    mean = _numpy(layer.moving_mean)
    variance = _numpy(layer.moving_variance)
    counter = getattr(layer, "num_batches_tracked", None)
    updates = None if counter is None else int(_numpy(counter))
    return LayerReport(
        **common,
        channels=int(mean.size),
        updates=updates,
        mean_min=_reduce(np.nanmin, mean),
        mean_avg=_reduce(np.nanmean, mean),
        mean_max=_reduce(np.nanmax, mean),
        var_min=_reduce(np.nanmin, variance),
        var_avg=_reduce(np.nanmean, variance),
        var_max=_reduce(np.nanmax, variance),
        flags=_flags(layer, mean, variance, updates, huge_variance),
    )


def _flags(layer, mean, variance, updates, huge_variance):
    flags = []
    if freshness.never_updated(layer, mean, variance, updates):
        flags.append("never_updated")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(variance))):
        flags.append("nonfinite")
    finite = variance[np.isfinite(variance)]
    if np.any(finite < 0):
        flags.append("negative_variance")
    if np.any((finite >= 0) & (finite < layer.epsilon)):
        flags.append("tiny_variance")
    if np.any(finite > huge_variance):
        flags.append("huge_variance")
    return tuple(flags)


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _reduce(fn, values):
    # NaN-aware, so one NaN channel (flagged anyway) hides nothing else.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels
        return float(fn(values.astype("float64")))


def _jsonable(row):
    row["flags"] = list(row["flags"])
    if isinstance(row["axis"], tuple):
        row["axis"] = list(row["axis"])
    return row


# Formatting ------------------------------------------------------------------

_COLUMNS = (
    ("layer", "<"), ("kind", "<"), ("ch", ">"), ("momentum", "<"),
    ("epsilon", "<"), ("state", "<"), ("updates", ">"),
    ("mean min/avg/max", "<"), ("variance min/avg/max", "<"),
    ("flags", "<"),
)


def _number(value):
    if value is None:
        return "-"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == 0:
        return "0"
    return f"{value:.3g}"


def _cells(row):
    if row.channels is None:
        mean = variance = "-"
    else:
        mean = " / ".join(_number(v) for v in (row.mean_min, row.mean_avg, row.mean_max))
        variance = " / ".join(_number(v) for v in (row.var_min, row.var_avg, row.var_max))
    return (
        row.name,
        row.kind,
        "-" if row.channels is None else str(row.channels),
        "None" if row.momentum is None else f"{row.momentum:g}",
        f"{row.epsilon:g}",
        row.state,
        "-" if row.updates is None else str(row.updates),
        mean,
        variance,
        ",".join(row.flags) or "-",
    )


def _format_table(result):
    rows = result.rows
    kinds = {kind: sum(r.kind == kind for r in rows) for kind in ("keras", "keras_bn_ext")}
    title = (
        f"BatchNormalization layers of model {result.model_name!r}: {len(rows)} "
        f"({kinds['keras']} keras, {kinds['keras_bn_ext']} keras_bn_ext), "
        f"{len(result.flagged)} flagged"
    )
    if not rows:
        return title
    table = [tuple(name for name, _ in _COLUMNS)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    lines = [title, "  (mean and variance: the moving statistics, over channels)"]
    for line in table:
        cells = [
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(line, _COLUMNS, widths)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    used = sorted({flag for r in rows for flag in r.flags}, key=list(FLAG_MEANINGS).index)
    if used:
        lines.append("Flags:")
        lines += [f"  {flag}: {FLAG_MEANINGS[flag]}" for flag in used]
    return "\n".join(lines)

"""A `Diagnosis` as a terminal table and as a plot (matplotlib, optional)."""

import math

import numpy as np

_COLUMNS = (
    ("layer", "<"), ("kind", "<"), ("state", "<"), ("ch", ">"), ("n/batch", ">"),
    ("mean shift med/max", "<"), ("var ratio min/med/max", "<"),
    ("spread", ">"), ("gap", ">"), ("own gap", ">"), ("findings", "<"),
)


def _number(value):
    if value is None:
        return "-"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return "0" if value == 0 else f"{value:.3g}"


def _notes(row, kinds):
    """The layer's own findings, then where an inherited gap (or non-finite
    inputs) comes from."""
    notes = list(kinds)
    if row.inherited_from:
        what = "non-finite inputs" if row.nonfinite_input_channels else "gap inherited"
        notes.append(f"{what} from {row.inherited_from}")
    return "; ".join(notes) or "-"


def _summary(values, per_channel):
    """Summaries over channels (which skip NaN), then how many channels are
    NaN, so that a max over the rest does not hide them."""
    text = " / ".join(_number(v) for v in values)
    missing = int(np.isnan(per_channel).sum())
    if 0 < missing < per_channel.size:
        text += f" ({missing} nan)"
    return text


def _cells(row, kinds):
    return (
        row.layer, row.kind, row.state, str(row.channels), str(row.count),
        _summary((row.mean_shift_median, row.mean_shift_max), row.mean_shift),
        _summary((row.variance_ratio_min, row.variance_ratio_median,
                  row.variance_ratio_max), row.variance_ratio),
        _number(row.batch_mean_spread), _number(row.gap), _number(row.own_gap),
        _notes(row, kinds),
    )


def _output_line(gap):
    line = (f"  outputs, inference vs batch statistics: relative difference "
            f"{_number(gap.relative_difference)}, max abs {_number(gap.max_abs_difference)}")
    if gap.predictions_changed is not None:
        line += f", predictions changed {gap.predictions_changed:.1%}"
    return line


def table(diagnosis):
    """The text `print(diagnosis)` shows."""
    lines = [
        f"Diagnosis of model {diagnosis.model_name!r} on "
        f"{diagnosis.output_gap.samples} samples in {diagnosis.batches} batches: "
        f"{len(diagnosis.layers)} BatchNormalization layers, "
        f"{len(diagnosis.findings)} findings",
        _output_line(diagnosis.output_gap),
    ]
    if diagnosis.layers:
        rows = [tuple(name for name, _ in _COLUMNS)] + [
            _cells(row, diagnosis.kinds(row.layer)) for row in diagnosis.layers]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
        lines.append("  (per channel: mean shift |mean - moving_mean| / sqrt(moving_variance "
                     "+ eps); spread: batch means' std / data std; gap: RMS output change)")
        for r in rows:
            cells = [f"{c:{align}{w}}" for c, (_, align), w in zip(r, _COLUMNS, widths)]
            lines.append("  " + "  ".join(cells).rstrip())
    if diagnosis.not_called:
        lines.append(f"  not reached by the data: {', '.join(diagnosis.not_called)}")
    if diagnosis.findings:
        lines.append("Findings, largest effect first:")
    for i, finding in enumerate(diagnosis.findings, 1):
        lines.append(f"  {i}. {finding.layer}: {finding.kind}: {finding.summary}")
        lines.append(f"     fix: {finding.fix}")
    return "\n".join(lines)


def plot(diagnosis, path):
    """Bars per layer: gap and own gap; mean shift (median, max); variance
    ratio (min to max, log scale). Layers with findings are named in red."""
    figure_class, canvas_class = _matplotlib()
    rows = diagnosis.layers
    names = [row.layer for row in rows]
    positions = list(range(len(rows)))
    figure = figure_class(figsize=(max(6.0, 0.9 * len(rows) + 2), 7.5))
    canvas_class(figure)
    gap_axes, shift_axes, ratio_axes = figure.subplots(3, 1, sharex=True)
    _bars(gap_axes, positions, [[r.gap for r in rows], [r.own_gap for r in rows]],
          ("gap (inference-mode inputs)", "own gap (training-mode inputs)"))
    gap_axes.set_title(f"model {diagnosis.model_name!r}: BatchNormalization gaps")
    _bars(shift_axes, positions, [[r.mean_shift_median for r in rows],
                                  [r.mean_shift_max for r in rows]],
          ("mean shift, median over channels", "mean shift, max"))
    for x, row in zip(positions, rows):
        ratio_axes.plot([x, x], [row.variance_ratio_min, row.variance_ratio_max],
                        color="tab:blue", linewidth=4)
        ratio_axes.plot([x], [row.variance_ratio_median], "o", color="black")
    ratio_axes.axhline(1.0, color="gray", linewidth=0.8)
    if any(0 < r.variance_ratio_min < math.inf for r in rows):
        ratio_axes.set_yscale("log")
    ratio_axes.set_ylabel("variance ratio")
    flagged = {f.layer for f in diagnosis.findings}
    ratio_axes.set_xticks(positions)
    ratio_axes.set_xticklabels(names, rotation=30, ha="right")
    for label, name in zip(ratio_axes.get_xticklabels(), names):
        label.set_color("tab:red" if name in flagged else "black")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=80)
    return path


def _bars(axes, positions, series, labels):
    width = 0.4
    for i, (values, label) in enumerate(zip(series, labels)):
        shown = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        axes.bar([p + (i - 0.5) * width for p in positions], shown, width, label=label)
    axes.legend(fontsize="small")


def _matplotlib():
    # Imported here: matplotlib is optional, and the Agg canvas draws files
    # without touching pyplot's global backend or opening windows.
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "Diagnosis.plot() needs matplotlib: pip install matplotlib "
            "(or keras-bn-ext[plot])."
        ) from e
    return Figure, FigureCanvasAgg

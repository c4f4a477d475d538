"""From measured layers to ranked findings, each with its numbers and fix.

The rules, per layer, in the order the model runs them:

- `bad_variance`: a non-finite or negative moving statistic, a moving
  variance below epsilon where the data's is not, or non-finite inputs.
  Non-finite inputs are inherited (no finding for them; `inherited_from`
  names the source) when an earlier layer explains them: inputs non-finite
  in inference mode only come from an earlier layer's moving statistics
  (the first with non-finite or negative ones, else the nearest earlier
  layer with a finding); inputs non-finite in both modes from the first
  earlier layer whose inputs were already non-finite. A layer with inherited
  non-finite inputs gets no gap finding either (its gap is not finite).
- `never_updated`: the moving statistics are their initial values.
- Otherwise a `gap >= GAP_THRESHOLD` is:
  - inherited (no finding) when the layer's `own_gap` is small and an
    earlier layer has a finding: the earlier layer is the cause;
  - `frozen_mismatch` for a frozen layer (`trainable=False`, `mode="moving"`);
  - `warming_up` when the moving statistics still weigh their initial
    values by `WARMING_WEIGHT` or more (estimated: up to
    `ESTIMATED_WARMING_MAX`, beyond which "trained on data like the initial
    values" cannot be told from "hardly trained");
  - `data_shift` otherwise.
- `small_batch`: for layers that use batch statistics, batches whose
  expected statistics noise `sqrt(1/n + 1/(2(n-1)))` (n elements per
  channel, per virtual batch for ghost batches) is `SMALL_BATCH_NOISE` or
  more. Such batches' variances are biased low by (n - 1) / n, so at such a
  layer a gap with no mean shift counts as the small batch's, not a shift.
"""

import dataclasses
import math

from keras_bn_ext.tools.diagnose_result import Finding

GAP_THRESHOLD = 0.25
WARMING_WEIGHT = 0.1
ESTIMATED_WARMING_MAX = 0.95
SMALL_BATCH_NOISE = 0.25

RECALIBRATE = "keras_bn_ext.recalibrate(model, data)"


def rank_findings(rows):
    """`(rows, findings)`: rows with `inherited_from` set where the gap comes
    from an earlier layer, and every finding, largest effect first."""
    found, marked, causes = [], [], []
    nonfinite = {"moving": [], "inputs": []}  # layers whose finding says so
    for row in rows:
        row, layer_findings = _layer_findings(row, causes, nonfinite)
        if any(f.kind != "small_batch" for f in layer_findings):
            causes.append(row.layer)
        _note_nonfinite(nonfinite, row.layer, layer_findings)
        marked.append(row)
        found += layer_findings
    order = {row.layer: i for i, row in enumerate(marked)}
    found.sort(key=lambda f: (-_sortable(f.effect), order[f.layer]))
    return marked, found


def _note_nonfinite(nonfinite, layer, findings):
    """Records a layer whose moving statistics or inputs are not finite (or
    negative variances, NaN once below -epsilon): later non-finite inputs
    may come from it."""
    for numbers in (f.numbers for f in findings if f.kind == "bad_variance"):
        if numbers["nonfinite_channels"] or numbers["negative_variance_channels"]:
            nonfinite["moving"].append(layer)
        if numbers["nonfinite_input_channels"]:
            nonfinite["inputs"].append(layer)


def _nonfinite_source(row, causes, nonfinite):
    """The earlier layer this layer's non-finite inputs come from, or None
    (then they arise here): see the module's rules."""
    if not row.nonfinite_input_channels:
        return None
    if row.own_nonfinite_input_channels:  # in batch-statistics mode too
        return next(iter(nonfinite["inputs"]), None)
    return next(iter(nonfinite["moving"]), causes[-1] if causes else None)


def _layer_findings(row, causes, nonfinite):
    findings = []
    source = _nonfinite_source(row, causes, nonfinite)
    if source is not None:
        row = dataclasses.replace(row, inherited_from=source)
    bad = bad_variance(row, count_inputs=source is None)
    if bad is not None:
        findings.append(bad)
    uses_moving = row.state != "mode=batch"
    effect = row.own_gap if causes else row.gap
    small = small_batch(row)
    # Small batches' variances are biased low ((n - 1) / n on average): a
    # gap in the variance alone is theirs.
    explained = small is not None and row.mean_shift_max < GAP_THRESHOLD
    if row.never_updated and uses_moving:
        findings.append(never_updated(row, effect))
    elif (uses_moving and row.gap >= GAP_THRESHOLD and bad is None and not explained
          and source is None):
        if row.own_gap < GAP_THRESHOLD and causes:
            row = dataclasses.replace(row, inherited_from=causes[-1])
        else:
            findings.append(_gap_finding(row, effect))
    if small is not None:
        findings.append(small)
    return row, findings


def _gap_finding(row, effect):
    if row.state in ("trainable=False", "mode=moving"):
        return frozen_mismatch(row, effect)
    weight = row.initial_weight
    limit = 1.0 if row.initial_weight_source == "counter" else ESTIMATED_WARMING_MAX
    if weight is not None and WARMING_WEIGHT <= weight <= limit:
        return warming_up(row, effect)
    return data_shift(row, effect)


# One function per kind ----------------------------------------------------------


def _gap_numbers(row):
    return {
        "mean_shift_max": row.mean_shift_max,
        "mean_shift_median": row.mean_shift_median,
        "variance_ratio_min": row.variance_ratio_min,
        "variance_ratio_max": row.variance_ratio_max,
        "worst_channels": list(row.worst_channels),
        "gap": row.gap,
        "own_gap": row.own_gap,
    }


def _shift_words(row):
    return (f"mean shift {row.mean_shift_max:.3g} std (median "
            f"{row.mean_shift_median:.3g}), variance ratio "
            f"{row.variance_ratio_min:.3g} to {row.variance_ratio_max:.3g}")


def never_updated(row, effect):
    if row.state == "mode=moving":
        fix = ("mode='moving' never updates them: load trained statistics, or set "
               f"layer.mode = 'auto', run {RECALIBRATE}, and set it back.")
    elif row.state == "trainable=False":
        fix = (f"Set layer.trainable = True, run {RECALIBRATE} (it skips frozen "
               "layers), then freeze the layer again.")
    else:
        fix = (f"Train the model (fit() updates them), or compute them now: {RECALIBRATE}.")
    return Finding(
        row.layer, "never_updated", {**_gap_numbers(row), "updates": row.updates},
        fix, "the moving statistics were never updated (still their initial "
        f"values); on this data: {_shift_words(row)}", effect,
    )


def warming_up(row, effect):
    weight, source = row.initial_weight, row.initial_weight_source
    numbers = {**_gap_numbers(row), "initial_weight": weight,
               "initial_weight_source": source, "updates": row.updates}
    how = (f"momentum**updates, {row.updates} updates" if source == "counter"
           else "estimated from the statistics: the layer keeps no update counter")
    return Finding(
        row.layer, "warming_up", numbers,
        f"{RECALIBRATE} sets them to the exact statistics of representative data "
        "now; or train longer, or use keras_bn_ext.BatchNormalization(debias=True) "
        "(exact after one update).",
        f"the moving statistics still weigh their initial values by {weight:.0%} "
        f"({how}); on this data: {_shift_words(row)}", effect,
    )


def data_shift(row, effect):
    words = "this data differs from what the moving statistics saw"
    if row.own_gap < GAP_THRESHOLD:
        # Its inputs differ between the modes though no earlier BN explains it.
        words = ("its inputs differ between inference and training mode (e.g. "
                 "Dropout before it), so the moving statistics don't fit them")
    return Finding(
        row.layer, "data_shift", _gap_numbers(row),
        f"If this data is what the model will see at inference, {RECALIBRATE} "
        "recomputes the moving statistics on it (in inference mode); to adapt to "
        "each test batch instead, use keras_bn_ext.BatchNormalization(mode='batch') "
        "here (keras_bn_ext.convert_model swaps Keras's layers for ours).",
        f"{words}: {_shift_words(row)}", effect,
    )


def frozen_mismatch(row, effect):
    return Finding(
        row.layer, "frozen_mismatch", {**_gap_numbers(row), "state": row.state},
        "The layer is frozen, so its statistics still describe the data it was "
        "trained on. Let them follow this data: unfreeze it (layer.trainable = True, "
        f"or mode='auto') while fine-tuning, or unfreeze, run {RECALIBRATE} (it "
        "skips frozen layers) and freeze it again.",
        f"frozen ({row.state}) with statistics that don't fit this data: "
        f"{_shift_words(row)}", effect,
    )


def expected_noise(count):
    """RMS change of a normalized output between one batch's statistics and
    the population's: `sqrt(1/n + 1/(2(n-1)))` for `n` Gaussian elements."""
    if count < 2:
        return math.inf
    return math.sqrt(1.0 / count + 1.0 / (2.0 * (count - 1)))


def small_batch(row):
    if row.state in ("trainable=False", "mode=moving"):
        return None
    noise = expected_noise(row.count)
    if noise < SMALL_BATCH_NOISE:
        return None
    needed = next(n for n in range(2, 10**6) if expected_noise(n) < SMALL_BATCH_NOISE)
    numbers = {
        "count": row.count,
        "expected_mean_noise": 1.0 / math.sqrt(max(row.count, 1)),
        "expected_variance_noise": (math.sqrt(2.0 / (row.count - 1))
                                    if row.count > 1 else math.inf),
        "batch_mean_spread": row.batch_mean_spread,
        "batch_variance_spread": row.batch_variance_spread,
        "count_needed": needed,
        "variance_ratio_median": row.variance_ratio_median,
    }
    return Finding(
        row.layer, "small_batch", numbers,
        f"Use batches of at least {needed} elements per channel, or Batch "
        "Renormalization (keras_bn_ext.BatchNormalization(renorm=True)); if memory "
        f"forbids larger batches, freeze the statistics (mode='moving') after {RECALIBRATE}.",
        f"{row.count} element{'' if row.count == 1 else 's'} per channel per batch: "
        "the batch statistics vary by "
        f"about {numbers['expected_mean_noise']:.2g} std (mean) and "
        f"{numbers['expected_variance_noise']:.2g} (relative variance) from batch to batch",
        noise,
    )


def bad_variance(row, count_inputs=True):
    """The finding for bad moving statistics or non-finite inputs (these
    not counted when `count_inputs` is False: inherited), or None."""
    numbers = {
        "nonfinite_channels": row.nonfinite_channels,
        "negative_variance_channels": row.negative_variance_channels,
        "tiny_variance_channels": row.tiny_variance_channels,
        "nonfinite_input_channels": row.nonfinite_input_channels if count_inputs else 0,
    }
    if not any(numbers.values()):
        return None
    if numbers["nonfinite_input_channels"] and not row.nonfinite_channels:
        fix = ("The cause is upstream: find the first layer whose outputs are not "
               "finite (keras_bn_ext.debug.capture(model) records each BN call).")
        summary = f"{row.nonfinite_input_channels} channels of its inputs are not finite"
    else:
        fix = (f"Recompute the statistics: {RECALIBRATE} (our layer's "
               "skip_nonfinite_updates=True, the default, keeps non-finite batches "
               "out of them); for tiny variances a larger epsilon also bounds the scale.")
        summary = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in numbers.items() if v)
        summary = f"moving statistics: {summary}"
    nonfinite = row.nonfinite_channels or numbers["nonfinite_input_channels"]
    effect = math.inf if nonfinite else row.gap
    return Finding(row.layer, "bad_variance", numbers, fix, summary, effect)


def _sortable(effect):
    return math.inf if effect is None or math.isnan(effect) else effect

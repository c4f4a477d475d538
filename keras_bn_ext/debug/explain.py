"""`layer.explain()`: the layer's state and what each kind of call would do."""

from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_bn_ext import backend as backend_ops
from keras_bn_ext.branching import decide_branch
from keras_bn_ext.debug import freshness


def _summary(values, n=6):
    values = np.asarray(values, dtype="float64").ravel()
    if values.size <= n:
        return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"
    return (
        f"{values.size} channels, min {values.min():.6g}, "
        f"mean {values.mean():.6g}, max {values.max():.6g}"
    )


def explain(layer: Any, option_notes: Sequence[str] = ()) -> str:
    """The text of `layer.explain()`.

    Args:
        layer: a keras_bn_ext BatchNormalization (its public attributes).
        option_notes: the words for each option the layer uses (the layer's
            options table words them), e.g. `"batch renormalization"`.
    """
    lines = [f"BatchNormalization layer {layer.name!r} (backend "
             f"{_backend()}, mode={layer.mode!r}, trainable={layer.trainable}, "
             f"momentum={layer.momentum}, epsilon={layer.epsilon:g})."]
    if not layer.built:
        lines.append("Not built yet: it has no moving statistics until it "
                     "sees its first input.")
        lines += _rules(layer)
        return "\n".join(lines)

    mean = backend_ops.host_value(layer.moving_mean)
    var = backend_ops.host_value(layer.moving_variance)
    counter = None
    if layer.num_batches_tracked is not None:
        counter = backend_ops.host_value(layer.num_batches_tracked)
    fresh = freshness.never_updated(layer, mean, var, counter)
    lines.append(f"Moving mean:     {_summary(mean)}")
    lines.append(f"Moving variance: {_summary(var)}")
    if counter is not None:
        lines.append(f"Updated {int(counter):,} times.")
    elif fresh:
        lines.append("The moving statistics were never updated: they still "
                     "hold their initial values.")
    else:
        lines.append("The moving statistics differ from their initial "
                     "values, so they were updated (or assigned).")
    if option_notes:
        lines.append("Options: " + ", ".join(option_notes) + ".")
    lines += _rules(layer)
    lines.append("What predict() will do to an input now:")
    lines.append("  " + _predict_effect(layer, mean, var, fresh))
    return "\n".join(lines)


def _rules(layer):
    lines = ["Which statistics each kind of call uses:"]
    cases = [
        ("training=True (fit(), train_on_batch)", True, layer.trainable),
        ("training=False (evaluate(), predict())", False, layer.trainable),
        ("training=None (a direct call)", None, layer.trainable),
    ]
    if layer.trainable:
        cases.append(("training=True with trainable=False (frozen)", True, False))
    for label, training, trainable in cases:
        decision = decide_branch(training, trainable, layer.mode)
        lines.append(f"  - {label}: {decision.branch} statistics, "
                     f"{'updates' if decision.update else 'no update'}. "
                     f"{decision.reason}")
    return lines


def _predict_effect(layer, mean, var, fresh):
    if layer.mode == "batch":
        return ("mode='batch': each batch is normalized with its own "
                "statistics; the moving statistics are not used.")
    eps = layer.epsilon
    if fresh and np.all(mean == 0) and np.all(var == 1):
        if layer.mode == "moving":
            advice = ("mode='moving' never updates them: load trained "
                      "statistics (set_weights) or use mode='auto'.")
        else:
            advice = "Train first (fit() or training=True), or use mode='batch'."
        return (f"y ≈ x / sqrt({1 + eps:g}) per channel (times gamma, plus "
                "beta): the moving statistics are still at their initial "
                f"values 0 and 1, so the batch is NOT normalized. {advice}")
    return (f"y = (x - moving_mean) / sqrt(moving_variance + {eps:g}) * gamma "
            "+ beta, per channel, whatever the batch: the batch's own "
            "statistics are not used.")


def _backend():
    import keras

    return keras.backend.backend()

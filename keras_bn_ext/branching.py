"""The branch rule: which statistics a call uses, whether it updates, and why.

One pure function, `decide_branch`, resolved at trace time (it looks only at
Python values), so compiled code contains just the chosen branch.

| mode     | training      | trainable | statistics used | moving stats updated |
|----------|---------------|-----------|-----------------|----------------------|
| "auto"   | True          | True      | batch           | yes                  |
| "auto"   | True          | False     | moving          | no                   |
| "auto"   | False / None  | any       | moving          | no                   |
| "moving" | any           | any       | moving          | no                   |
| "batch"  | True          | True      | batch           | yes                  |
| "batch"  | otherwise     | any       | batch           | no                   |
"""

import dataclasses
import enum
from typing import Any

MODES = ("auto", "moving", "batch")


class Branch(str, enum.Enum):
    """The statistics a call normalizes with."""

    BATCH = "batch"
    MOVING = "moving"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Decision:
    """What `decide_branch` decided for one call.

    Attributes:
        branch: the statistics the call normalizes with.
        update: whether the call updates the moving statistics.
        reason: why, in a sentence a person understands.
    """

    branch: Branch
    update: bool
    reason: str


def _as_python_bool(training: Any) -> bool | None:
    if training is None or isinstance(training, bool):
        return training
    try:  # NumPy bools, 0-d arrays, eager tensors
        return bool(training)
    except Exception as e:
        raise ValueError(
            "`training` must be a Python bool or None when calling "
            f"BatchNormalization. Received: training={training!r}"
        ) from e


def decide_branch(
    training: bool | None, trainable: bool, mode: str = "auto"
) -> Decision:
    """Returns the `Decision` for a call.

    Args:
        training: the `training` argument the call received (bool or None).
        trainable: the layer's `trainable` attribute.
        mode: "auto" (Keras's rule), "moving" (always frozen) or "batch"
            (always this batch's statistics).

    Examples:
        >>> decide_branch(None, True).branch
        <Branch.MOVING: 'moving'>
        >>> decide_branch(True, True).update
        True
    """
    training = _as_python_bool(training)
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")

    if mode == "moving":
        return Decision(
            Branch.MOVING,
            False,
            "mode='moving': the layer always normalizes with its moving "
            f"statistics and never updates them (training={training}).",
        )
    if mode == "batch":
        return _decide_batch_mode(training, trainable)
    return _decide_auto(training, trainable)


def _decide_batch_mode(training: bool | None, trainable: bool) -> Decision:
    if training and trainable:
        return Decision(
            Branch.BATCH,
            True,
            "mode='batch' with training=True: this batch's statistics were "
            "used and the moving statistics were updated.",
        )
    why = "trainable=False" if training else f"training={training}"
    return Decision(
        Branch.BATCH,
        False,
        "mode='batch': this batch's statistics were used (even outside "
        f"training); the moving statistics were not updated ({why}).",
    )


def _decide_auto(training: bool | None, trainable: bool) -> Decision:
    """Keras's rule."""
    if training and trainable:
        return Decision(
            Branch.BATCH,
            True,
            "training=True (fit() or an explicit call): this batch's "
            "statistics were used and the moving statistics were updated.",
        )
    if training:
        return Decision(
            Branch.MOVING,
            False,
            "trainable=False: the layer is frozen, so the moving statistics "
            "were used (and not updated) although training=True.",
        )
    if training is None:
        return Decision(
            Branch.MOVING,
            False,
            "training=None: Keras defaults to inference, so the moving "
            "statistics were used (predict() and direct calls without "
            "training=True do this).",
        )
    return Decision(
        Branch.MOVING,
        False,
        "training=False (evaluate(), predict() or an explicit call): the "
        "moving statistics were used and not updated.",
    )

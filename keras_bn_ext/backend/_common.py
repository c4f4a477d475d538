"""Helpers shared by the per-backend modules."""

import numpy as np
from keras.src.backend.common.symbolic_scope import in_symbolic_scope


def to_numpy(payload, convert):
    return {key: np.asarray(convert(value)) for key, value in payload.items()}


def is_shape_inference():
    """True inside Keras's shape-inference pass (not a real execution)."""
    return in_symbolic_scope()

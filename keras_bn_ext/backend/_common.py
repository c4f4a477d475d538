"""Helpers shared by the per-backend modules."""

import numpy as np
from keras.src.backend.common.symbolic_scope import in_symbolic_scope


def to_numpy(payload, convert):
    return {key: np.asarray(convert(value)) for key, value in payload.items()}


def is_shape_inference():
    """True inside Keras's shape-inference pass (not a real execution)."""
    return in_symbolic_scope()


# Defaults for backends whose variables can always be read on the host and
# that run eagerly or fuse elementwise work themselves.


def moments(x, axes):
    # None: use the portable shifted formula of keras_bn_ext.statistics.
    return None


def accumulator_dtype(dtype, count=None):
    # JAX/XLA and torch reduce float32 accurately (pairwise/vectorized).
    return dtype


def fused_batch_norm_training(x, axis, gamma, beta, epsilon):
    # No native kernel to prefer: XLA fuses the portable formula.
    return None


def fused_batch_norm_inference(x, channel_axes, mean, variance, gamma, beta,
                               epsilon):
    return None


def is_compiling():
    return False


def multiply_add(x, scale, offset):
    return x * scale + offset


def value_moved_to_trainer(variable):
    return False


def call_on_host_if(predicate, fn):
    raise NotImplementedError  # never needed: variables are readable here


def callbacks_supported():
    return True, ""


def all_reduce_sum(tensors):
    # Not distributed (or, under JAX sharding, reductions are global already).
    return tensors


def flush():
    pass

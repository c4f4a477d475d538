"""Defaults for the per-backend modules: what a backend that needs nothing
special does. Each backend module overrides only what differs."""

import contextlib

import numpy as np
from keras import ops
from keras.src.backend.common.symbolic_scope import in_symbolic_scope


def to_numpy(payload, convert):
    return {key: np.asarray(convert(value)) for key, value in payload.items()}


def is_shape_inference():
    """True inside Keras's shape-inference pass (not a real execution)."""
    return in_symbolic_scope()


# Statistics kernels ------------------------------------------------------------


def custom_vjp(forward, backward):
    """`f(*args)` computed by `forward(*args) -> (outputs, residuals)` whose
    gradient is `backward(residuals, output_cotangents) -> arg_gradients`.

    Default: no custom gradient, autodiff differentiates `forward` itself.
    """

    def f(*args):
        return forward(*args)[0]

    return f


def channel_sum(x, axes):
    """Sum over `axes` (keepdims), accurate in float32 over many elements."""
    return ops.sum(x, axis=axes, keepdims=True)


def native_batch_norm(x, axes, gamma, beta, epsilon):
    """`(outputs, mean, variance)` from a native training kernel, or None
    where the portable kernel is as good (XLA fuses it)."""
    return None


def multiply_add(x, scale, offset):
    """`x * scale + offset`, where `x` is a temporary the caller does not
    use again (XLA fuses it; torch computes it in place, one kernel)."""
    return x * scale + offset


def reshape(x, shape):
    """`keras.ops.reshape(x, shape)` for a backend tensor `x`."""
    return ops.reshape(x, shape)


# Compilation and evaluation ---------------------------------------------------


def jit_compatible(debugging):
    return True


def set_model_jit(model, debugging):
    pass


def no_grad():
    return contextlib.nullcontext()


# Host callbacks and variable reads ------------------------------------------


def is_compiling():
    return False


def value_moved_to_trainer(variable):
    return False


def stored_value(variable):
    """The value stored on the variable where a stateless scope traces
    another (JAX); None elsewhere: `host_value` already reads it."""
    return None


def call_on_host_if(predicate, fn):
    raise NotImplementedError  # never needed: variables are readable here


def callbacks_supported():
    return True, ""


def all_reduce_sum(tensors):
    # Not distributed (or, under JAX sharding, reductions are global already).
    return tensors


def is_distributed():
    return False


def stages_callbacks():
    """Whether host callbacks made now are staged into a compiled step (so
    several can be packed into one), rather than run right away."""
    return False


def replica_id():
    """This replica's index (an int or a scalar tensor) where each replica
    computes its own copy of the layer's call, else None."""
    return None


def widest_float():
    """The widest float dtype the backend computes in: "float64"."""
    return "float64"


def flush():
    """Waits until every host callback issued so far has run (JAX runs them
    asynchronously); a no-op where callbacks run inline."""

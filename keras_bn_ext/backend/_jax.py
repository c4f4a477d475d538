"""JAX: the custom gradient as `jax.custom_vjp`, host callbacks through
`jax.debug.callback` (ordered)."""

import jax
import numpy as np


def custom_vjp(forward, backward):
    # grad-of-grad works (both functions are ordinary JAX code); forward-mode
    # (jax.jvp, jacfwd) is not defined for a custom_vjp.
    @jax.custom_vjp
    def f(*args):
        return forward(*args)[0]

    def f_backward(residuals, cotangents):
        return tuple(backward(residuals, cotangents))

    f.defvjp(forward, f_backward)
    return f


def host_callback(fn, payload):
    keys = list(payload)

    def run_on_host(*values):
        fn(**{k: np.asarray(v) for k, v in zip(keys, values)})

    # Under eval_shape (Keras's shape inference) nothing executes, so no
    # record; under jit it runs once per real execution. Ordered callbacks
    # keep program order but JAX refuses them on more than one device, so
    # there they are unordered (the runtime still runs them in issue order)
    # and see the global (all-gathered) values: one record per execution.
    ordered = jax.device_count() == 1
    jax.debug.callback(run_on_host, *[payload[k] for k in keys], ordered=ordered)


def stages_callbacks():
    return True


def host_value(variable):
    # Inside stateless_call (Keras's JAX trainer, user jit loops) the real
    # value is a tracer in the stateless scope, and the trainer may have
    # purged `_value`: then it cannot be read on the host.
    try:
        value = variable.value
    except Exception:
        return None
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def stored_value(variable):
    # The array the variable holds, even inside a stateless scope (where
    # `.value` is the traced one); None once the trainer purged it.
    value = getattr(variable, "_value", None)
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def flush():
    jax.effects_barrier()


def value_moved_to_trainer(variable):
    """Keras's JAX trainer moves variable values into its compiled function:
    predict/evaluate purge them (`_value` is None), predict_on_batch and
    test_on_batch do not, but there too the function sees them as tracers
    (its arguments, in a stateless scope), which no host read can see."""
    if getattr(variable, "_value", 0) is None:
        return True
    try:
        return isinstance(variable.value, jax.core.Tracer)
    except Exception:
        return False


def call_on_host_if(predicate, fn):
    """Runs `fn()` on the host, at execution time, when `predicate` is true."""
    jax.lax.cond(predicate, lambda: jax.debug.callback(fn), lambda: None)


def widest_float():
    # JAX truncates float64 to float32 (with a warning per call) unless
    # x64 is enabled.
    return "float64" if jax.config.read("jax_enable_x64") else "float32"

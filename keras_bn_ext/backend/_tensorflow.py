"""TensorFlow: the custom gradient as `tf.custom_gradient`, float32 sums
blocked in two levels, host callbacks through `tf.py_function`."""

import logging
import math

import tensorflow as tf

from keras_bn_ext.backend._common import to_numpy


def custom_vjp(forward, backward):
    @tf.custom_gradient
    def f(*args):
        outputs, residuals = forward(*args)

        def grad(*cotangents):
            cotangents = [
                tf.zeros_like(o) if c is None else c
                for o, c in zip(outputs, cotangents)
            ]
            return list(backward(residuals, cotangents))

        return outputs, grad

    return f


# The longest run of values one reduction adds up outside XLA.
_BLOCK = 512


def channel_sum(x, axes):
    """Without XLA, TensorFlow sums over outer axes sequentially in float32:
    over 1M values per channel the variance is off by 3e-4. Summing one axis
    at a time, a long axis in blocks of 512 (a free reshape when its size is
    static and divisible), keeps every partial sum short: 2e-7. Under XLA,
    see `_xla_sum`."""
    if _in_xla_context():
        return _xla_sum(x, axes)
    for axis in sorted(axes, reverse=True):
        size = x.shape[axis]
        if size is not None and size > _BLOCK and size % _BLOCK == 0:
            shape = tf.concat(
                [tf.shape(x)[:axis], [size // _BLOCK, _BLOCK], tf.shape(x)[axis + 1:]],
                axis=0,
            )
            blocks = tf.reduce_sum(tf.reshape(x, shape), axis=axis + 1)
            x = tf.reduce_sum(blocks, axis=axis, keepdims=True)
        else:
            x = tf.reduce_sum(x, axis=axis, keepdims=True)
    return x


# Rows of a 2-D input summed first in this many blocks, under XLA.
_XLA_ROW_BLOCKS = 32


def _xla_sum(x, axes):
    """A keepdims sum over `axes` in two levels, outermost axis first.

    XLA's CPU loop for one reduction over several axes that keeps the
    innermost one (NHWC) is 4-7x slower than summing over the batch axis
    first, into a (H, W, C) partial sum, then over the rest: 4.5 ms
    against 0.66 ms for (32, 32, 32, 64); NCHW 0.86 against 0.68. A 2-D
    input is split into 32 blocks of rows the same way (a free reshape).
    XLA would merge the two sums back into one: a select between them that
    keeps every value (finite or not) holds them apart. (An optimization
    barrier does not: XLA's CPU pipeline removes it before fusion.)
    """
    shape = x.shape
    keepdims = [
        1 if a in axes else (d if d is not None else tf.shape(x)[a])
        for a, d in enumerate(shape)
    ]
    if len(shape) == 2 and list(axes) == [0] and shape[1] is not None:
        blocks = math.gcd(shape[0] or 0, _XLA_ROW_BLOCKS)
        if blocks >= 4:
            x = tf.reshape(x, (blocks, shape[0] // blocks, shape[1]))
            axes = [0, 1]
    if 0 not in axes or len(axes) < 2:
        return tf.reduce_sum(x, axis=axes, keepdims=True)
    partial = tf.reduce_sum(x, axis=0)
    partial = tf.where(tf.math.is_finite(partial), partial, partial + partial)
    total = tf.reduce_sum(partial, axis=[a - 1 for a in axes if a != 0])
    return tf.reshape(total, keepdims)


def jit_compatible(debugging):
    # A layer that debugs needs host callbacks, which XLA cannot run: with
    # `supports_jit` False, Keras's jit_compile="auto" picks graph mode.
    return not debugging


def set_model_jit(model, debugging):
    """A model compiled with jit_compile=True runs as a plain tf.function
    while any of its layers debugs through host callbacks (`debugging`); its
    XLA setting comes back after."""
    if not hasattr(model, "_jit_compile"):
        return
    saved = getattr(model, "_keras_bn_ext_saved_jit_compile", None)
    if debugging and model._jit_compile:
        model._keras_bn_ext_saved_jit_compile = model._jit_compile
        model._jit_compile = False
        logging.getLogger("keras_bn_ext").info(
            "keras_bn_ext: model %r runs without XLA while debugging "
            "(TensorFlow cannot call back to Python from XLA).",
            model.name,
        )
    elif not debugging and saved is not None:
        model._jit_compile = saved
        model._keras_bn_ext_saved_jit_compile = None


def _in_xla_context():
    from tensorflow.python.ops import control_flow_util

    graph = tf.compat.v1.get_default_graph()
    return control_flow_util.GraphOrParentsInXlaContext(graph)


def callbacks_supported():
    if tf.executing_eagerly():
        return True, ""
    if _in_xla_context():
        return False, (
            "TensorFlow cannot call back to Python from XLA-compiled code "
            "(jit_compile=True)"
        )
    return True, ""


def host_callback(fn, payload):
    if tf.executing_eagerly():
        fn(**to_numpy(payload, lambda t: t.numpy()))
        return
    keys = list(payload)

    def run_on_host(*values):
        fn(**{k: v.numpy() for k, v in zip(keys, values)})
        return []

    # A stateful op: auto control dependencies keep it in program order and
    # run it although nothing consumes its (empty) output.
    tf.py_function(run_on_host, [payload[k] for k in keys], Tout=[])


def stages_callbacks():
    return not tf.executing_eagerly()


def host_value(variable):
    try:
        with tf.init_scope():
            return variable._value.numpy()
    except Exception:
        return None


def is_distributed():
    replica_ctx = tf.distribute.get_replica_context()
    return replica_ctx is not None and replica_ctx.num_replicas_in_sync > 1


def replica_id():
    if not is_distributed():
        return None
    return tf.distribute.get_replica_context().replica_id_in_sync_group


def all_reduce_sum(tensors):
    if not is_distributed():
        return tensors
    replica_ctx = tf.distribute.get_replica_context()
    return [
        replica_ctx.all_reduce(tf.distribute.ReduceOp.SUM, t) for t in tensors
    ]

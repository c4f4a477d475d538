"""TensorFlow: the custom gradient as `tf.custom_gradient`, float32 sums
blocked in two levels, host callbacks through `tf.py_function`."""

import logging

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
    static and divisible), keeps every partial sum short: 2e-7. XLA's own
    reductions are accurate and fuse better whole."""
    if _in_xla_context():
        return tf.reduce_sum(x, axis=axes, keepdims=True)
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


def jit_compatible(debugging):
    # A layer that debugs needs host callbacks, which XLA cannot run: with
    # `supports_jit` False, Keras's jit_compile="auto" picks graph mode.
    return not debugging


def set_model_jit(model, debugging):
    """A model compiled with jit_compile=True runs as a plain tf.function
    while any of its layers debugs; its XLA setting comes back after."""
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

"""TensorFlow: host callbacks through `tf.py_function`."""

import tensorflow as tf

from keras_bn_ext.backend._common import to_numpy


def accumulator_dtype(dtype, count=None):
    # TensorFlow's float32 reductions accumulate with little pairing: the
    # variance's relative error grows with the elements per channel (~1e-4
    # at 65k). float64 accumulators keep ~1e-7 but cost up to 1.5x a train
    # step, so they are used only where float32 loses: large or unknown
    # (dynamic) counts.
    if dtype == "float32" and (count is None or count > 8192):
        return "float64"
    return dtype


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


def host_value(variable):
    try:
        with tf.init_scope():
            return variable._value.numpy()
    except Exception:
        return None


def all_reduce_sum(tensors):
    replica_ctx = tf.distribute.get_replica_context()
    if replica_ctx is None or replica_ctx.num_replicas_in_sync == 1:
        return tensors
    return [
        replica_ctx.all_reduce(tf.distribute.ReduceOp.SUM, t) for t in tensors
    ]

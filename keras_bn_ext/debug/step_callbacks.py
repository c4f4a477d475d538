"""One host callback per compiled step, carrying every layer's record.

A host callback costs ~0.1-0.5 ms on JAX whatever it carries (plus ~20 us
per argument), so a model with 50 BatchNormalization layers would pay it 50
times a step. While a model's step is traced inside `one_per_step()` (the
steps `debug.retrace(model)` wraps, which `debug.capture(model)` and
`StatsMonitor` use), each layer's payload is queued instead, and at the end
of the step one callback carries them all, packed in a single array; on the
host they are unpacked and the records made in the layers' order. Outside
such a step (eager calls, user jit functions), each call makes its own
callback.
"""

import contextlib
import functools
import threading

import numpy as np
from keras import ops

from keras_bn_ext import backend as backend_ops

# [(fn, payload)] while a wrapped step is being traced. Per thread: a TF
# MirroredStrategy traces each replica's step in a thread of its own.
_state = threading.local()


def host_callback(fn, payload):
    """`fn(**numpy_payload)` at every real execution: queued when inside a
    wrapped step being traced, else right away."""
    if backend_ops.is_shape_inference():
        return  # Keras's shape inference: not a real execution, no record
    queue = getattr(_state, "queue", None)
    if not backend_ops.stages_callbacks():
        backend_ops.host_callback(fn, payload)
    elif queue is not None:
        queue.append((fn, payload))
    else:
        _issue([(fn, payload)])  # one array: each argument costs ~20-50 us


@contextlib.contextmanager
def one_per_step():
    """Queues the callbacks made inside the block; issues one for all."""
    outer = getattr(_state, "queue", None)
    _state.queue = queued = []
    try:
        yield
    finally:
        _state.queue = outer
    if queued:
        _issue(queued)


def _issue(queued):
    payloads = [
        {key: ops.convert_to_tensor(value) for key, value in payload.items()}
        for _, payload in queued
    ]
    # float32 holds the statistics, flags and counts up to 2**24 exactly;
    # float64 statistics (float64 inputs) keep their precision.
    dtypes = {str(v.dtype) for payload in payloads for v in payload.values()}
    packed_dtype = "float64" if "float64" in dtypes else "float32"
    tensors, layout = [], []
    for payload in payloads:
        fields = []
        for key, value in payload.items():
            shape = tuple(value.shape)
            if None in shape:
                # Unknown when traced (TF's None batch, e.g. per virtual
                # batch counts): the shape travels in the packed array.
                tensors.append(ops.stack(
                    [ops.cast(d, packed_dtype) for d in ops.shape(value)]
                ))
            fields.append((key, shape, str(value.dtype)))
            tensors.append(ops.reshape(ops.cast(value, packed_dtype), [-1]))
        layout.append(fields)
    packed = ops.concatenate(tensors) if len(tensors) > 1 else tensors[0]
    functions = [fn for fn, _ in queued]
    backend_ops.host_callback(
        functools.partial(_unpack_and_run, functions, layout), {"packed": packed}
    )


def _unpack_and_run(functions, layout, packed):
    offset = 0
    for fn, fields in zip(functions, layout):
        values = {}
        for key, shape, dtype in fields:
            if None in shape:
                shape = tuple(int(d) for d in packed[offset:offset + len(shape)])
                offset += len(shape)
            size = int(np.prod(shape, dtype=np.int64))
            flat = packed[offset:offset + size]
            offset += size
            values[key] = _restore(flat.reshape(shape), dtype)
        fn(**values)


def _restore(array, dtype):
    if "bool" in dtype:
        return array > 0.5
    if "int" in dtype:
        return np.rint(array).astype(np.int64)
    return array


def wrap_steps(model):
    """Makes `model`'s train/test/predict steps issue one callback each (once
    per model; `debug.retrace` calls it)."""
    if getattr(model, "_keras_bn_ext_steps_wrapped", False):
        return
    # JAX's trainer differentiates `compute_loss_and_updates`: the queued
    # values are tracers of that transformation and must be issued inside it
    # (the nested queue does; the outer step's queue then stays empty).
    for name in ("train_step", "test_step", "predict_step", "compute_loss_and_updates"):
        step = getattr(model, name, None)
        if step is not None:
            setattr(model, name, _one_per_step(step))
    model._keras_bn_ext_steps_wrapped = True


def _one_per_step(step):
    @functools.wraps(step)
    def wrapped(*args, **kwargs):
        with one_per_step():
            return step(*args, **kwargs)

    return wrapped

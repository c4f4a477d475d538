"""One host callback per compiled step, carrying every layer's record; on
JAX and TensorFlow, no callback at all in Keras's compiled steps.

A host callback costs ~0.1-0.5 ms on JAX whatever it carries (plus ~20 us
per argument), so a model with 50 BatchNormalization layers would pay it 50
times a step. While a model's step is traced inside `one_per_step()` (the
steps `debug.retrace(model)` wraps, which `debug.capture(model)` and
`StatsMonitor` use), each layer's payload is queued instead, and at the end
of the step one callback carries them all, packed in a single array; on the
host they are unpacked and the records made in the layers' order. Outside
such a step (eager calls, user jit functions), each call makes its own
callback, its payload packed the same way.

On JAX, a compiled function with any host callback also loses JAX's C++
dispatch path: each call then costs Python work per argument, ~2 ms for a
train step with 10 layers' state. So in Keras's JAX train/test/predict
steps (one step per execution) the packed array is returned with the
step's outputs instead: no callback, same records, same order. A train or
test step's records are made when its logs are first read (by `fit`'s
callbacks, `train_on_batch`'s return, ...), when the next step has been
dispatched, or at `flush()`, whichever comes first: blocking on the step as
soon as it returns would stop the host from running ahead (syncing state,
preparing the next batch) while the device computes. TensorFlow's steps
return their records the same way (no `tf.py_function`, which costs ~0.2 ms
a step and rules out XLA), where a strategy's replicas do not each trace
their own copy of the step.
"""

import contextlib
import functools
import threading

import keras
import numpy as np
from keras import ops

from keras_bn_ext import backend as backend_ops

_BACKEND = keras.backend.backend()  # fixed for the process

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
    outer_returns = getattr(_state, "queue_returns", False)
    _state.queue, _state.queue_returns = [], False
    queued = _state.queue
    try:
        yield
    finally:
        _state.queue, _state.queue_returns = outer, outer_returns
    if queued:
        _issue(queued)


def _issue(queued):
    backend_ops.host_callback(_run_packed, {"packed": _pack(queued)})


# id -> (functions, layout) of each packed form traced; the id travels as
# the packed array's first element, so the host knows how to unpack it.
_layouts: dict[int, tuple] = {}


def _pack(queued):
    """One flat array carrying every queued payload, led by its layout id."""
    payloads = [
        {key: ops.convert_to_tensor(value) for key, value in payload.items()}
        for _, payload in queued
    ]
    # float32 holds the statistics, flags and counts up to 2**24 exactly;
    # float64 statistics (float64 inputs) keep their precision.
    dtypes = {str(v.dtype) for payload in payloads for v in payload.values()}
    packed_dtype = "float64" if "float64" in dtypes else "float32"
    layout_id = len(_layouts) + 1
    tensors, layout = [ops.full((1,), layout_id, packed_dtype)], []
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
            size = None if None in shape else int(np.prod(shape, dtype=np.int64))
            fields.append((key, shape, size, _restorer(str(value.dtype))))
            tensors.append(ops.reshape(ops.cast(value, packed_dtype), [-1]))
        layout.append(fields)
    _layouts[layout_id] = ([fn for fn, _ in queued], layout)
    return ops.concatenate(tensors)


def _run_packed(packed):
    """Makes the records of one or more packed arrays laid end to end (a
    JAX predict with steps_per_execution > 1 concatenates its steps')."""
    packed = np.asarray(packed).reshape(-1)
    offset = 0
    while offset < packed.size:
        functions, layout = _layouts[int(packed[offset])]
        offset = _unpack_and_run(functions, layout, packed, offset + 1)


def _unpack_and_run(functions, layout, packed, offset):
    """Runs each function on its fields, read from `packed` at `offset`;
    returns the offset after them."""
    for fn, fields in zip(functions, layout):
        values = {}
        for key, shape, size, restore in fields:
            if size is None:
                shape = tuple(int(d) for d in packed[offset:offset + len(shape)])
                offset += len(shape)
                size = int(np.prod(shape, dtype=np.int64))
            value = packed[offset:offset + size]
            if value.shape != shape:
                value = value.reshape(shape)
            values[key] = value if restore is None else restore(value)
            offset += size
        fn(**values)
    return offset


def _restorer(dtype):
    """The function giving a field its dtype back from the packed floats
    (None for a float field, which needs none)."""
    if "bool" in dtype:
        return lambda array: array > 0.5
    if "int" in dtype:
        return lambda array: np.rint(array).astype(np.int64)
    return None  # a float: as it is


def wrap_steps(model):
    """Makes `model`'s train/test/predict steps issue one callback each (once
    per model; `debug.retrace` calls it); on JAX and TensorFlow, return their
    records."""
    if getattr(model, "_keras_bn_ext_steps_wrapped", False):
        return
    if _BACKEND == "jax":
        _return_records_from_jax_steps(model)
    elif _BACKEND == "tensorflow":
        _return_records_from_tf_steps(model)
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


# Keras's JAX steps -------------------------------------------------------------

_RECORDS = "_keras_bn_ext_records"
_OUTPUTS = "_keras_bn_ext_outputs"


def _return_records_from_jax_steps(model):
    """Keras's JAX `train_step`/`test_step` return `(logs, state)` and
    `predict_step` `(outputs, state)`, one step per compiled call: the
    packed records leave as one more log (or beside the outputs) and the
    functions `make_*_function` builds take them out and make the records.

    Inside `jax.value_and_grad` the statistics are tracers of the gradient:
    `compute_loss_and_updates` returns them through its auxiliary outputs
    (appended to the non-trainable variables, which the step passes through
    untouched) and the step takes them back. With `steps_per_execution > 1`
    only the last step's logs come back: train and test steps then keep one
    callback per step (predict concatenates every step's outputs: no need).
    """
    clu = model.compute_loss_and_updates

    @functools.wraps(clu)
    def compute_loss_and_updates(*args, **kwargs):
        if not getattr(_state, "returning", False):
            return clu(*args, **kwargs)
        _state.returning = False  # nested calls (none in Keras) call back
        queued = []
        with _queue_into(queued):
            loss, (unscaled, y_pred, non_trainable, metrics) = clu(*args, **kwargs)
        if queued:
            non_trainable = list(non_trainable) + [_pack(queued)]
        return loss, (unscaled, y_pred, non_trainable, metrics)

    def logs_step(step):
        @functools.wraps(step)
        def wrapped(state, data):
            if model.steps_per_execution > 1:
                return step(state, data)
            _state.returning = True
            try:
                logs, state = step(state, data)
            finally:
                _state.returning = False
            expected = len(model.non_trainable_variables)
            if len(state[1]) == expected + 1:
                logs = dict(logs)
                logs[_RECORDS] = state[1][-1]
                state = (state[0], list(state[1][:expected])) + tuple(state[2:])
            return logs, state

        return wrapped

    predict_step = model.predict_step

    @functools.wraps(predict_step)
    def predict_with_records(state, data):
        queued = []
        with _queue_into(queued):
            outputs, non_trainable = predict_step(state, data)
        if queued:
            outputs = {_OUTPUTS: outputs, _RECORDS: _pack(queued)}
        return outputs, non_trainable

    model.compute_loss_and_updates = compute_loss_and_updates
    model.train_step = logs_step(model.train_step)
    model.test_step = logs_step(model.test_step)
    model.predict_step = predict_with_records
    _take_records_out_of_step_functions(model)


def _take_records_out_of_step_functions(model):
    for make, attr in (("make_train_function", "train_function"),
                       ("make_test_function", "test_function"),
                       ("make_predict_function", "predict_function")):
        setattr(model, make, _making_records(model, getattr(model, make), attr))


def _making_records(model, make, attr):
    """`make_*_function`, whose function makes the records its steps return."""

    @functools.wraps(make)
    def wrapped(force=False):
        make(force=force)
        function = getattr(model, attr)
        if function is not None and not hasattr(function, "_keras_bn_ext"):
            setattr(model, attr, _records_taken_out(function, _BACKEND == "jax"))
        return getattr(model, attr)

    return wrapped


def _records_taken_out(function, returns_state):
    """The step function, taking out the records its steps return: JAX's
    `function(state, iterator) -> (outputs, state)` (`returns_state`),
    TensorFlow's `function(iterator) -> outputs` (which traces its steps, in
    this thread, the first time it runs)."""

    @functools.wraps(function)
    def wrapped(*args):
        _state.taking_out = True
        try:
            result = function(*args)
        finally:
            _state.taking_out = False
        # This step is dispatched: the device stays busy while the host
        # makes the records of the steps before it.
        make_pending_records()
        if returns_state:
            outputs, state = result
            return _take_out(outputs), state
        return _take_out(result)

    wrapped._keras_bn_ext = True
    return wrapped


def _take_out(outputs):
    if not (isinstance(outputs, dict) and _RECORDS in outputs):
        return outputs
    if _OUTPUTS in outputs:
        # Predict's outputs go straight to its callbacks and result.
        _run_packed(outputs[_RECORDS])
        return outputs[_OUTPUTS]
    _pending.append(outputs[_RECORDS])
    return _StepLogs({k: v for k, v in outputs.items() if k != _RECORDS})


# Keras's TensorFlow steps ------------------------------------------------------


def _return_records_from_tf_steps(model):
    """Keras's TensorFlow `train_step`/`test_step` return logs and
    `predict_step` outputs; traced by a function of `make_*_function` (the
    first time it runs), their packed records leave as one more log, or
    beside the outputs, and that function takes them out: no
    `tf.py_function` (about 0.2 ms a step on CPU), and records under XLA
    too. Elsewhere (a distribution strategy's replicas, which trace in
    threads of their own and make one record each; train and test with
    `steps_per_execution > 1`, whose logs are the last step's; a step called
    from the user's own function) the step keeps one callback.
    """

    def returning(step, outputs_key):
        @functools.wraps(step)
        def wrapped(data):
            if not _returns_records(model, outputs_key):
                return step(data)
            queued = []
            with _queue_into(queued):
                outputs = step(data)
            if not queued:
                return outputs
            if outputs_key == _OUTPUTS:
                return {_OUTPUTS: outputs, _RECORDS: _pack(queued)}
            return {**outputs, _RECORDS: _pack(queued)}

        return wrapped

    model.train_step = returning(model.train_step, _RECORDS)
    model.test_step = returning(model.test_step, _RECORDS)
    model.predict_step = returning(model.predict_step, _OUTPUTS)
    _take_records_out_of_step_functions(model)


def _returns_records(model, outputs_key):
    if not getattr(_state, "taking_out", False) or backend_ops.is_distributed():
        return False
    # Predict concatenates every step's outputs (records included); train
    # and test keep only the last step's logs.
    return outputs_key == _OUTPUTS or model.steps_per_execution == 1


def steps_return_records(model):
    """Whether `model`'s compiled train/test/predict steps return their
    records (JAX; TensorFlow with one replica and one step per execution):
    no host callback in them, so TensorFlow may keep XLA while debugging."""
    strategy = getattr(model, "distribute_strategy", None)
    return (
        _BACKEND in ("jax", "tensorflow")
        and getattr(strategy, "num_replicas_in_sync", 1) == 1
        and getattr(model, "steps_per_execution", 1) == 1
    )


def returns_with_step():
    """Whether records made now leave with a compiled step's outputs (no
    host callback needed, so XLA is no obstacle)."""
    return getattr(_state, "queue_returns", False)


# Packed records of train/test steps that returned, oldest first, made by
# `make_pending_records()`; a lock, since Keras may read logs (and so make
# records) on its callback thread.
_pending: list = []
_pending_lock = threading.Lock()


def make_pending_records():
    """Makes the records of every step that returned so far, in order."""
    if not _pending:
        return  # every step of a model that once debugged comes here
    if getattr(_state, "making", False):
        return  # a hook flushing from inside a record: the loop goes on
    with _pending_lock:
        _state.making = True
        try:
            while _pending:
                _run_packed(_pending.pop(0))
        finally:
            _state.making = False


def flush():
    """Every record of what ran so far is made (and every hook called)."""
    make_pending_records()
    backend_ops.flush()


class _StepLogs(dict):
    """A train/test step's logs, whose first reading makes the step's records
    (and those of the steps before it): they are there when anything looks
    at the step's results, the way a host callback's would be."""

    def _read(self):
        make_pending_records()

    def __getitem__(self, key):
        self._read()
        return super().__getitem__(key)

    def __iter__(self):
        self._read()
        return super().__iter__()

    def __contains__(self, key):
        self._read()
        return super().__contains__(key)

    def get(self, key, default=None):
        self._read()
        return super().get(key, default)

    def items(self):
        self._read()
        return super().items()

    def keys(self):
        self._read()
        return super().keys()

    def values(self):
        self._read()
        return super().values()


@contextlib.contextmanager
def _queue_into(queued):
    """Queues the payloads made inside the block into `queued`, which the
    caller returns with the step's outputs."""
    outer = getattr(_state, "queue", None)
    outer_returns = getattr(_state, "queue_returns", False)
    _state.queue, _state.queue_returns = queued, True
    try:
        yield
    finally:
        _state.queue, _state.queue_returns = outer, outer_returns

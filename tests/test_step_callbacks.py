"""Inside fit/evaluate/predict of a model that `debug.capture(model)` (or
`debug.retrace`) prepared, every layer's record of a step travels in the
step's own outputs on JAX and TensorFlow, with no callback (or in one host
callback per step where it cannot: a TF strategy's replicas, more steps per
execution): same records, same order."""

import keras
import numpy as np
import pytest

import keras_bn_ext
from keras_bn_ext import backend as backend_ops

BACKEND = keras.backend.backend()


def _model(layers):
    inputs = keras.Input((4,))
    x = inputs
    for i in range(layers):
        x = keras_bn_ext.BatchNormalization(momentum=0.5, name=f"bn{i}")(x)
        x = keras.layers.Dense(4)(x)
    model = keras.Model(inputs, x)
    model.compile("sgd", "mse")
    return model


def _counting_callbacks(monkeypatch):
    issued = []
    real = backend_ops.host_callback

    def counting(fn, payload):
        # Made at trace time (or eagerly); Keras's shape inference traces
        # the model once more without running it: not counted.
        if not backend_ops.is_shape_inference():
            issued.append(sorted(payload))
        real(fn, payload)

    monkeypatch.setattr(backend_ops, "host_callback", counting)
    return issued


@pytest.mark.parametrize("layers", [1, 3])
def test_one_host_callback_per_step_carries_every_record(monkeypatch, layers):
    issued = _counting_callbacks(monkeypatch)
    model = _model(layers)
    x = np.random.RandomState(0).normal(size=(16, 4)).astype("float32")
    with keras_bn_ext.debug.capture(model) as records:
        model.fit(x, x, batch_size=8, epochs=1, shuffle=False, verbose=0)
    # Two steps, each with a record per layer, in the layers' order.
    names = [f"bn{i}" for i in range(layers)]
    assert [r.layer for r in records] == names * 2
    assert all(r.branch == "batch" and r.count == 8 for r in records)
    for step in range(2):
        batch = x[step * 8:(step + 1) * 8].astype(np.float64)
        np.testing.assert_allclose(records[step * layers].mean, batch.mean(0), rtol=1e-5)
    if BACKEND in ("jax", "tensorflow"):
        # The records leave with the step's outputs: no callback (one would
        # cost JAX its C++ dispatch path, ~2 ms a step at 10 layers, and
        # TensorFlow a tf.numpy_function, ~0.2 ms a step).
        assert issued == [], issued
    else:
        assert len(issued) == 2 * layers  # torch runs each call's eagerly


def test_packed_records_keep_counts_flags_and_moving_statistics():
    model = _model(2)
    x = np.random.RandomState(1).normal(size=(8, 4)).astype("float32")
    with keras_bn_ext.debug.capture(model) as records:
        model.predict(x, batch_size=8, verbose=0)
    assert [r.layer for r in records] == ["bn0", "bn1"]
    for record in records:
        assert record.branch == "moving" and record.count is None
        assert record.flags == ("never_updated",)
        np.testing.assert_array_equal(record.moving_variance, np.ones(4))
        assert record.updated is False


def test_virtual_batches_in_fit_with_a_remainder():
    # TensorFlow traces fit with a None batch (virtual batches padded and
    # masked, their shapes unknown when traced): the records still come,
    # with the same counts as on the other backends.
    model = keras.Sequential([
        keras.Input((4,)),
        keras_bn_ext.BatchNormalization(virtual_batch_size=4, name="ghost"),
    ])
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(10, 4)).astype("float32")
    with keras_bn_ext.debug.capture(model) as records:
        model.fit(x, x, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert [r.count for r in records] == [4, 2]  # 8 = 4 + 4, then 2 left
    assert [r.mean.shape for r in records] == [(2, 4), (1, 4)]
    np.testing.assert_allclose(records[1].mean[0], x[8:].mean(axis=0), atol=1e-6)


@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_every_trainer_entry_point_gives_one_record_per_layer_and_step(
        monkeypatch, steps_per_execution):
    if BACKEND == "torch" and steps_per_execution > 1:
        pytest.skip("Keras's torch trainer runs one step per execution")
    issued = _counting_callbacks(monkeypatch)
    model = _model(2)
    model.compile("sgd", "mse", steps_per_execution=steps_per_execution)
    rng = np.random.RandomState(2)
    x = rng.normal(size=(16, 4)).astype("float32")
    with keras_bn_ext.debug.capture(model) as records:
        model.fit(x, x, batch_size=4, epochs=1, shuffle=False, verbose=0)
        fit_records = len(records)
        after_fit = {
            name: keras.ops.convert_to_numpy(model.get_layer(name).moving_mean)
            for name in ("bn0", "bn1")
        }
        model.evaluate(x, x, batch_size=4, verbose=0)
        evaluate_records = len(records) - fit_records
        predictions = model.predict(x, batch_size=4, verbose=0)
        model.train_on_batch(x[:4], x[:4])
        model.test_on_batch(x[:4], x[:4])
        one = model.predict_on_batch(x[:4])
    assert fit_records == evaluate_records == 4 * 2
    assert [r.layer for r in records] == ["bn0", "bn1"] * (4 * 3 + 3)
    branches = [r.branch for r in records[::2]]
    assert branches == ["batch"] * 4 + ["moving"] * 8 + ["batch", "moving", "moving"]
    # Predictions come back whole (records taken out of them), in order.
    assert predictions.shape == (16, 4) and one.shape == (4, 4)
    np.testing.assert_allclose(
        one, model.predict(x[:4], verbose=0), rtol=1e-5, atol=1e-6
    )
    # The evaluate records normalize with the moving statistics fit left.
    for record in records[fit_records:fit_records + evaluate_records]:
        np.testing.assert_allclose(record.moving_mean, after_fit[record.layer], rtol=1e-6)
    if BACKEND in ("jax", "tensorflow") and steps_per_execution == 1:
        assert issued == []  # every step returned its records


def test_a_step_without_records_returns_what_keras_returns():
    model = _model(1)
    x = np.random.RandomState(3).normal(size=(8, 4)).astype("float32")
    keras_bn_ext.debug.retrace(model)  # steps wrapped, but no layer debugs
    logs = model.train_on_batch(x, x, return_dict=True)
    assert sorted(logs) == ["loss"]
    assert model.predict(x, verbose=0).shape == (8, 4)


class _BatchEndReader(keras.callbacks.Callback):
    """Reads the hook's records at every batch end, as a user's callback
    would (a callback with batch-end methods runs in step with fit)."""

    def __init__(self, records):
        super().__init__()
        self.records = records
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(("train", batch, len(self.records)))

    def on_test_batch_end(self, batch, logs=None):
        self.seen.append(("test", batch, len(self.records)))


def test_a_steps_records_are_made_before_its_callbacks_run():
    model = _model(2)
    x = np.random.RandomState(2).normal(size=(24, 4)).astype("float32")
    with keras_bn_ext.debug.capture(model) as records:
        reader = _BatchEndReader(records)
        model.fit(x, x, batch_size=8, epochs=1, shuffle=False, verbose=0,
                  callbacks=[reader])
        model.evaluate(x, x, batch_size=8, verbose=0, callbacks=[reader])
    # Two records a step (two layers), all there when the step's callbacks
    # look: none behind, none ahead.
    assert reader.seen == [
        ("train", 0, 2), ("train", 1, 4), ("train", 2, 6),
        ("test", 0, 8), ("test", 1, 10), ("test", 2, 12),
    ]


@pytest.mark.skipif(
    BACKEND == "tensorflow",
    reason="TF's py_function runs inside the step, beside its variable writes",
)
def test_train_on_batch_hooks_run_after_the_models_state_is_synced():
    # On JAX the records are made when train_on_batch reads the step's logs,
    # after the new values are back on the variables (the host did not wait
    # for the step before syncing them): a hook sees the layer as updated.
    model = _model(1)
    layer = model.get_layer("bn0")
    x = np.random.RandomState(3).normal(size=(8, 4)).astype("float32")
    seen = []

    def hook(record):
        seen.append((record.moving_mean, keras.ops.convert_to_numpy(layer.moving_mean)))

    handle = layer.add_debug_hook(hook)
    keras_bn_ext.debug.retrace(model)
    try:
        for _ in range(2):
            model.train_on_batch(x, x)
            assert len(seen) == 1  # made before train_on_batch returned
            in_record, on_variable = seen.pop()
            np.testing.assert_allclose(on_variable, in_record, rtol=1e-6)
    finally:
        handle.remove()
        keras_bn_ext.debug.retrace(model)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX returns the records with the step")
def test_jax_train_function_returns_before_its_records_are_made():
    from keras_bn_ext.debug import step_callbacks

    model = _model(1)
    x = np.random.RandomState(4).normal(size=(8, 4)).astype("float32")
    with keras_bn_ext.debug.capture(model) as records:
        model.train_on_batch(x, x)  # compiles; its records are made
        assert len(records) == 1
        model.make_train_function()
        state = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables],
            [v.value for v in model.metrics_variables],
        )
        logs, state = model.train_function(state, iter([(x, x, None)]))
        assert len(records) == 1  # not waited for: the host runs ahead
        assert "loss" in logs  # reading the logs makes the step's records
        assert len(records) == 2
        model.train_function(state, iter([(x, x, None)]))
        step_callbacks.flush()  # as does a flush
        assert len(records) == 3


def test_a_model_with_two_outputs_keeps_them_whole_with_records():
    inputs = keras.Input((4,))
    hidden = keras_bn_ext.BatchNormalization(name="bn")(inputs)
    model = keras.Model(
        inputs, [keras.layers.Dense(2)(hidden), keras.layers.Dense(3)(hidden)]
    )
    model.compile("sgd", ["mse", "mse"])
    x = np.random.RandomState(5).normal(size=(8, 4)).astype("float32")
    targets = [x[:, :2], x[:, :3]]
    with keras_bn_ext.debug.capture(model) as records:
        model.fit(x, targets, batch_size=4, epochs=1, shuffle=False, verbose=0)
        outputs = model.predict(x, batch_size=4, verbose=0)
        one = model.predict_on_batch(x)
        logs = model.evaluate(x, targets, batch_size=4, verbose=0, return_dict=True)
    assert [o.shape for o in outputs] == [(8, 2), (8, 3)]
    assert [o.shape for o in one] == [(8, 2), (8, 3)]
    assert not any(key.startswith("_keras_bn_ext") for key in logs)
    assert [r.branch for r in records] == ["batch"] * 2 + ["moving"] * 5

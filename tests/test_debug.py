"""Debug records (issue 3): every real execution of a layer reports which
statistics it used, why, and the numbers, eagerly and inside compiled
fit/evaluate/predict, custom jit loops and tf.function, on every backend."""

import logging
import warnings

import keras
import numpy as np
import pytest
import reference
from helpers import BACKEND
from helpers import fit_batches
from helpers import to_numpy

import keras_bn_ext
from keras_bn_ext import debug

MOMENTUM = 0.99
EPSILON = 1e-3
BATCH = 4

# Two batches of 4 with distinct, large-ish means so the batch and moving
# statistics can never be confused with each other or with the initial 0/1.
X = (np.random.RandomState(0).normal(size=(8, 3)) * [1.0, 2.0, 0.5]
     + [5.0, -3.0, 1.0]).astype("float32")
Y = np.random.RandomState(1).normal(size=(8, 1)).astype("float32")


def small_model(**bn_kwargs):
    inputs = keras.Input((3,))
    bn = keras_bn_ext.BatchNormalization(name="bn", **bn_kwargs)
    outputs = keras.layers.Dense(1)(bn(inputs))
    return keras.Model(inputs, outputs), bn


def reference_steps(x, steps, state=None):
    """The reference's `reference.Result` of each of `steps` fit() steps."""
    return reference.train(fit_batches(x, BATCH, steps), state, momentum=MOMENTUM)


def assert_matches_reference(records, expected):
    assert len(records) == len(expected)
    for record, step in zip(records, expected):
        assert record.branch == "batch"
        assert record.training is True
        assert record.updated is True
        assert record.count == BATCH
        tol = dict(rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(record.mean, step.mean, **tol)
        np.testing.assert_allclose(record.variance, step.variance, **tol)
        np.testing.assert_allclose(record.moving_mean, step.state.moving_mean, **tol)
        np.testing.assert_allclose(record.moving_variance, step.state.moving_variance,
                                   **tol)


def compile_default(model):
    """`model.compile(...)` with default settings. On TensorFlow, Keras picks
    XLA by default only when it sees a GPU; we make it see one so the test
    covers the case the library must handle (default compile choosing
    jit_compile=True) on CPU-only machines too."""
    if BACKEND != "tensorflow":
        model.compile(optimizer="sgd", loss="mse")
        return
    import tensorflow as tf

    real = tf.config.list_physical_devices
    fake_gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    tf.config.list_physical_devices = lambda *a: real(*a) + [fake_gpu]
    try:
        model.compile(optimizer="sgd", loss="mse")
    finally:
        tf.config.list_physical_devices = real


# One fit + predict + evaluate, shared by the tests below: fits are the slow
# part, and every test reads a different property of the same records.
@pytest.fixture(scope="module")
def fitted():
    keras.utils.set_random_seed(1234)
    model, bn = small_model()
    compile_default(model)
    jit_before = model.jit_compile
    with debug.capture(model) as records:
        jit_during = model.jit_compile
        model.fit(X, Y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
        fit_records = list(records)
        moving_mean = to_numpy(bn.moving_mean)
        moving_variance = to_numpy(bn.moving_variance)
        predictions = model.predict(X, batch_size=BATCH, verbose=0)
        predict_records = records[len(fit_records):]
        model.evaluate(X, Y, batch_size=BATCH, verbose=0)
        evaluate_records = records[len(fit_records) + len(predict_records):]
    return dict(
        model=model, bn=bn, jit_before=jit_before, jit_during=jit_during,
        jit_after=model.jit_compile,
        records=list(records), fit=fit_records, predict=predict_records,
        evaluate=evaluate_records, moving_mean=moving_mean,
        moving_variance=moving_variance, predictions=predictions,
    )


def test_fit_records_equal_numpy_statistics_every_step(fitted):
    # 3 epochs x 2 batches: exactly one record per step, in data order (the
    # batches alternate, so a missing or duplicated record shifts them). On
    # torch, fit() first runs call() once for shape inference: no record.
    assert_matches_reference(fitted["fit"], reference_steps(X, steps=6))
    assert all(r.layer == "bn" and r.backend == BACKEND for r in fitted["fit"])
    assert all(r.flags == () for r in fitted["fit"])
    assert "training=True" in fitted["fit"][0].reason


def test_fit_leaves_the_state_the_last_record_reports(fitted):
    np.testing.assert_array_equal(fitted["moving_mean"], fitted["fit"][-1].moving_mean)
    np.testing.assert_array_equal(
        fitted["moving_variance"], fitted["fit"][-1].moving_variance
    )


def test_records_are_in_order(fitted):
    indices = [r.index for r in fitted["records"]]
    assert indices == sorted(indices)
    assert len(set(indices)) == len(indices)


def test_predict_and_evaluate_use_the_moving_statistics(fitted):
    # 2 batches each: one record per batch, none for the trace.
    assert len(fitted["predict"]) == 2
    assert len(fitted["evaluate"]) == 2
    for record in fitted["predict"] + fitted["evaluate"]:
        assert record.branch == "moving"
        assert record.training is False
        assert record.updated is False
        assert record.count is None
        assert "never_updated" not in record.flags
        np.testing.assert_array_equal(record.mean, fitted["moving_mean"])
        np.testing.assert_array_equal(record.variance, fitted["moving_variance"])
        np.testing.assert_array_equal(record.moving_mean, fitted["moving_mean"])
    # And the predictions really are made with those statistics.
    gamma, beta = to_numpy(fitted["bn"].gamma), to_numpy(fitted["bn"].beta)
    bn_out = reference.normalize(X, fitted["moving_mean"], fitted["moving_variance"],
                                 gamma=gamma, beta=beta)
    dense = fitted["model"].layers[-1]
    kernel, bias = (to_numpy(w) for w in dense.weights)
    np.testing.assert_allclose(fitted["predictions"], bn_out @ kernel + bias,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="XLA choice is TF's")
def test_tf_default_compile_picks_xla_and_capture_keeps_it(fitted):
    # The fixture's records flowed from XLA-compiled steps (the default
    # compile with a GPU): they leave with the steps' outputs.
    assert fitted["jit_before"] is True
    assert fitted["jit_during"] is True
    assert fitted["jit_after"] is True


@pytest.mark.skipif(BACKEND != "tensorflow", reason="XLA choice is TF's")
def test_tf_steps_that_cannot_return_records_leave_xla_while_debugging():
    # With two steps per execution, Keras keeps only the last step's logs:
    # the steps call back to Python, so the model leaves XLA meanwhile.
    model, bn = small_model()
    compile_default(model)
    model.compile(optimizer="sgd", loss="mse", jit_compile=True,
                  steps_per_execution=2)
    with debug.capture(model) as records:
        assert model.jit_compile is False
        model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert model.jit_compile is True
    assert_matches_reference(records, reference_steps(X, 2))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="XLA choice is TF's")
def test_tf_layer_opts_out_of_xla_only_while_debugging():
    from keras.src.trainers.trainer import model_supports_jit

    model, bn = small_model()
    model.build((None, 3))
    assert bn.supports_jit and model_supports_jit(model)
    handle = bn.add_debug_hook(lambda record: None)
    assert not bn.supports_jit and not model_supports_jit(model)
    handle.remove()
    assert bn.supports_jit
    # A model compiled with a debugging layer does not choose XLA.
    model, bn = small_model(debug=True)
    compile_default(model)
    assert model.jit_compile is False


def test_no_record_at_trace_time_or_for_shape_inference():
    with debug.capture() as records:
        inputs = keras.Input((3,))
        bn = keras_bn_ext.BatchNormalization()
        model = keras.Model(inputs, bn(inputs))
        model.summary(print_fn=lambda *args, **kwargs: None)
        bn.compute_output_spec(keras.KerasTensor((None, 3)))
        model(keras.KerasTensor((2, 3)))
        assert records == []
        # A real call makes exactly one.
        bn(X, training=True)
    assert len(records) == 1


def test_hook_enabled_after_fit_compiled_needs_retrace_then_records_flow():
    model, bn = small_model()
    compile_default(model)
    model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    state = reference.State(*(to_numpy(w).astype("float64")
                              for w in (bn.moving_mean, bn.moving_variance)))
    seen = []
    handle = bn.add_debug_hook(seen.append)
    assert debug.retrace(model) is model
    model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert_matches_reference(seen, reference_steps(X, 2, state))
    handle.remove()
    debug.retrace(model)
    if BACKEND == "tensorflow":
        # XLA (chosen by the default compile) comes back once debugging is off.
        assert model.jit_compile is True


def test_hook_added_after_default_compile_records_first_fit():
    # Nothing was traced yet, so on JAX and torch no retrace is needed. On
    # TensorFlow with an accelerator, compile() already chose XLA (it cannot
    # call back to Python) before the hook existed: the layer says so with a
    # RuntimeWarning naming the fix, and the fix, retrace(), works.
    model, bn = small_model()
    compile_default(model)
    seen = []
    bn.add_debug_hook(seen.append)
    if BACKEND == "tensorflow" and model.jit_compile:
        with pytest.warns(RuntimeWarning, match="retrace"):
            model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        assert seen == []
        # Start again from the initial statistics the reference assumes.
        bn.moving_mean.assign(np.zeros(3))
        bn.moving_variance.assign(np.ones(3))
        debug.retrace(model)
        # The steps return their records with their outputs: XLA stays.
        assert model.jit_compile is True
    model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert_matches_reference(seen, reference_steps(X, 2))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="XLA with TF only")
def test_tf_explicit_jit_compile_warns_instead_of_dropping_records():
    model, bn = small_model()
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    seen = []
    bn.add_debug_hook(seen.append)
    with pytest.warns(RuntimeWarning, match="jit_compile"):
        model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert seen == []
    # Training itself is unaffected.
    np.testing.assert_allclose(
        to_numpy(bn.moving_mean), reference_steps(X, 2)[-1].state.moving_mean,
        rtol=1e-5, atol=1e-5,
    )
    # The fix the warning names works.
    debug.retrace(model)
    model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert len(seen) == 2


def stateless_layer():
    """A built layer and the variable values its `stateless_call` takes."""
    layer = keras_bn_ext.BatchNormalization()
    layer.build((None, 3))
    return (layer, [v.value for v in layer.trainable_variables],
            [v.value for v in layer.non_trainable_variables])


@pytest.mark.skipif(BACKEND != "jax", reason="jax.jit custom loop")
def test_jax_jit_stateless_call_one_record_per_execution():
    import jax

    layer, trainable, non_trainable = stateless_layer()
    traces = []

    def step(trainable, non_trainable, x):
        traces.append(1)
        return layer.stateless_call(trainable, non_trainable, x, training=True)

    with debug.capture() as records:
        step = jax.jit(step)
        batches = [X[:4], X[4:], X[:4] * 2.0]
        for x in batches:
            _, non_trainable = step(trainable, non_trainable, x)
    assert len(traces) == 1  # compiled once, so the records are not traces
    x_all = np.concatenate(batches)
    assert_matches_reference(records, reference_steps(x_all, 3))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
def test_tf_function_one_record_per_execution():
    import tensorflow as tf

    layer = keras_bn_ext.BatchNormalization()
    layer.build((None, 3))
    traces = []

    @tf.function
    def step(x):
        traces.append(1)
        return layer(x, training=True)

    with debug.capture() as records:
        batches = [X[:4], X[4:], X[:4] * 2.0]
        for x in batches:
            step(tf.constant(x))
    assert len(traces) == 1
    assert_matches_reference(records, reference_steps(np.concatenate(batches), 3))


def test_eager_loop_one_record_per_call():
    layer = keras_bn_ext.BatchNormalization()
    with debug.capture() as records:
        for x in (X[:4], X[4:], X[:4]):
            layer(x, training=True)
    assert_matches_reference(records, reference_steps(X, 3))


def test_handles_remove_layer_and_global_hooks():
    layer = keras_bn_ext.BatchNormalization()
    other = keras_bn_ext.BatchNormalization()
    mine, everyone = [], []
    layer_handle = layer.add_debug_hook(mine.append)
    global_handle = debug.add_hook(everyone.append)
    layer(X, training=True)
    other(X, training=True)
    # A layer hook sees its layer only; a global hook sees every layer.
    assert [r.layer for r in mine] == [layer.name]
    assert [r.layer for r in everyone] == [layer.name, other.name]
    assert mine[0] is everyone[0]

    layer_handle.remove()
    layer(X, training=True)
    assert len(mine) == 1 and len(everyone) == 3

    global_handle.remove()
    layer(X, training=True)
    assert len(mine) == 1 and len(everyone) == 3
    # Nothing left: the layer is back to its zero-cost path.
    assert not layer.debugging
    layer_handle.remove()  # removing twice is harmless


def test_handle_as_context_manager():
    layer = keras_bn_ext.BatchNormalization()
    seen = []
    with layer.add_debug_hook(seen.append):
        layer(X, training=True)
    layer(X, training=True)
    assert len(seen) == 1


def test_capture_yields_only_records_made_inside():
    layer = keras_bn_ext.BatchNormalization()
    with debug.capture() as outer:
        layer(X, training=True)
        with debug.capture() as inner:
            layer(X, training=False)
    layer(X, training=True)
    assert [r.branch for r in outer] == ["batch", "moving"]
    assert [r.branch for r in inner] == ["moving"]
    assert inner[0] is outer[1]


def test_reset_removes_global_hooks_and_ends_captures():
    layer = keras_bn_ext.BatchNormalization()
    everyone, mine = [], []
    debug.add_hook(everyone.append)
    layer.add_debug_hook(mine.append)
    with debug.capture() as records:
        layer(X, training=True)
        debug.reset()
        layer(X, training=True)  # the block still runs, and exits cleanly
    assert len(everyone) == 1 and len(records) == 1
    assert len(mine) == 2  # per-layer hooks stay
    assert not keras_bn_ext.BatchNormalization().debugging  # zero cost again


def test_debug_true_logs_one_line_per_call(caplog):
    caplog.set_level(logging.INFO, logger="keras_bn_ext")
    layer = keras_bn_ext.BatchNormalization(name="logged_bn", debug=True)
    quiet = keras_bn_ext.BatchNormalization(name="quiet_bn")
    layer(X[:4], training=True)
    layer(X[:4], training=False)
    quiet(X[:4], training=True)  # debug=False layers do not log
    lines = [r for r in caplog.records if r.name == "keras_bn_ext"
             and r.levelno == logging.INFO]
    assert len(lines) == 2
    train, infer = (r.getMessage() for r in lines)
    mean = X[:4].astype("float64").mean(axis=0)
    assert "logged_bn" in train and "batch statistics" in train
    assert "training=True" in train and "count=4" in train
    assert f"{mean[0]:.4g}" in train  # the real numbers, not placeholders
    assert "moving statistics" in infer and "training=False" in infer
    assert "quiet_bn" not in caplog.text


def test_debug_true_logs_inside_fit(caplog):
    caplog.set_level(logging.INFO, logger="keras_bn_ext")
    model, bn = small_model(debug=True)
    compile_default(model)
    model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    lines = [r.getMessage() for r in caplog.records
             if r.levelno == logging.INFO and "bn: batch statistics" in r.getMessage()]
    assert len(lines) == 2


# The seed question: predict() on a never-trained layer.
SEED_INPUT = np.arange(4).reshape((2, 2))


def seed_model(**bn_kwargs):
    inputs = keras.Input((2,))
    outputs = keras_bn_ext.BatchNormalization(axis=1, **bn_kwargs)(inputs)
    return keras.Model(inputs=inputs, outputs=outputs)


def never_updated_warnings(caught):
    return [w for w in caught if issubclass(w.category, keras_bn_ext.NeverUpdatedWarning)]


class _nothing:
    """Stands in for capture() when debugging is off."""

    def __enter__(self):
        return []

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("how", ["plain", "capture", "debug_flag"])
def test_never_updated_warning_once_per_layer(how):
    # Off, under capture() and with debug=True: the seed question warns, once
    # per layer, whichever path notices.
    debugging = how == "capture"
    model1 = seed_model(debug=how == "debug_flag")
    model2 = seed_model(debug=how == "debug_flag")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with debug.capture() if debugging else _nothing() as records:
            out = model1.predict(SEED_INPUT, batch_size=2, verbose=0)
            model1.predict(SEED_INPUT, batch_size=2, verbose=0)
            model2.predict(SEED_INPUT, batch_size=2, verbose=0)
    # The seed's puzzling numbers: x / sqrt(1 + epsilon).
    np.testing.assert_allclose(out, SEED_INPUT / np.sqrt(1 + EPSILON), rtol=1e-6)
    found = never_updated_warnings(caught)
    assert len(found) == 2  # once per layer, not per call
    names = {model1.layers[-1].name, model2.layers[-1].name}
    assert {n for n in names if any(repr(n) in str(w.message) for w in found)} == names
    message = str(found[0].message)
    assert "sqrt(1 + 0.001)" in message and "fit()" in message
    if debugging:
        assert len(records) == 3
        assert all("never_updated" in r.flags for r in records)
        np.testing.assert_array_equal(records[0].mean, [0.0, 0.0])
        np.testing.assert_array_equal(records[0].variance, [1.0, 1.0])


def test_no_never_updated_warning_after_training():
    model = seed_model()
    layer = model.layers[-1]
    layer(SEED_INPUT.astype("float32"), training=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(SEED_INPUT, batch_size=2, verbose=0)
    assert never_updated_warnings(caught) == []


# explain(): its claims must agree with what calls actually do.
EXPLAIN_LINES = {
    "training=True (fit()": dict(training=True),
    "training=False (evaluate()": dict(training=False),
    "training=None (a direct call)": dict(training=None),
}


def branches_claimed(text):
    claimed = {}
    for line in text.splitlines():
        for prefix in EXPLAIN_LINES:
            if line.strip().startswith("- " + prefix):
                claimed[prefix] = line.split(": ", 1)[1].split(" statistics")[0]
    return claimed


def assert_explain_agrees_with_calls(layer, x):
    claimed = branches_claimed(layer.explain())
    assert set(claimed) == set(EXPLAIN_LINES)
    for prefix, kwargs in EXPLAIN_LINES.items():
        mean = to_numpy(layer.moving_mean)
        variance = to_numpy(layer.moving_variance)
        with debug.capture() as records:
            layer(x, **kwargs)
        assert records[0].branch == claimed[prefix], prefix
        # Restore, so the next line is checked against the same state.
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)


def test_explain_unbuilt_layer():
    text = keras_bn_ext.BatchNormalization().explain()
    assert "Not built yet" in text
    assert branches_claimed(text) == {
        "training=True (fit()": "batch",
        "training=False (evaluate()": "moving",
        "training=None (a direct call)": "moving",
    }


def test_explain_fresh_layer_predicts_the_seed_output():
    model = seed_model()
    layer = model.layers[-1]
    text = layer.explain()
    assert "never updated" in text
    assert "x / sqrt(1.001)" in text
    assert "Moving mean:     [0, 0]" in text and "Moving variance: [1, 1]" in text
    # What it says predict() will do is what predict() does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.predict(SEED_INPUT, batch_size=2, verbose=0)
    np.testing.assert_allclose(out, SEED_INPUT / np.sqrt(1.001), rtol=1e-6)
    assert_explain_agrees_with_calls(layer, X[:4, :2])


def test_explain_trained_layer():
    layer = keras_bn_ext.BatchNormalization(momentum=0.0)  # moving = last batch
    layer(X[:4], training=True)
    text = layer.explain()
    assert "never updated" not in text and "sqrt(1.001)" not in text
    mean = X[:4].astype("float64").mean(axis=0)
    assert f"{mean[0]:.6g}" in text  # the moving mean's real value
    assert "y = (x - moving_mean) / sqrt(moving_variance + 0.001)" in text
    # That formula is what inference does.
    out = to_numpy(layer(X[4:], training=False))
    expected = reference.normalize(X[4:], to_numpy(layer.moving_mean),
                                   to_numpy(layer.moving_variance))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert_explain_agrees_with_calls(layer, X[4:])


def test_explain_frozen_layer():
    layer = keras_bn_ext.BatchNormalization()
    layer(X[:4], training=True)
    layer.trainable = False
    text = layer.explain()
    assert "trainable=False" in text
    assert branches_claimed(text)["training=True (fit()"] == "moving"
    assert_explain_agrees_with_calls(layer, X[4:])


@pytest.mark.parametrize("mode, branch", [("moving", "moving"), ("batch", "batch")])
def test_explain_forced_modes(mode, branch):
    layer = keras_bn_ext.BatchNormalization(mode=mode)
    layer.build((None, 3))
    text = layer.explain()
    assert f"mode={mode!r}" in text
    assert set(branches_claimed(text).values()) == {branch}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_explain_agrees_with_calls(layer, X[:4])


def test_explain_summarises_many_channels():
    layer = keras_bn_ext.BatchNormalization()
    layer.build((None, 64))
    assert "64 channels" in layer.explain()


def test_raising_hook_is_logged_and_does_not_stop_training(caplog):
    caplog.set_level(logging.ERROR, logger="keras_bn_ext")
    model, bn = small_model()

    def broken_hook(record):
        raise ValueError("hook bug")

    seen_after, seen_global = [], []
    bn.add_debug_hook(broken_hook)
    bn.add_debug_hook(seen_after.append)
    debug.add_hook(seen_global.append)
    compile_default(model)
    model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    # Every other hook got every record, with the real numbers.
    assert_matches_reference(seen_after, reference_steps(X, 2))
    assert len(seen_global) == 2
    # The layer's state is what two steps give.
    np.testing.assert_allclose(to_numpy(bn.moving_mean),
                               reference_steps(X, 2)[-1].state.moving_mean,
                               rtol=1e-5, atol=1e-5)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "broken_hook" in errors[0].getMessage()
    assert errors[0].exc_info and errors[0].exc_info[0] is ValueError


# Flags.
def record_of(layer, x, **kwargs):
    with debug.capture() as records:
        layer(x, **kwargs)
    assert len(records) == 1
    return records[0]


def test_flag_never_updated():
    layer = keras_bn_ext.BatchNormalization()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "never_updated" in record_of(layer, X, training=False).flags
        layer(X, training=True)
        assert record_of(layer, X, training=False).flags == ()


def test_flag_nonfinite_skips_the_update():
    layer = keras_bn_ext.BatchNormalization()
    x = X[:4].copy()
    x[0, 1] = np.nan
    record = record_of(layer, x, training=True)
    assert "nonfinite" in record.flags
    assert "update_skipped" in record.flags
    assert record.updated is False
    assert np.isnan(record.mean[1]) and np.isfinite(record.mean[0])
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), [0, 0, 0])
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), [1, 1, 1])


def test_flag_empty_batch():
    layer = keras_bn_ext.BatchNormalization()
    record = record_of(layer, np.zeros((0, 3), "float32"), training=True)
    assert "empty_batch" in record.flags
    assert record.count == 0
    assert record.updated is False
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), [0, 0, 0])
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), [1, 1, 1])


def test_flag_tiny_variance():
    layer = keras_bn_ext.BatchNormalization()
    x = X[:4].copy()
    x[:, 2] = 7.0  # a constant channel: variance 0 < epsilon
    record = record_of(layer, x, training=True)
    assert record.flags == ("tiny_variance",)
    assert record.variance[2] == 0.0 and record.updated is True
    assert record_of(layer, X[:4], training=True).flags == ()


# Reasons.
@pytest.mark.parametrize(
    "training, trainable, branch, updated, words",
    [
        (True, True, "batch", True, "training=True"),
        (False, True, "moving", False, "training=False"),
        (None, True, "moving", False, "training=None"),
        (True, False, "moving", False, "trainable=False"),
    ],
)
def test_reasons(training, trainable, branch, updated, words):
    layer = keras_bn_ext.BatchNormalization()
    layer(X[:4], training=True)  # trained, so no never_updated noise
    layer.trainable = trainable
    before = to_numpy(layer.moving_mean)
    record = record_of(layer, X[4:], training=training)
    assert record.branch == branch
    assert record.updated is updated
    assert record.training is training
    assert words in record.reason
    assert record.reason.endswith(".")
    expected_mean = X[4:].astype("float64").mean(axis=0) if branch == "batch" else before
    np.testing.assert_allclose(record.mean, expected_mean, rtol=1e-5, atol=1e-6)
    if not updated:
        np.testing.assert_array_equal(to_numpy(layer.moving_mean), before)


# Zero cost when off: nothing is compiled in, and the check can fail.
def count_host_callbacks(monkeypatch):
    from keras_bn_ext import backend as backend_ops

    calls = []
    real = backend_ops.host_callback

    def counting(fn, payload):
        calls.append(1)
        return real(fn, payload)

    monkeypatch.setattr(backend_ops, "host_callback", counting)
    return calls


def test_no_host_callback_when_off(monkeypatch):
    calls = count_host_callbacks(monkeypatch)
    model = seed_model()
    layer = model.layers[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer(X[:4, :2], training=True)
        layer(X[:4, :2], training=False)
        model.predict(SEED_INPUT, batch_size=2, verbose=0)
    assert calls == []
    # On: the same calls go through the host callback (torch: every call;
    # tf and jax: eager calls, while predict's records leave with its
    # outputs).
    with debug.capture(model) as records:
        layer(X[:4, :2], training=True)
        layer(X[:4, :2], training=False)
        model.predict(SEED_INPUT, batch_size=2, verbose=0)
    assert len(records) == 3
    assert len(calls) == (3 if BACKEND == "torch" else 2)


@pytest.mark.skipif(BACKEND != "jax", reason="jaxpr")
def test_jaxpr_has_no_callback_when_off():
    import jax

    layer, trainable, non_trainable = stateless_layer()

    def jaxpr_text(training):
        # A fresh function each time: JAX caches traces per function object.
        def fn(t, n, x):
            return layer.stateless_call(t, n, x, training=training)

        return str(jax.make_jaxpr(fn)(trainable, non_trainable, X))

    for training in (True, False):
        assert "debug_callback" not in jaxpr_text(training)
    with debug.capture() as records:
        for training in (True, False):
            assert "debug_callback" in jaxpr_text(training)
    assert records == []  # tracing alone records nothing


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf graph")
def test_tf_graph_has_no_py_function_when_off():
    import tensorflow as tf

    layer = keras_bn_ext.BatchNormalization()
    layer.build((None, 3))

    def op_types(training):
        fn = tf.function(lambda x: layer(x, training=training))
        graph = fn.get_concrete_function(tf.TensorSpec((None, 3), "float32")).graph
        return {op.type for op in graph.get_operations()}

    host_ops = {"EagerPyFunc", "PyFunc", "PyFuncStateless"}
    for training in (True, False):
        assert not op_types(training) & host_ops
    with debug.capture() as records:
        for training in (True, False):
            assert "EagerPyFunc" in op_types(training)
    assert records == []  # tracing alone records nothing

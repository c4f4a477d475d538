"""The never-updated check costs nothing once the statistics are known to be
trained: no check is compiled into predict/evaluate after `fit`, after
loading or `set_weights` with trained statistics, or where the values stored
on the variables were updated (JAX's predict_on_batch). On JAX a compiled
host callback would cost every later call JAX's fast dispatch path."""


import keras
import numpy as np
import pytest
from helpers import never_updated_warnings

import keras_bn_ext
from keras_bn_ext import backend as backend_ops

X = np.random.default_rng(0).normal(2.0, 3.0, size=(16, 3)).astype("float32")


def _model():
    model = keras.Sequential([
        keras.Input((3,)), keras_bn_ext.BatchNormalization(name="bn"),
        keras.layers.Dense(1),
    ])
    model.compile("sgd", "mse")
    return model


@pytest.fixture
def compiled_checks(monkeypatch):
    checks = []
    real = backend_ops.call_on_host_if

    def counting(predicate, fn):
        checks.append(1)
        return real(predicate, fn)

    monkeypatch.setattr(backend_ops, "call_on_host_if", counting)
    return checks


def _predict_all_ways(model):
    def run():
        model.predict(X, verbose=0)
        model.predict_on_batch(X)
        model.evaluate(X, X[:, :1], verbose=0)
        model.test_on_batch(X, X[:, :1])

    return never_updated_warnings(run)


def test_after_fit(compiled_checks):
    model = _model()
    model.fit(X, X[:, :1], epochs=1, verbose=0)
    assert _predict_all_ways(model) == []
    assert compiled_checks == []


def test_after_loading_trained_statistics(tmp_path, compiled_checks):
    model = _model()
    model.fit(X, X[:, :1], epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert _predict_all_ways(loaded) == []
    assert compiled_checks == []


def test_after_set_weights(compiled_checks):
    model = _model()
    layer = model.get_layer("bn")
    weights = layer.get_weights()
    weights[2] = np.full(3, 2.0, "float32")  # moving mean, as if trained
    layer.set_weights(weights)
    assert _predict_all_ways(model) == []
    assert compiled_checks == []


def test_a_fresh_model_still_warns_once():
    model = _model()
    found = _predict_all_ways(model)
    assert len(found) == 1


def test_an_assigned_model_compiles_no_check_where_values_are_stored(compiled_checks):
    # Direct assignment: predict_on_batch/test_on_batch see the stored values
    # (JAX traces them in a stateless scope) and compile nothing.
    model = _model()
    model.get_layer("bn").moving_mean.assign(np.full(3, 2.0, "float32"))
    assert never_updated_warnings(
        lambda: (model.predict_on_batch(X), model.test_on_batch(X, X[:, :1]))
    ) == []
    assert compiled_checks == []

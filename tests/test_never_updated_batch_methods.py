"""`NeverUpdatedWarning` from `predict_on_batch` and `test_on_batch`, as from
`predict()`, `evaluate()` and direct calls: once per layer, at the user's
line, on every backend.

Keras's JAX trainer passes the variables' values into its compiled function
for these two methods without purging the variables (as `predict()` and
`evaluate()` do), so the layer cannot read its statistics on the host while
tracing and must check them on device.
"""


import keras
import numpy as np
import pytest
from helpers import never_updated_warnings  # noqa: E402

import keras_bn_ext

X = np.ones((4, 3), "float32")


def _model(**bn_kwargs):
    model = keras.Sequential(
        [keras.Input((3,)), keras_bn_ext.BatchNormalization(**bn_kwargs)]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def _assert_one_warning_at(caught, line):
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert caught[0].filename == __file__  # not a file of keras_bn_ext or Keras
    source = open(__file__).read().splitlines()[caught[0].lineno - 1]
    assert line in source, source


@pytest.mark.parametrize("method", ["predict_on_batch", "test_on_batch"])
@pytest.mark.parametrize("track_updates", [False, True])
def test_a_batch_method_warns_once_at_the_users_line(method, track_updates):
    # track_updates: the check reads the update counter instead of comparing
    # the statistics with their initial values.
    model = _model(track_updates=track_updates)
    runs = {
        "predict_on_batch": lambda: model.predict_on_batch(X),
        "test_on_batch": lambda: model.test_on_batch(X, X),
    }

    def run_three_times():
        for _ in range(3):
            runs[method]()

    caught = never_updated_warnings(run_three_times)
    _assert_one_warning_at(caught, f'"{method}": lambda')
    layer = model.layers[-1]
    assert repr(layer.name) in str(caught[0].message)


def test_once_per_layer_across_methods():
    model = _model()

    def run_all():
        model.predict_on_batch(X)  # the first: the warning points here
        model.test_on_batch(X, X)
        model.predict(X, verbose=0)
        model.evaluate(X, X, verbose=0)
        model(X)

    caught = never_updated_warnings(run_all)
    _assert_one_warning_at(caught, "model.predict_on_batch(X)  # the first")


@pytest.mark.parametrize("method", ["predict_on_batch", "test_on_batch"])
def test_no_warning_once_trained(method):
    model = _model()
    model.train_on_batch(X + np.arange(4, dtype="float32")[:, None], X)
    runs = {
        "predict_on_batch": lambda: model.predict_on_batch(X),
        "test_on_batch": lambda: model.test_on_batch(X, X),
    }
    assert never_updated_warnings(runs[method]) == []


def test_no_warning_for_loaded_statistics():
    # Statistics set without training are not the initial values: no warning.
    model = _model()
    layer = model.layers[-1]
    layer.moving_mean.assign(np.full((3,), 0.5, "float32"))
    layer.moving_variance.assign(np.full((3,), 2.0, "float32"))
    assert never_updated_warnings(lambda: model.predict_on_batch(X)) == []

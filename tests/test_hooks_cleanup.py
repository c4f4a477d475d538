"""Every hook and capture the library installs is gone on every exit path
of fit: normal end, early stopping, an exception in a step, and a
KeyboardInterrupt between steps; models compiled afterwards carry no host
callbacks."""

import keras
import numpy as np
import pytest

import keras_bn_ext
from keras_bn_ext.debug import registry


def _model(name):
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1)(keras_bn_ext.BatchNormalization(name=name)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")
    return model


class _Raise(keras.callbacks.Callback):
    def __init__(self, error, at_batch=1):
        super().__init__()
        self.error, self.at_batch = error, at_batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at_batch:
            raise self.error


class _Stop(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.model.stop_training = True


def _assert_clean():
    assert not registry.is_active()
    # A model compiled now makes no record: nothing listens, nothing is
    # compiled in.
    other = _model("other_bn")
    seen = []
    handle = keras_bn_ext.debug.add_hook(seen.append)
    handle.remove()
    other.predict(np.ones((4, 3)), verbose=0)
    assert seen == []


X, Y = np.random.RandomState(0).normal(size=(16, 3)), np.ones((16, 1))


@pytest.mark.parametrize("exit_path", ["normal", "early_stop", "exception", "interrupt"])
def test_stats_monitor_removes_its_hook_on_every_exit(exit_path):
    model = _model("bn")
    monitor = keras_bn_ext.callbacks.StatsMonitor(batch_stats=True)
    callbacks = {
        "normal": [],
        "early_stop": [_Stop()],
        "exception": [_Raise(RuntimeError("boom"))],
        "interrupt": [_Raise(KeyboardInterrupt())],
    }[exit_path]
    expected = {"exception": RuntimeError, "interrupt": KeyboardInterrupt}.get(exit_path)
    if expected is None:
        model.fit(X, Y, batch_size=4, verbose=0, callbacks=[monitor] + callbacks)
    else:
        with pytest.raises(expected):
            model.fit(X, Y, batch_size=4, verbose=0, callbacks=[monitor] + callbacks)
    # The steps that ran were recorded.
    assert monitor.records("bn", "batch"), monitor.history
    _assert_clean()


def test_stats_monitor_removes_its_hook_when_a_step_raises():
    model = _model("bn")
    monitor = keras_bn_ext.callbacks.StatsMonitor(batch_stats=True)
    with pytest.raises(Exception):
        # A batch of the wrong width fails inside the train step.
        model.fit(np.ones((8, 5)), np.ones((8, 1)), batch_size=4, verbose=0,
                  callbacks=[monitor])
    _assert_clean()


def test_capture_ends_on_exception():
    model = _model("bn")
    with pytest.raises(RuntimeError):
        with keras_bn_ext.debug.capture(model) as records:
            model.fit(X, Y, batch_size=4, verbose=0, callbacks=[_Raise(RuntimeError("x"))])
    assert records  # what ran was captured
    _assert_clean()

"""StatsMonitor: statistics recorded during fit, saved, plotted."""

import csv
import json
import sys

import keras
import numpy as np
import pytest
import reference
from helpers import fit_batches

import keras_bn_ext
from keras_bn_ext.callbacks import StatsMonitor
from keras_bn_ext.debug import registry

MOMENTUM = 0.8
BATCH = 8


def _model():
    # Both layers see the raw data, so their statistics are known exactly.
    x = keras.Input((3,))
    ours = keras_bn_ext.BatchNormalization(momentum=MOMENTUM, name="ours")(x)
    theirs = keras.layers.BatchNormalization(momentum=MOMENTUM, name="theirs")(x)
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([ours, theirs]))
    model = keras.Model(x, out)
    model.compile("sgd", "mse")
    return model


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)) * [1.0, 2.0, 3.0] + [5.0, -1.0, 0.5]
    return x.astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def _fit(monitor, epochs=2):
    model = _model()
    x, y = _data()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[monitor])
    return model, x


def _reference_steps(x, steps):
    return reference.train(fit_batches(x, BATCH, steps), momentum=MOMENTUM)


def test_records_moving_and_batch_statistics_with_the_right_numbers():
    monitor = StatsMonitor(every_n_steps=2, batch_stats=True)
    model, x = _fit(monitor)  # 4 steps per epoch, 8 steps

    steps = _reference_steps(x, 8)
    for layer in ("ours", "theirs"):
        moving = monitor.records(layer, "moving")
        assert [r.step for r in moving] == [0, 2, 4, 6, 8]
        assert [r.epoch for r in moving] == [0, 0, 0, 1, 1]  # step 4 ends epoch 0
        expected = [step.state.moving_mean.mean() for step in steps]
        np.testing.assert_allclose([r.mean for r in moving],
                                   [0.0] + expected[1::2], rtol=1e-5)
    batch = monitor.records("ours", "batch")
    assert [r.step for r in batch] == list(range(1, 9))
    for r in batch:
        step = steps[r.step - 1]
        np.testing.assert_allclose(r.mean_channels, step.mean, rtol=1e-5)
        np.testing.assert_allclose(r.variance_channels, step.variance, rtol=1e-4)
        assert r.variance == pytest.approx(step.variance.mean(), rel=1e-4)
    # Keras's layer makes no debug records.
    assert monitor.records("theirs", "batch") == []
    # The hook is gone and the model compiles without it from now on.
    assert not registry.is_active()
    assert model.train_function is None


def test_each_epoch_by_default_and_layer_selection():
    monitor = StatsMonitor(layers=["theirs"], channels=2)
    _fit(monitor, epochs=3)
    assert {r.layer for r in monitor.history} == {"theirs"}
    assert [r.step for r in monitor.history] == [0, 4, 8, 12]
    assert all(len(r.mean_channels) == 2 for r in monitor.history)

    with pytest.raises(ValueError, match="'nope'"):
        _fit(StatsMonitor(layers=["nope"]))


def test_save_csv_and_json(tmp_path):
    monitor = StatsMonitor(every_n_steps=4, batch_stats=True,
                           path=str(tmp_path / "auto.json"))
    _fit(monitor)
    assert json.loads((tmp_path / "auto.json").read_text())[0]["step"] == 0

    monitor.save(str(tmp_path / "stats.csv"))
    with open(tmp_path / "stats.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(monitor.history)
    for row, record in zip(rows, monitor.history):
        assert (int(row["step"]), row["layer"], row["source"]) == (
            record.step, record.layer, record.source)
        assert float(row["variance"]) == pytest.approx(record.variance)
        assert float(row["mean_2"]) == pytest.approx(record.mean_channels[2])

    monitor.save(str(tmp_path / "stats.json"))
    data = json.loads((tmp_path / "stats.json").read_text())
    assert data[-1]["mean_channels"] == list(monitor.history[-1].mean_channels)
    with pytest.raises(ValueError, match="stats.txt"):
        monitor.save(str(tmp_path / "stats.txt"))
    with pytest.raises(ValueError, match="every_n_steps"):
        StatsMonitor(every_n_steps=0)


def test_plot_writes_a_png(tmp_path):
    monitor = StatsMonitor(every_n_steps=1, batch_stats=True)
    _fit(monitor, epochs=1)
    for channels in (None, 2):
        path = tmp_path / f"plot_{channels}.png"
        assert monitor.plot(str(path), channels=channels) == str(path)
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        StatsMonitor().plot(str(tmp_path / "x.png"))

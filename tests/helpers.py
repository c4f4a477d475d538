"""Small helpers the test files import (conftest.py holds only fixtures).

Numerical expectations come from `reference.py`; the layer harness is
`harness.py`.
"""

import json
import os
import pathlib
import subprocess
import sys
import warnings

import keras
import numpy as np

BACKEND = keras.backend.backend()
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def to_numpy(x):
    """A backend tensor or variable as a NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def weight_values(layer):
    """A copy of every weight of `layer`, to compare before and after."""
    return [to_numpy(w).copy() for w in layer.weights]


def assert_weights_equal(before, after):
    """Bitwise equal, dtype included; NaN equals NaN (what "untouched" means)."""
    assert len(before) == len(after)
    for b, a in zip(before, after):
        assert b.dtype == a.dtype
        np.testing.assert_array_equal(a, b)


def moving_statistics(layer):
    """The layer's moving mean and variance as NumPy arrays."""
    return to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)


def fit_batches(x, batch_size, steps=None):
    """The batches `fit(x, batch_size=..., shuffle=False)` trains on, in
    order, for `steps` steps (one epoch if None; later epochs start over)."""
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    steps = len(batches) if steps is None else steps
    return [batches[step % len(batches)] for step in range(steps)]


def config_json(config):
    """A layer config as JSON with sorted keys: how `.keras` files store it
    (it must survive JSON), and comparable whatever the key order."""
    return json.dumps(config, sort_keys=True)


def run_example(name, *args):
    """Runs `examples/<name>` on this backend; returns what it printed."""
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Backend: {BACKEND}" in result.stdout
    return result.stdout


def assert_explains_predict(out):
    """What the demo and examples/seed_question.py print: predict() on a
    fresh layer gives x / sqrt(1 + 1e-3), explained from the layer's own
    record; training=True normalizes the batch."""
    assert "[[0.     0.9995]\n [1.999  2.9985]]" in out
    assert "branch:   moving statistics (training=False)" in out
    assert "flags:    never_updated" in out
    assert "NeverUpdatedWarning:" in out
    assert "y ≈ x / sqrt(1.001) per channel" in out
    assert "[[-0.9995 -0.9995]\n [ 0.9995  0.9995]]" in out
    assert "batch statistics, mean [1. 2.], variance [1. 1.], count 2" in out


def never_updated_warnings(run):
    """The `NeverUpdatedWarning`s that `run()` gives (every one, not once)."""
    import keras_bn_ext

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [
        w for w in caught if issubclass(w.category, keras_bn_ext.NeverUpdatedWarning)
    ]

"""The main job: the demo answers the seed question on every backend."""

import os
import subprocess
import sys

import keras

from keras_bn_ext.demo import run_demo


def test_demo_explains_the_seed_question(capsys):
    run_demo()
    out = capsys.readouterr().out
    # The puzzling output, x / sqrt(1 + 1e-3)...
    assert "[[0.     0.9995]" in out
    # ...explained from the layer's own record and state.
    assert "branch:   moving statistics (training=False)" in out
    assert "flags:    never_updated" in out
    assert "mean:     [0. 0.]" in out
    assert "variance: [1. 1.]" in out
    assert "NeverUpdatedWarning:" in out
    assert "y ≈ x / sqrt(1.001)" in out
    # training=True normalizes the batch; debias fixes predict after one step.
    assert "[[-0.9995 -0.9995]" in out
    assert "batch statistics, mean [1. 2.], variance [1. 1.], count 2" in out
    assert out.count("fit step") == 5


def test_cli_demo_selects_backend():
    # --backend must win over KERAS_BACKEND: ask for the current backend while
    # the environment names another.
    backend = keras.backend.backend()
    other = "jax" if backend != "jax" else "torch"
    env = dict(os.environ, KERAS_BACKEND=other)
    result = subprocess.run(
        [sys.executable, "-m", "keras_bn_ext", "--backend", backend, "demo"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"demo on the {backend} backend" in result.stdout

"""The main job: the demo answers "why does predict() not normalize?" on
every backend."""

import os
import subprocess
import sys

import keras
from helpers import assert_explains_predict

from keras_bn_ext.demo import run_demo


def test_demo_explains_predict(capsys):
    run_demo()
    out = capsys.readouterr().out
    assert_explains_predict(out)
    assert "mean:     [0. 0.]" in out
    assert "variance: [1. 1.]" in out
    # debias fixes predict after one step.
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

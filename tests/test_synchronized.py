"""synchronized=True computes the statistics of the global batch: a TF
MirroredStrategy, JAX sharding and torch.distributed, each in a subprocess
(devices and process groups must be set up before the backend starts)."""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

SCRIPTS = {
    "tensorflow": "tf_mirrored.py",
    "jax": "jax_sharded.py",
    "torch": "torch_gloo.py",
}


@pytest.mark.skipif(keras.backend.backend() not in SCRIPTS, reason="no script")
def test_synchronized_statistics_are_global():
    script = pathlib.Path(__file__).parent / "distributed" / SCRIPTS[keras.backend.backend()]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True,
        env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stderr

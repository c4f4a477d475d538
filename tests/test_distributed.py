"""Training through each framework's distributed engine, as a user would,
on CPU: JAX DataParallel over forced host devices, TF MirroredStrategy over
logical CPUs, torch DDP over gloo on loopback. Each runs in a subprocess
(devices and process groups must be set up before the backend starts)."""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

SCRIPTS = {
    "jax": [
        ("jax_data_parallel.py", "2"),
        ("jax_data_parallel.py", "4"),
        ("../../examples/distributed_debug.py",),
    ],
    "tensorflow": [("tf_mirrored_fit.py",)],
    "torch": [("torch_ddp.py",)],
}
CASES = SCRIPTS.get(keras.backend.backend(), [])


@pytest.mark.skipif(not CASES, reason="no distributed engine for this backend")
@pytest.mark.parametrize("script", CASES, ids=[" ".join(c) for c in CASES] or None)
def test_training_through_the_distributed_engine(script):
    path = pathlib.Path(__file__).parent / "distributed" / script[0]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(path), *script[1:]], capture_output=True, text=True,
        env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if script[0].endswith("distributed_debug.py"):  # the docs' example
        assert "[('bn', 'batch', 16, None), ('bn', 'batch', 16, None)]" in result.stdout
    else:
        assert "OK" in result.stderr

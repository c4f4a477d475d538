"""The backend seam: what each backend module overrides (a change here is a
deliberate one), and no unknown backend silently falls back to another's."""

import importlib
import os
import subprocess
import sys

import pytest

from keras_bn_ext import backend

OVERRIDES = {
    "_jax": [
        "custom_vjp", "flush", "host_callback", "host_value", "stages_callbacks",
        "value_moved_to_trainer", "call_on_host_if", "widest_float", "stored_value",
    ],
    "_tensorflow": [
        "all_reduce_sum", "callbacks_supported", "channel_sum", "custom_vjp",
        "host_callback", "host_value", "is_distributed", "jit_compatible",
        "replica_id", "set_model_jit", "stages_callbacks",
    ],
    "_torch": [
        "all_reduce_sum", "custom_vjp", "host_callback", "host_value",
        "is_compiling", "is_distributed", "multiply_add", "native_batch_norm",
        "no_grad", "replica_id", "reshape",
    ],
    "_numpy": ["host_callback", "host_value"],
}


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_each_backend_module_overrides_only_what_differs(name):
    module = importlib.import_module(f"keras_bn_ext.backend.{name}")
    assert backend.overrides(module) == sorted(OVERRIDES[name])


def test_supported_backends_are_listed_once_and_readable_without_keras():
    code = (
        "import runpy, sys; "
        "print(*runpy.run_path('keras_bn_ext/backend/supported.py')['BACKENDS']); "
        "assert 'keras' not in sys.modules"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == list(backend.BACKENDS) == ["tensorflow", "jax", "torch"]


def test_an_unknown_backend_is_refused():
    code = (
        "import keras; keras.backend.backend = lambda: 'mlx'; "
        "import keras_bn_ext.backend"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode != 0
    assert "does not support the Keras backend 'mlx'" in result.stderr

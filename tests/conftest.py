"""Fixtures shared by every test. The backend is chosen by KERAS_BACKEND
(scripts/test.sh runs the suite once per backend); helpers that tests import
live in helpers.py, the float64 reference in reference.py."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

from keras_bn_ext import debug  # noqa: E402


@pytest.fixture(autouse=True)
def _isolate():
    """Each test starts with a fixed seed, the default dtype policy and no
    leftover global debug hooks or captures."""
    keras.utils.set_random_seed(1234)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
    debug.reset()

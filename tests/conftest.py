"""Shared test set-up. The backend is chosen by KERAS_BACKEND (scripts/test.sh
runs the suite once per backend)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_bn_ext import debug  # noqa: E402

BACKEND = keras.backend.backend()


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.fixture(autouse=True)
def _isolate():
    """Each test starts with a fixed seed, the default dtype policy and no
    leftover global debug hooks or captures."""
    keras.utils.set_random_seed(1234)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
    debug.reset()

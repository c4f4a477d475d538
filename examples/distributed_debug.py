"""Debug records under JAX DataParallel on 2 forced CPU devices: one record
per step with the global batch's statistics.

    python examples/distributed_debug.py
"""

import os

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn_ext  # noqa: E402

keras.distribution.set_distribution(keras.distribution.DataParallel())
inputs = keras.Input((4,))
bn = keras_bn_ext.BatchNormalization(name="bn")
model = keras.Model(inputs, keras.layers.Dense(1)(bn(inputs)))
model.compile("sgd", "mse")
x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
y = np.ones((32, 1), "float32")
with keras_bn_ext.debug.capture(model) as records:
    model.fit(x, y, batch_size=16, verbose=0)
print("devices:", len(keras.distribution.list_devices()))
print([(r.layer, r.branch, r.count, r.replica) for r in records])

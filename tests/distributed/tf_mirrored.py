"""synchronized=True under a TF MirroredStrategy over 2 logical CPUs."""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn_ext  # noqa: E402

x = np.random.default_rng(0).normal(3, 2, (16, 4)).astype("float32")
x[8:] += 10  # the two replicas see different data
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
results = {}
for synchronized in (True, False):
    with strategy.scope():
        inputs = keras.Input((4,))
        outputs = keras_bn_ext.BatchNormalization(
            synchronized=synchronized, momentum=0.0
        )(inputs)
        model = keras.Model(inputs, outputs)
        model.compile("sgd", "mse")
    model.fit(x, x, batch_size=16, epochs=1, verbose=0, shuffle=False)
    layer = model.layers[1]
    results[synchronized] = (
        keras.ops.convert_to_numpy(layer.moving_mean),
        keras.ops.convert_to_numpy(layer.moving_variance),
    )
np.testing.assert_allclose(results[True][0], x.mean(0), rtol=1e-5)
np.testing.assert_allclose(results[True][1], x.var(0), rtol=1e-4)
# Without synchronization each replica's variance misses the between-replica
# spread, so the test can tell the two apart.
assert np.all(results[False][1] < 0.5 * x.var(0))
print("OK", file=sys.stderr)

"""`model.fit` under tf.distribute.MirroredStrategy over 2 logical CPUs:
synchronized statistics exact at mean 1e5 (per-replica shifts merged
exactly), unequal local batches, per-replica statistics without
synchronization, one debug record per replica and step, save and load."""

import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn_ext  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def fit(x, batch_size, synchronized, capture=False):
    with strategy.scope():
        inputs = keras.Input((x.shape[1],))
        bn = keras_bn_ext.BatchNormalization(
            synchronized=synchronized, momentum=0.0, name="bn"
        )
        model = keras.Model(inputs, bn(inputs))
        model.compile("sgd", "mse")
    if capture:
        with keras_bn_ext.debug.capture(model) as records:
            model.fit(x, x, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    else:
        records = None
        model.fit(x, x, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    moving = [keras.ops.convert_to_numpy(v) for v in (bn.moving_mean, bn.moving_variance)]
    return model, moving, records


# 1. Synchronized, far from zero: 65,536 values per channel at mean 1e5, std 1.
rng = np.random.default_rng(0)
x = rng.normal(1e5, 1.0, (65536, 2)).astype("float32")
x[32768:] += 3.0  # the replicas' halves differ
_, (mean, var), _ = fit(x, 65536, synchronized=True)
x64 = x.astype(np.float64)
assert np.max(np.abs(var - x64.var(0)) / x64.var(0)) < 1e-4, (var, x64.var(0))
np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-7)

# 2. Debug records per replica and step, inside fit.
x = rng.normal(3, 2, (16, 4)).astype("float32")
x[8:] += 10
model, (mean, var), records = fit(x, 16, synchronized=True, capture=True)
np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
np.testing.assert_allclose(var, x.var(0), rtol=1e-4)
assert sorted(r.replica for r in records) == [0, 1], records
for record in records:
    assert record.count == 16, record  # the global batch's count
    np.testing.assert_allclose(record.variance, x.var(0), rtol=1e-4)

# 3. Unequal local batches (8 + 7; Keras's fit itself refuses uneven
# per-replica batches under MirroredStrategy, so a custom step).
with strategy.scope():
    layer = keras_bn_ext.BatchNormalization(synchronized=True, momentum=0.0)
    layer.build((None, 4))
parts = [x[:8], x[8:15]]
values = strategy.experimental_distribute_values_from_function(
    lambda context: tf.constant(parts[context.replica_id_in_sync_group])
)
strategy.run(tf.function(lambda v: layer(v, training=True)), args=(values,))
np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), x[:15].mean(0), rtol=1e-5)
np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), x[:15].var(0), rtol=1e-4)

# 4. Not synchronized: each replica its own statistics (replica 0's are kept).
model, (mean, var), records = fit(x, 16, synchronized=False, capture=True)
by_replica = {r.replica: r for r in records}
np.testing.assert_allclose(by_replica[0].mean, x[:8].mean(0), rtol=1e-5)
np.testing.assert_allclose(by_replica[1].mean, x[8:].mean(0), rtol=1e-5)
assert by_replica[0].count == 8 and by_replica[1].count == 8
np.testing.assert_allclose(mean, x[:8].mean(0), rtol=1e-5)

# 5. Save and load: the file keeps replica 0's moving statistics.
path = os.path.join(tempfile.mkdtemp(), "model.keras")
model.save(path)
loaded = keras.saving.load_model(path)
bn = loaded.get_layer("bn")
np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), mean, rtol=1e-6)
gamma, beta = (keras.ops.convert_to_numpy(v) for v in (bn.gamma, bn.beta))
expected = (x - mean) / np.sqrt(var + bn.epsilon) * gamma + beta
np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-4)
# 6. One consistent set: recalibrate (outside the strategy's replica
# context) writes the population statistics to every replica.
keras_bn_ext.recalibrate(model, [x], verbose=0)
bn = model.get_layer("bn")
np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), x.mean(0), rtol=1e-5)
np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), x.var(0), rtol=1e-4)
model.save(path)
np.testing.assert_allclose(
    keras.saving.load_model(path).predict(x, verbose=0), model.predict(x, verbose=0),
    rtol=1e-5, atol=1e-5,
)
# 7. diagnose on a model built under the strategy: exact, changes nothing.
before = [keras.ops.convert_to_numpy(v).copy() for v in model.variables]
diagnosis = keras_bn_ext.diagnose(model, x + 3.0, batch_size=16)
shift = 3.0 / np.sqrt(x.astype(np.float64).var(0) + bn.epsilon)
np.testing.assert_allclose(diagnosis["bn"].mean_shift, shift, rtol=1e-4)
for b, v in zip(before, model.variables):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), b)
print("OK", file=sys.stderr)

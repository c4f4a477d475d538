"""`model.fit` under keras.distribution.DataParallel on N forced CPU devices:
global batch statistics, one debug record per step with the global numbers,
predict, save and load. Usage: python jax_data_parallel.py N"""

import os
import sys
import tempfile

DEVICES = int(sys.argv[1])
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn_ext  # noqa: E402

assert jax.device_count() == DEVICES
keras.distribution.set_distribution(keras.distribution.DataParallel())
BATCH, MOMENTUM = 16, 0.5
rng = np.random.default_rng(0)
x = rng.normal(5.0, 3.0, (64, 4)).astype("float32")
x[:, 1] += 1e4  # far from zero: the shifted statistics keep it exact
y = rng.normal(size=(64, 1)).astype("float32")


def build(synchronized=False):
    # Under sharding the statistics are global either way.
    inputs = keras.Input((4,))
    bn = keras_bn_ext.BatchNormalization(
        momentum=MOMENTUM, name="bn", synchronized=synchronized
    )
    model = keras.Model(inputs, keras.layers.Dense(1)(bn(inputs)))
    model.compile("sgd", "mse")
    return model


def expected_moving():
    mean, var = np.zeros(4), np.ones(4)
    for start in range(0, len(x), BATCH):
        batch = x[start:start + BATCH].astype(np.float64)
        mean = mean * MOMENTUM + batch.mean(0) * (1 - MOMENTUM)
        var = var * MOMENTUM + batch.var(0) * (1 - MOMENTUM)
    return mean, var


def moving(model):
    bn = model.get_layer("bn")
    return (keras.ops.convert_to_numpy(bn.moving_mean),
            keras.ops.convert_to_numpy(bn.moving_variance))


want_mean, want_var = expected_moving()
for debugging in (False, True):
    keras.utils.set_random_seed(0)
    model = build(synchronized=debugging)
    if debugging:
        with keras_bn_ext.debug.capture(model) as records:
            model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        # One record per step, the global batch's statistics, in step order.
        assert [r.branch for r in records] == ["batch"] * 4, records
        for step, record in enumerate(records):
            batch = x[step * BATCH:(step + 1) * BATCH].astype(np.float64)
            np.testing.assert_allclose(record.mean, batch.mean(0), rtol=1e-6)
            np.testing.assert_allclose(record.variance, batch.var(0), rtol=1e-4)
            assert record.count == BATCH and record.replica is None, record
    else:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    mean, var = moving(model)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=1e-4)

    with keras_bn_ext.debug.capture(model) as records:
        predictions = model.predict(x, batch_size=BATCH, verbose=0)
    assert [r.branch for r in records] == ["moving"] * 4, records
    path = os.path.join(tempfile.mkdtemp(), "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, batch_size=BATCH, verbose=0), predictions, rtol=1e-5
    )
    np.testing.assert_allclose(moving(loaded)[1], var, rtol=1e-6)
# StatsMonitor under the distribution: one batch record per step.
monitor = keras_bn_ext.callbacks.StatsMonitor(batch_stats=True)
model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[monitor])
batch_records = monitor.records("bn", "batch")
assert [r.step for r in batch_records] == [1, 2, 3, 4], batch_records
np.testing.assert_allclose(batch_records[0].mean, x[:BATCH].mean(0).mean(), rtol=1e-5)

# recalibrate under the distribution: exact population statistics.
keras_bn_ext.recalibrate(model, [x[:32], x[32:]], verbose=0)
mean, var = moving(model)
np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-6)
np.testing.assert_allclose(var, x.astype(np.float64).var(0), rtol=1e-4)

# diagnose under the distribution: exact numbers, and nothing changes.
before = [keras.ops.convert_to_numpy(v).copy() for v in model.variables]
diagnosis = keras_bn_ext.diagnose(model, x + 3.0, batch_size=2 * BATCH)
assert [(f.layer, f.kind) for f in diagnosis.findings] == [("bn", "data_shift")]
shift = np.abs((x + 3.0).astype(np.float64).mean(0) - mean) / np.sqrt(var + 1e-3)
np.testing.assert_allclose(diagnosis["bn"].mean_shift, shift, rtol=1e-3)
for b, v in zip(before, model.variables):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), b)
print("OK", file=sys.stderr)

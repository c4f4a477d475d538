"""Under JAX sharding the reductions are global: statistics over a batch
sharded across 2 CPU devices equal the whole batch's statistics."""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec  # noqa: E402

import keras_bn_ext  # noqa: E402

assert jax.device_count() == 2
x = np.random.default_rng(0).normal(3, 2, (16, 4)).astype("float32")
x[8:] += 10
mesh = Mesh(np.array(jax.devices()), ("batch",))
x_sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch")))
layer = keras_bn_ext.BatchNormalization(synchronized=True, momentum=0.0)
layer.build((None, 4))


@jax.jit
def step(trainable, non_trainable, x):
    _, new_state = layer.stateless_call(trainable, non_trainable, x, training=True)
    return new_state


new_state = step(
    [v.value for v in layer.trainable_variables],
    [v.value for v in layer.non_trainable_variables],
    x_sharded,
)
moving_mean, moving_variance = (np.asarray(v) for v in new_state)
np.testing.assert_allclose(moving_mean, x.mean(0), rtol=1e-5)
np.testing.assert_allclose(moving_variance, x.var(0), rtol=1e-4)
print("OK", file=sys.stderr)

"""Were a BatchNormalization layer's moving statistics ever updated?

One answer for the layer's warning, its records, `explain()` and `report()`,
for this package's layer and Keras's alike (public attributes only): an
update counter says it exactly; otherwise the statistics are compared with
what a constant initializer gave (a random initializer leaves no trace).
"""

import numpy as np
from keras import initializers


def constant_initializer_value(initializer, shape):
    """The values a deterministic initializer gives (NumPy, so it works while
    tracing too), else None."""
    if isinstance(initializer, initializers.Zeros):
        return np.zeros(shape, "float32")
    if isinstance(initializer, initializers.Ones):
        return np.ones(shape, "float32")
    if isinstance(initializer, initializers.Constant):
        value = initializer.get_config()["value"]
        return np.broadcast_to(np.asarray(value, "float32"), shape).copy()
    return None


def initial_statistics(layer, shape):
    """`(mean, variance)` the layer's initializers give, each None if unknown."""
    return (
        constant_initializer_value(layer.moving_mean_initializer, shape),
        constant_initializer_value(layer.moving_variance_initializer, shape),
    )


def never_updated(layer, moving_mean, moving_variance, num_batches_tracked=None):
    """Whether the given moving statistics are still their initial values."""
    if num_batches_tracked is not None:
        return int(num_batches_tracked) == 0
    if moving_mean is None or moving_variance is None:
        return False
    moving_mean = np.asarray(moving_mean, "float32")
    init_mean, init_var = initial_statistics(layer, moving_mean.shape)
    if init_mean is None or init_var is None:
        return False
    return bool(
        np.array_equal(moving_mean, init_mean)
        and np.array_equal(np.asarray(moving_variance, "float32"), init_var)
    )

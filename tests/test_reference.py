"""The float64 reference itself, against `keras.layers.BatchNormalization`
(float32, within 1e-5) for the options Keras has: axes, momentum, epsilon,
center/scale, masks, renorm with clipping. The options Keras lacks are
checked against their definitions in the tests that use them."""

import keras
import numpy as np
import pytest
import reference
from helpers import to_numpy

TOL = {"rtol": 1e-5, "atol": 1e-5}
STATE_WEIGHTS = ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean",
                 "renorm_stddev")

# name -> (layer kwargs, input shape, masked)
CASES = {
    "default": ({}, (16, 3), False),
    "axis1_rank4": ({"axis": 1, "momentum": 0.5, "epsilon": 0.1}, (4, 3, 5, 2), False),
    "no_center_no_scale": ({"center": False, "scale": False, "momentum": 0.5},
                           (6, 4, 3), False),
    "mask": ({"momentum": 0.5}, (6, 4, 3), True),
    "renorm_clipping": (
        {"renorm": True, "momentum": 0.9, "renorm_momentum": 0.8,
         "renorm_clipping": {"rmax": 1.2, "rmin": 0.8, "dmax": 0.3}},
        (16, 3), False,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_reference_agrees_with_keras(name):
    kwargs, shape, masked = CASES[name]
    layer = keras.layers.BatchNormalization(**kwargs)
    layer.build(shape)
    rng = np.random.default_rng(0)
    for weight in layer.weights:  # not the initial values: each one counts
        weight.assign(rng.uniform(0.5, 2.0, weight.shape).astype("float32"))
    weights = {w.name: to_numpy(w).astype("float64") for w in layer.weights}
    state = reference.State(
        **{name: weights[name] for name in STATE_WEIGHTS if name in weights}
    )
    options = {k: v for k, v in kwargs.items() if k not in ("center", "scale")}
    options.update(gamma=weights.get("gamma"), beta=weights.get("beta"))

    for step in range(3):
        x = rng.normal(2.0 + step, 3.0, shape).astype("float32")
        mask = rng.uniform(size=shape[:-1]) < 0.7 if masked else None
        result = reference.batch_norm(
            x, state, mask=None if mask is None else mask[..., None], **options
        )
        y = to_numpy(layer(x, training=True, mask=mask))
        np.testing.assert_allclose(y, result.output, **TOL, err_msg=f"step {step}")
        state = result.state
        for name in STATE_WEIGHTS:
            if name in weights:
                np.testing.assert_allclose(to_numpy(getattr(layer, name)),
                                           getattr(state, name), **TOL, err_msg=name)
    expected = reference.batch_norm(x, state, training=False, **options).output
    np.testing.assert_allclose(to_numpy(layer(x, training=False)), expected, **TOL)

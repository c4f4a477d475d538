"""tf-keras (Keras 2) BatchNormalization models load into
`keras_bn_ext.BatchNormalization` and compute tf-keras's numbers (issue 14):
`.h5` files made by tf-keras in this test run (tests/tf_keras_fixtures.py,
in a process of its own) load with `custom_objects`, and `predict`, a
training call (outputs, moving statistics, gradients) and `fit` agree with
tf-keras's within 1e-4, on every backend: virtual batches (shifted axis,
strided grouping, tf-keras's weight shapes), renorm with clipping, fused and
not, several channel axes."""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tf_keras_fixtures
from autodiff import gradients
from helpers import to_numpy

import keras_bn_ext

BN = keras_bn_ext.BatchNormalization
CUSTOM = {"BatchNormalization": BN}
TOL = {"atol": 1e-4, "rtol": 1e-4}
CASES = sorted(tf_keras_fixtures.CASES)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    if importlib.util.find_spec("tf_keras") is None:
        pytest.skip("tf-keras is not installed (see requirements-ci.txt)")
    out = tmp_path_factory.mktemp("tf_keras")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, tf_keras_fixtures.__file__, str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def several_axes(name):
    return isinstance(tf_keras_fixtures.CASES[name][0].get("axis"), list)


def load(fixtures, name):
    """The tf-keras model of case `name` in Keras 3, and tf-keras's numbers."""
    data = dict(np.load(fixtures / f"{name}.npz"))
    if not several_axes(name):
        model = keras.saving.load_model(str(fixtures / f"{name}.h5"),
                                        custom_objects=CUSTOM)
        return model, model.layers[-1], data
    # Keras's legacy loader drops an axis list (our error says so, and how to
    # do instead): the layer's config, then tf-keras's weights.
    with pytest.raises(ValueError, match="drops a list of several axes"):
        keras.saving.load_model(str(fixtures / f"{name}.h5"), custom_objects=CUSTOM)
    layer = BN.from_config(json.loads(str(data["layer_config"])))
    model = keras.Sequential([keras.Input(data["x"].shape[1:]), layer])
    count = len([key for key in data if key.startswith("initial_")])
    layer.set_weights([data[f"initial_{i}"] for i in range(count)])
    return model, layer, data


def axes(axis, sample_shape):
    ndim = len(sample_shape) + 1
    return sorted(a % ndim for a in (axis if isinstance(axis, list) else [axis]))


def close(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.size == expected.size, what
    np.testing.assert_allclose(actual.reshape(expected.shape), expected, **TOL,
                               err_msg=what)


@pytest.mark.parametrize("name", CASES)
def test_h5_loads_and_predicts_as_tf_keras(fixtures, name):
    model, layer, data = load(fixtures, name)
    kwargs, sample_shape, _ = tf_keras_fixtures.CASES[name]
    assert type(layer) is BN
    # The channel axes the user gave (tf-keras wrote them shifted with
    # virtual batches), and with virtual batches tf-keras's grouping.
    assert axes(layer.axis, sample_shape) == axes(kwargs.get("axis", -1), sample_shape)
    if "virtual_batch_size" in kwargs:
        assert layer.virtual_batch_grouping == "strided"
    close(model.predict(data["x"], batch_size=6, verbose=0), data["predict"], "predict")


@pytest.mark.parametrize("name", CASES)
def test_a_training_call_matches_tf_keras(fixtures, name):
    _, layer, data = load(fixtures, name)
    trainable = [to_numpy(v) for v in layer.trainable_variables]
    non_trainable = [to_numpy(v) for v in layer.non_trainable_variables]

    def loss(x, gamma, beta):
        y, _ = layer.stateless_call([gamma, beta], non_trainable, x, training=True)
        return keras.ops.sum(y * keras.ops.convert_to_tensor(data["dy"]))

    y, after = layer.stateless_call(trainable, non_trainable, data["x"], training=True)
    close(to_numpy(y), data["train_y"], "outputs")
    for variable, value in zip(layer.non_trainable_variables, after):
        close(to_numpy(value), data[f"call_{variable.name}"], variable.name)
    grads = gradients(loss, [data["x"]] + trainable)
    for grad, what in zip(grads, ("x", "gamma", "beta")):
        close(grad, data[f"grad_{what}"], f"gradient of {what}")


@pytest.mark.parametrize("name", CASES)
def test_fit_matches_tf_keras(fixtures, name):
    model, layer, data = load(fixtures, name)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(data["x"], data["target"], batch_size=tf_keras_fixtures.BATCH,
              epochs=tf_keras_fixtures.FIT, shuffle=False, verbose=0)
    for variable in layer.weights:
        close(to_numpy(variable), data[f"fit_{variable.name}"], variable.name)
    close(model.predict(data["x"], verbose=0), data["fit_predict"], "predict after fit")


@pytest.mark.parametrize("name", ["virtual_image", "fused_image"])
def test_a_loaded_layer_keeps_tf_keras_behaviour_through_its_own_config(
        fixtures, name, tmp_path):
    model, layer, data = load(fixtures, name)
    config = layer.get_config()
    # Written as this layer's config: the axis unshifted, the grouping and
    # the fused kernel's unbiased moving variance said out loud.
    assert BN.from_config(config).get_config() == config
    if name == "virtual_image":
        assert (config["axis"], config["virtual_batch_grouping"]) == (3, "strided")
    else:
        assert config["unbiased_moving_variance"] is True
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[-1].moving_mean.shape == (3,)  # this layer's shapes now
    loaded.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    loaded.fit(data["x"], data["target"], batch_size=tf_keras_fixtures.BATCH,
               epochs=tf_keras_fixtures.FIT, shuffle=False, verbose=0)
    for variable in loaded.layers[-1].weights:
        close(to_numpy(variable), data[f"fit_{variable.name}"], variable.name)


@pytest.mark.parametrize(
    "config, axis",
    [({"axis": 4}, 3), ({"axis": [4]}, [3]), ({"axis": [2, 4]}, [1, 3]),
     ({"axis": -1}, -1), ({"axis": 1}, 1)],
)
def test_tf_keras_virtual_batch_configs_get_their_axis_back(config, axis):
    # A built tf-keras layer with virtual batches writes its axes shifted by
    # one (so at least 2); Keras's .h5 loader turns [4] into 4.
    config = {"name": "bn", "trainable": True, "dtype": "float32",
              "virtual_batch_size": 2, **config}
    layer = BN.from_config(config)
    assert layer.axis == axis
    assert layer.virtual_batch_grouping == "strided"
    # This layer's own config says its grouping: it is never shifted.
    assert BN.from_config(layer.get_config()).axis == axis


def test_tf_keras_configs_without_virtual_batches_and_mixed_precision():
    policy = {"module": "keras.mixed_precision", "class_name": "Policy",
              "config": {"name": "mixed_float16"}, "registered_name": None}
    layer = BN.from_config({"name": "bn", "dtype": policy, "axis": [3],
                            "renorm": True, "renorm_clipping": {"rmax": 2.0},
                            "renorm_momentum": 0.9})
    assert (layer.axis, layer.dtype_policy.name) == ([3], "mixed_float16")
    assert layer.renorm and layer.renorm_clipping == {"rmax": 2.0}


def test_fused_is_accepted_and_adjustment_must_be_none():
    def config(**kwargs):
        return {k: v for k, v in BN(**kwargs).get_config().items() if k != "name"}

    for fused in (None, True, False):
        assert config(fused=fused) == config()  # a no-op, not saved
    assert config(adjustment=None) == config()

    def adjustment(shape):
        return 1.0, 0.0

    with pytest.raises(ValueError, match="Received: adjustment=<function") as info:
        BN(adjustment=adjustment)
    assert "`adjustment`" in str(info.value)

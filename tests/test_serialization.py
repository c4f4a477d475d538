"""Serialization (issue 2): config round trip, `.keras` save/load with the
class intact, and a model saved under one backend loading and predicting the
same under the other two."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import config_json
from helpers import to_numpy

import keras_bn_ext

BN = keras_bn_ext.BatchNormalization
BACKENDS = ("tensorflow", "jax", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG_CASES = {
    "default": {},
    "keras_args": {"axis": 1, "momentum": 0.9, "epsilon": 1e-5, "center": False},
    "list_axis": {"axis": [1, 3]},
    "tuple_axis": {"axis": (-3, -1)},
    "initializers_regularizers": {
        "beta_regularizer": "l2",
        "gamma_constraint": "non_neg",
        "gamma_initializer": keras.initializers.RandomNormal(seed=1),
        "moving_variance_initializer": keras.initializers.Constant(2.0),
    },
    "renorm": {
        "renorm": True,
        "renorm_clipping": {"rmax": 3.0, "rmin": 0.3, "dmax": 5.0},
        "renorm_momentum": 0.9,
    },
    "synchronized": {"synchronized": True},
    "mode_moving": {"mode": "moving"},
    "mode_batch_no_skip": {"mode": "batch", "skip_nonfinite_updates": False},
    "debias": {"debias": True, "momentum": 0.9},
    "cumulative": {"momentum": None},
    "virtual_batch_size": {"virtual_batch_size": 4},
    "pytorch_conventions": {"unbiased_moving_variance": True, "track_updates": True},
    "debug": {"debug": True},
}
EXTENSION_ARGS = {
    "mode", "skip_nonfinite_updates", "unbiased_moving_variance", "debias",
    "virtual_batch_size", "track_updates", "debug",
}


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_config_round_trip(name):
    kwargs = CONFIG_CASES[name]
    layer = BN(**kwargs)
    config = layer.get_config()

    clone = BN.from_config(json.loads(config_json(config)))

    assert type(clone) is BN
    assert config_json(clone.get_config()) == config_json(config)
    # Extension arguments are written only when they differ from the default,
    # and then they come back with their value.
    assert set(config) & EXTENSION_ARGS == set(kwargs) & EXTENSION_ARGS
    for key, value in kwargs.items():
        if key in EXTENSION_ARGS or key in ("momentum", "renorm_clipping"):
            assert getattr(clone, key) == value, key
    if "momentum" in kwargs:
        assert config["momentum"] == kwargs["momentum"]  # None stays None


@pytest.mark.parametrize("name", ["default", "list_axis", "virtual_batch_size", "renorm",
                                  "cumulative"])
def test_config_is_the_same_before_and_after_build(name):
    # build() must not rewrite constructor attributes (a habit of Keras's own
    # layer to avoid), or a saved config would differ from the constructed one.
    layer = BN(**CONFIG_CASES[name])
    before = config_json(layer.get_config())
    layer(np.random.default_rng(0).random((8, 3, 4, 2)).astype("float32"), training=True)
    assert config_json(layer.get_config()) == before


@pytest.mark.parametrize("name", ["default", "keras_args", "initializers_regularizers", "renorm"])
def test_config_is_keras_config(name):
    # A drop-in: for Keras's own arguments the config is exactly Keras's
    # (same keys, same values; only the auto-generated name differs), and
    # each class accepts the other's config.
    kwargs = CONFIG_CASES[name]
    ours = BN(**kwargs).get_config()
    theirs = keras.layers.BatchNormalization(**kwargs).get_config()
    assert set(ours) == set(theirs)
    ours.pop("name")
    theirs.pop("name")
    assert config_json(ours) == config_json(theirs)
    assert type(BN.from_config(theirs)) is BN
    keras.layers.BatchNormalization.from_config(ours)


def test_registered_for_serialization():
    layer = BN(momentum=None, mode="batch")
    serialized = keras.saving.serialize_keras_object(layer)
    assert keras.saving.get_registered_name(BN) == "keras_bn_ext>BatchNormalization"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(restored) is BN
    assert restored.momentum is None and restored.mode == "batch"


def _model(**bn_kwargs):
    inputs = keras.Input((6, 3))
    h = BN(name="bn_in", **bn_kwargs)(inputs)
    h = keras.layers.Dense(4)(h)
    h = BN(axis=1, name="bn_time")(h)
    outputs = keras.layers.Dense(1)(h)
    return keras.Model(inputs, outputs)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((32, 6, 3)) * 3 + 5).astype("float32")
    return x, rng.standard_normal((32, 6, 1)).astype("float32")


@pytest.mark.parametrize(
    "bn_kwargs",
    [{}, {"momentum": None, "track_updates": True},
     {"renorm": True, "renorm_clipping": {"rmax": 2.0}}],
    ids=["default", "cumulative_with_counter", "renorm"],
)
def test_keras_file_round_trip_after_training(tmp_path, bn_kwargs):
    x, y = _data()
    model = _model(**{"momentum": 0.8, **bn_kwargs})
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)

    loaded = keras.saving.load_model(path)

    for name in ("bn_in", "bn_time"):
        layer = loaded.get_layer(name)
        assert isinstance(layer, keras_bn_ext.BatchNormalization)
        original = model.get_layer(name).get_config()
        assert config_json(layer.get_config()) == config_json(original)
    # Same backend, same weights: bitwise the same state and predictions.
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for old, new in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(new), to_numpy(old), err_msg=old.path)
    moving = to_numpy(model.get_layer("bn_in").moving_mean)
    assert not np.allclose(moving, 0.0)  # the state that matters was trained
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# Cross-backend loading --------------------------------------------------------

# Shared by this process and the subprocesses: `save` builds a model with two
# of our layers (one with the int32 update counter), gives it a non-trivial
# state (seeded weights, three training calls for the moving statistics) and
# saves it with its predictions and weights; `load_all` loads every backend's
# file and saves what it predicts. Eager training calls instead of fit() keep
# each process to its imports plus one predict() compile per model.
CROSS_CODE = textwrap.dedent(
    """
    import json, os, time
    import numpy as np
    import keras
    import keras_bn_ext

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((32, 6, 3)) * 3 + 5).astype("float32")


    def _weights(model):
        return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


    def save(out):
        me = keras.backend.backend()
        inputs = keras.Input((6, 3))
        h = keras_bn_ext.BatchNormalization(momentum=0.5, name="bn_in")(inputs)
        h = keras.layers.Dense(4)(h)
        h = keras_bn_ext.BatchNormalization(
            axis=1, momentum=None, track_updates=True, name="bn_time")(h)
        model = keras.Model(inputs, keras.layers.Dense(1)(h))
        init = np.random.default_rng(1)
        for w in model.trainable_weights:
            w.assign(init.standard_normal(w.shape).astype("float32") * 0.5 + 1.0)
        for i in range(3):
            model(X[8 * i:8 * i + 8], training=True)
        model.save(os.path.join(out, me + ".keras"))
        np.save(os.path.join(out, me + "_pred.npy"), model.predict(X, verbose=0))
        np.savez(os.path.join(out, me + "_weights.npz"), **_weights(model))
        # A marker written last: the .keras file may exist before it is whole.
        open(os.path.join(out, me + ".saved"), "w").close()


    def load_all(out, backends):
        me = keras.backend.backend()
        report = {}
        for src in backends:
            loaded = keras.saving.load_model(os.path.join(out, src + ".keras"))
            report[src] = sorted(
                type(l).__module__ + "." + type(l).__name__
                for l in loaded.layers if l.name.startswith("bn")
            )
            np.save(os.path.join(out, src + "_to_" + me + ".npy"),
                    loaded.predict(X, verbose=0))
            np.savez(os.path.join(out, src + "_to_" + me + "_weights.npz"),
                     **_weights(loaded))
        with open(os.path.join(out, me + "_report.json"), "w") as f:
            json.dump(report, f)


    def wait_for(out, backends, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = [os.path.exists(os.path.join(out, b + ".saved")) for b in backends]
            if all(done):
                return
            if any(os.path.exists(os.path.join(out, b + ".failed")) for b in backends):
                raise RuntimeError("another backend failed to save")
            time.sleep(0.2)
        raise TimeoutError("models not saved in time")
    """
)

SUBPROCESS_MAIN = textwrap.dedent(
    """
    import os, sys, traceback
    out, backends = sys.argv[1], sys.argv[2].split(",")
    exec(open(os.path.join(out, "cross_code.py")).read())
    me = keras.backend.backend()
    try:
        save(out)
    except Exception:
        open(os.path.join(out, me + ".failed"), "w").close()
        raise
    wait_for(out, backends)
    load_all(out, backends)
    """
)


def test_saved_under_each_backend_loads_under_every_backend(tmp_path):
    # This process saves under its backend; one subprocess per other backend
    # (run concurrently: each import costs seconds) saves under its own, then
    # all load all: the 3x3 matrix (saved under src, loaded under dst).
    (tmp_path / "cross_code.py").write_text(CROSS_CODE)
    (tmp_path / "main.py").write_text(SUBPROCESS_MAIN)
    code = {}
    exec(CROSS_CODE, code)
    code["save"](str(tmp_path))
    others = [b for b in BACKENDS if b != BACKEND]
    procs = {}
    for backend in others:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        procs[backend] = subprocess.Popen(
            [sys.executable, str(tmp_path / "main.py"), str(tmp_path), ",".join(BACKENDS)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
    for backend, proc in procs.items():
        try:
            output, _ = proc.communicate(timeout=300)
        finally:
            proc.kill()
        assert proc.returncode == 0, f"{backend} failed:\n{output[-4000:]}"
    code["load_all"](str(tmp_path), BACKENDS)

    expected_class = ["keras_bn_ext.layers.batch_normalization.BatchNormalization"] * 2
    for dst in BACKENDS:
        report = json.loads((tmp_path / f"{dst}_report.json").read_text())
        for src in BACKENDS:
            assert report[src] == expected_class, (src, dst, report[src])
            saved_weights = np.load(tmp_path / f"{src}_weights.npz")
            loaded_weights = np.load(tmp_path / f"{src}_to_{dst}_weights.npz")
            # The state arrives bit for bit, whatever the backends.
            assert sorted(saved_weights.files) == sorted(loaded_weights.files)
            for key in saved_weights.files:
                np.testing.assert_array_equal(loaded_weights[key], saved_weights[key],
                                              err_msg=f"{src}->{dst} {key}")
            saved = np.load(tmp_path / f"{src}_pred.npy")
            loaded = np.load(tmp_path / f"{src}_to_{dst}.npy")
            if src == dst:
                np.testing.assert_array_equal(loaded, saved)
            else:
                # Same weights and inputs; only the backends' float32
                # kernels differ (summation order), ~1e-7 relative.
                np.testing.assert_allclose(loaded, saved, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{src}->{dst}")

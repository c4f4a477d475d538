"""report: one row per BatchNormalization layer, flags, a readable table."""

import json

import keras
import numpy as np
from helpers import to_numpy

import keras_bn_ext


def _model():
    inner = keras.Sequential([
        keras.Input((4,)),
        keras_bn_ext.BatchNormalization(track_updates=True, momentum=None,
                                        name="counted"),
    ], name="inner")
    x = keras.Input((4,))
    h = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-2, name="kbn")(x)
    h = keras_bn_ext.BatchNormalization(mode="moving", name="frozen")(h)
    h = inner(h)
    h = keras.layers.BatchNormalization(name="off")(h)
    model = keras.Model(x, h, name="net")
    model.get_layer("off").trainable = False
    return model


def test_rows_hold_every_layer_with_its_settings_and_statistics():
    model = _model()
    kbn = model.get_layer("kbn")
    kbn.moving_mean.assign(np.array([-1.0, 0.0, 2.0, 3.0], "float32"))
    kbn.moving_variance.assign(np.array([0.5, 1.0, 1.5, 4.0], "float32"))
    result = keras_bn_ext.report(model)

    assert [r.name for r in result.rows] == ["kbn", "frozen", "inner/counted", "off"]
    row = result["kbn"]
    assert (row.kind, row.channels, row.momentum, row.epsilon) == ("keras", 4, 0.9, 0.01)
    assert (row.mean_min, row.mean_avg, row.mean_max) == (-1.0, 1.0, 3.0)
    assert (row.var_min, row.var_avg, row.var_max) == (0.5, 1.75, 4.0)
    assert row.flags == () and row.updates is None and row.state == "trainable"
    assert result["frozen"].state == "mode=moving"
    assert result["off"].state == "trainable=False"
    counted = result["inner/counted"]
    assert counted.kind == "keras_bn_ext" and counted.momentum is None
    assert counted.updates == 0 and counted.flags == ("never_updated",)


def test_counter_and_training_clear_never_updated():
    model = _model()
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model(x, training=True)
    result = keras_bn_ext.report(model)
    assert result["inner/counted"].updates == 1
    assert "never_updated" not in result["inner/counted"].flags
    assert "never_updated" not in result["kbn"].flags
    # Frozen layers were not updated by training.
    assert result["frozen"].flags == ("never_updated",)
    assert result["off"].flags == ("never_updated",)


def test_flags_for_bad_statistics():
    model = keras.Sequential([keras.Input((3,))] + [
        keras.layers.BatchNormalization(name=n)
        for n in ("nan", "negative", "tiny", "huge", "fine")
    ])
    values = {
        "nan": [0.5, np.nan, 1.0],
        "negative": [-0.1, 1.0, 1.0],
        "tiny": [1e-5, 1.0, 1.0],
        "huge": [1.0, 1e7, 1.0],
        "fine": [1.0, 2.0, 1.0],
    }
    for name, variance in values.items():
        model.get_layer(name).moving_variance.assign(np.array(variance, "float32"))
    result = keras_bn_ext.report(model)
    assert result["nan"].flags == ("nonfinite",)
    assert result["negative"].flags == ("negative_variance",)
    assert result["tiny"].flags == ("tiny_variance",)
    assert result["huge"].flags == ("huge_variance",)
    assert result["fine"].flags == ()
    assert keras_bn_ext.report(model, huge_variance=1e8)["huge"].flags == ()
    assert [r.name for r in result.flagged] == ["nan", "negative", "tiny", "huge"]


def test_table_reads_well():
    model = _model()
    text = str(keras_bn_ext.report(model))
    lines = text.splitlines()
    assert lines[0] == ("BatchNormalization layers of model 'net': 4 "
                        "(2 keras, 2 keras_bn_ext), 4 flagged")
    header = lines[2].split()
    assert header[:4] == ["layer", "kind", "ch", "momentum"]
    # Columns line up: every row starts its "kind" cell at the same place.
    start = lines[2].index("kind")
    assert all(line[start:].startswith(("keras ", "keras_bn_ext")) for line in lines[3:7])
    assert "inner/counted" in text and "mode=moving" in text
    assert "never_updated: moving statistics still hold their initial values" in text
    assert max(len(line) for line in lines[:7]) < 140


def test_unbuilt_layers_and_empty_models():
    layer = keras.layers.BatchNormalization(name="lonely")
    model = keras.Sequential([layer])
    result = keras_bn_ext.report(model)
    assert result["lonely"].flags == ("not_built",)
    assert result["lonely"].channels is None
    empty = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)], name="dense")
    assert str(keras_bn_ext.report(empty)) == (
        "BatchNormalization layers of model 'dense': 0 (0 keras, 0 keras_bn_ext), "
        "0 flagged")


def test_to_dict_is_json_ready():
    model = _model()
    data = keras_bn_ext.report(model).to_dict()
    assert list(data) == ["kbn", "frozen", "inner/counted", "off"]
    assert data["inner/counted"]["flags"] == ["never_updated"]
    assert data["kbn"]["var_avg"] == 1.0
    assert json.loads(json.dumps(data)) == data
    # A report reads state, it never changes it.
    assert float(to_numpy(model.get_layer("kbn").moving_variance)[0]) == 1.0

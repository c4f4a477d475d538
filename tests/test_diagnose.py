"""diagnose: each cause of a train/inference gap is found, named at its
layer, with numbers that match a float64 NumPy computation; nothing changes."""

import doctest
import importlib
import json
import warnings

import keras
import numpy as np
import pytest
import reference
from helpers import BACKEND
from helpers import moving_statistics
from helpers import to_numpy

import keras_bn_ext

EPS = reference.EPSILON


def _data(n, mean=0.0, std=1.0, channels=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(mean, std, (n, channels)).astype("float32")


def _model(first=None, second=None):
    """input -> bn1 -> Dense -> backbone/bn2 -> Dense(3): Keras's layer
    first, ours nested second (by default)."""
    inputs = keras.Input((4,))
    h = (first or keras.layers.BatchNormalization(name="bn1"))(inputs)
    h = keras.layers.Dense(6, name="dense")(h)
    backbone = keras.Sequential(
        [keras.Input((6,)), second or keras_bn_ext.BatchNormalization(name="bn2")],
        name="backbone")
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(backbone(h)))


def _snapshot(model):
    return {v.path: to_numpy(v).copy() for v in model.variables}


def _assert_unchanged(before, model):
    after = _snapshot(model)
    assert list(after) == list(before)
    for path, value in before.items():
        assert after[path].dtype == value.dtype, path
        np.testing.assert_array_equal(after[path], value, err_msg=path)


def _expected_gap(batches, moving_mean, moving_variance):
    """Float64 NumPy: per-channel mean shift and variance ratio as the
    docs define them (count-weighted over batches)."""
    stats = [reference.moments(b) for b in batches]
    counts = np.array([c for _, _, c in stats], "float64")[:, None]
    mean = (counts * np.stack([m for m, _, _ in stats])).sum(0) / counts.sum()
    variance = (counts * np.stack([v for _, v, _ in stats])).sum(0) / counts.sum()
    shift = np.abs(mean - moving_mean) / np.sqrt(moving_variance + EPS)
    return shift, (variance + EPS) / (moving_variance + EPS)


def test_data_unlike_the_moving_statistics_names_the_first_layer():
    model = _model()
    keras_bn_ext.recalibrate(model, _data(512), verbose=0)  # statistics of N(0, 1)
    shifted = _data(256, mean=3.0, std=2.0, seed=1)
    diagnosis = keras_bn_ext.diagnose(model, shifted, batch_size=32)

    assert [row.layer for row in diagnosis.layers] == ["bn1", "backbone/bn2"]
    assert [(f.layer, f.kind) for f in diagnosis.findings] == [("bn1", "data_shift")]
    bn1 = diagnosis["bn1"]
    assert 2.8 < bn1.mean_shift_median < 3.2 and 3.5 < bn1.variance_ratio_median < 4.5
    # Exactly the float64 numbers.
    batches = [shifted[i:i + 32] for i in range(0, 256, 32)]
    shift, ratio = _expected_gap(batches, *moving_statistics(model.get_layer("bn1")))
    np.testing.assert_allclose(bn1.mean_shift, shift, rtol=1e-5)
    np.testing.assert_allclose(bn1.variance_ratio, ratio, rtol=1e-5)
    assert bn1.mean_shift_max == pytest.approx(shift.max(), rel=1e-5)
    assert diagnosis.findings[0].numbers["mean_shift_max"] == bn1.mean_shift_max
    assert "recalibrate(model, data)" in diagnosis.findings[0].fix
    assert "mode='batch'" in diagnosis.findings[0].fix
    # bn2's inputs are shifted only because bn1's are: no finding of its own.
    bn2 = diagnosis["backbone/bn2"]
    assert bn2.gap > 0.5 and bn2.own_gap < 0.25
    assert bn2.inherited_from == "bn1"


def test_output_gap_matches_numpy():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3)(keras.layers.BatchNormalization(name="bn")(inputs))
    model = keras.Model(inputs, outputs)
    model.get_layer("bn").moving_mean.assign(np.full(4, 0.5, "float32"))
    model.get_layer("bn").moving_variance.assign(np.full(4, 2.0, "float32"))
    x = _data(96, mean=1.0, std=1.5)
    gap = keras_bn_ext.diagnose(model, x, batch_size=32).output_gap

    kernel, bias = (to_numpy(w).astype("float64") for w in model.layers[-1].weights)
    moving = reference.normalize(x, 0.5, 2.0) @ kernel + bias
    batch = np.concatenate([
        reference.normalize(b, *reference.moments(b)[:2]) @ kernel + bias
        for b in (x[:32], x[32:64], x[64:])])
    relative = np.linalg.norm(moving - batch) / np.linalg.norm(batch)
    assert gap.relative_difference == pytest.approx(relative, rel=1e-4)
    assert gap.max_abs_difference == pytest.approx(np.abs(moving - batch).max(), rel=1e-4)
    changed = np.mean(moving.argmax(-1) != batch.argmax(-1))
    assert gap.predictions_changed == pytest.approx(changed, abs=1.5 / 96)
    assert gap.samples == 96


def test_warming_up_is_found_and_recalibrate_clears_it():
    x = _data(384, mean=50.0, std=3.0)
    y = np.zeros((384, 3), "float32")
    model = _model(second=keras_bn_ext.BatchNormalization(track_updates=True, name="bn2"))
    model.compile("sgd", "mse")
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)  # 12 steps
    diagnosis = keras_bn_ext.diagnose(model, x)

    assert diagnosis.kinds("bn1") == ["warming_up"]
    finding = next(f for f in diagnosis.findings if f.layer == "bn1")
    # Keras's layer keeps no counter: estimated from the statistics.
    assert finding.numbers["initial_weight_source"] == "estimated"
    assert finding.numbers["initial_weight"] == pytest.approx(0.99**12, abs=0.02)
    bn2 = diagnosis["backbone/bn2"]
    assert bn2.updates == 12 and bn2.initial_weight_source == "counter"
    assert bn2.initial_weight == pytest.approx(0.99**12, rel=1e-12)
    assert "recalibrate(model, data)" in finding.fix
    assert diagnosis.output_gap.relative_difference > 1.0

    keras_bn_ext.recalibrate(model, x, verbose=0)
    after = keras_bn_ext.diagnose(model, x)
    assert after.findings == []
    assert after["bn1"].mean_shift_max < 1e-3
    assert after.output_gap.relative_difference < 0.2 * diagnosis.output_gap.relative_difference


@pytest.mark.parametrize("ours", [True, False])
def test_an_untrained_model_is_never_updated(ours):
    cls = keras_bn_ext.BatchNormalization if ours else keras.layers.BatchNormalization
    model = _model(cls(name="bn1"), cls(name="bn2"))
    diagnosis = keras_bn_ext.diagnose(model, _data(64, mean=3.0, std=2.0))
    assert diagnosis.kinds("bn1") == ["never_updated"]
    assert diagnosis.kinds("backbone/bn2") == ["never_updated"]
    assert diagnosis.findings[0].numbers["mean_shift_median"] > 2.5
    assert "fit()" in diagnosis.findings[0].fix


def test_batches_of_two_give_the_small_batch_finding():
    model = _model()
    x = _data(256)
    keras_bn_ext.recalibrate(model, x, verbose=0)
    diagnosis = keras_bn_ext.diagnose(model, x, batch_size=2, steps=48)
    assert diagnosis.batches == 48
    assert diagnosis.kinds() == ["small_batch", "small_batch"]
    numbers = diagnosis.findings[0].numbers
    assert numbers["count"] == 2 and numbers["count_needed"] == 25
    assert numbers["expected_mean_noise"] == pytest.approx(1 / np.sqrt(2))
    # Measured: batch means of 2 samples vary by about 1/sqrt(2) std.
    assert 0.5 < diagnosis["bn1"].batch_mean_spread < 0.9
    assert "renorm=True" in diagnosis.findings[0].fix
    # Batches of 64 are large enough.
    assert keras_bn_ext.diagnose(model, x, batch_size=64).findings == []


@pytest.mark.parametrize("freeze", ["trainable", "mode"])
def test_a_frozen_layer_fed_shifted_data_is_named(freeze):
    if freeze == "trainable":
        first = keras.layers.BatchNormalization(name="bn1")
    else:
        first = keras_bn_ext.BatchNormalization(name="bn1", mode="moving")
    model = _model(first)
    first.moving_mean.assign(np.zeros(4, "float32"))  # statistics of N(0, 1)
    first.moving_variance.assign(np.ones(4, "float32") * 1.02)
    keras_bn_ext.recalibrate(model, _data(256), verbose=0)  # bn2 only
    if freeze == "trainable":
        first.trainable = False
    diagnosis = keras_bn_ext.diagnose(model, _data(128, mean=3.0, std=2.0))
    assert diagnosis.kinds() == ["frozen_mismatch"]
    finding = diagnosis.findings[0]
    assert finding.layer == "bn1"
    assert finding.numbers["state"] == ("trainable=False" if freeze == "trainable"
                                        else "mode=moving")
    assert 2.5 < finding.numbers["mean_shift_median"] < 3.5
    assert "recalibrate" in finding.fix and "unfreeze" in finding.fix


def test_bad_variances_rank_first():
    model = _model()
    x = _data(128)
    keras_bn_ext.recalibrate(model, x, verbose=0)
    bn1, bn2 = model.get_layer("bn1"), model.get_layer("backbone").get_layer("bn2")
    variance = to_numpy(bn1.moving_variance).copy()
    variance[0] = 1e-6  # far below epsilon, while its inputs vary
    bn1.moving_variance.assign(variance)
    variance = to_numpy(bn2.moving_variance).copy()
    variance[2] = np.nan
    bn2.moving_variance.assign(variance)
    diagnosis = keras_bn_ext.diagnose(model, x)
    first = diagnosis.findings[0]
    assert (first.layer, first.kind) == ("backbone/bn2", "bad_variance")
    assert first.numbers["nonfinite_channels"] == 1 and first.effect == np.inf
    assert diagnosis.kinds("bn1") == ["bad_variance"]
    assert diagnosis.findings[1].numbers["tiny_variance_channels"] == 1
    assert "epsilon" in diagnosis.findings[1].fix


LAYER_OPTIONS = [
    dict(momentum=None), dict(track_updates=True), dict(debias=True),
    dict(renorm=True), dict(unbiased_moving_variance=True),
    dict(virtual_batch_size=8), dict(mode="batch"), dict(mode="moving"),
]


@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=lambda o: str(o))
def test_nothing_changes(options):
    inputs = keras.Input((4,))
    h = keras.layers.BatchNormalization(name="keras_bn")(inputs)
    h = keras.layers.Dropout(0.5)(h)  # its seed generator is state too
    h = keras_bn_ext.BatchNormalization(name="ours", **options)(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    x = _data(64, mean=2.0)
    model(x[:32], training=True)  # statistics and counters off their initial values
    before = _snapshot(model)
    predictions = to_numpy(model(x, training=False))
    diagnosis = keras_bn_ext.diagnose(model, x)
    assert diagnosis.batches == 2
    _assert_unchanged(before, model)
    np.testing.assert_array_equal(to_numpy(model(x, training=False)), predictions)


def test_the_never_updated_warning_is_not_used_up():
    model = keras.Sequential([keras.Input((4,)), keras_bn_ext.BatchNormalization()])
    keras_bn_ext.diagnose(model, _data(32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(_data(8), training=False)
    assert any(issubclass(w.category, keras_bn_ext.NeverUpdatedWarning) for w in caught)


class _Sequence(keras.utils.PyDataset):
    def __init__(self, x):
        super().__init__()
        self.x = x

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.x[i * 16:(i + 1) * 16], np.zeros((16, 1))


def _forms(x):
    forms = {
        "list": [x[i:i + 16] for i in range(0, 64, 16)],
        "generator": ((x[i:i + 16], None) for i in range(0, 64, 16)),
        "PyDataset": _Sequence(x),
    }
    try:
        import tensorflow as tf
    except ImportError:
        pass
    else:
        forms["tf.data"] = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(16)
    if BACKEND == "torch":
        import torch

        dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.zeros(64))
        forms["DataLoader"] = torch.utils.data.DataLoader(dataset, batch_size=16)
    return forms


def test_every_data_form_gives_the_same_diagnosis():
    model = _model()
    x = _data(64, mean=1.0, std=2.0)
    want = keras_bn_ext.diagnose(model, x, batch_size=16)
    forms = _forms(x)
    assert len(forms) >= 4
    for name, data in forms.items():
        got = keras_bn_ext.diagnose(model, data)
        assert got.batches == 4, name
        for a, b in zip(got.layers, want.layers):
            np.testing.assert_allclose(a.mean_shift, b.mean_shift, rtol=1e-6, err_msg=name)
            np.testing.assert_allclose(a.variance_ratio, b.variance_ratio, rtol=1e-6,
                                       err_msg=name)
        assert got.kinds() == want.kinds(), name
    # An endless dataset needs steps.
    endless = forms.get("tf.data")
    if endless is not None:
        with pytest.raises(ValueError, match="steps"):
            keras_bn_ext.diagnose(model, endless.repeat())
        assert keras_bn_ext.diagnose(model, endless.repeat(), steps=3).batches == 3


def _two_input_model():
    """Inputs a and b (called with a list or by name), added, then a
    BatchNormalization layer."""
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    outputs = keras.layers.BatchNormalization(name="bn")(keras.layers.Add()([a, b]))
    return keras.Model([a, b], outputs)


def _same_measurements(got, want, name):
    assert got.batches == want.batches, name
    for a, b in zip(got.layers, want.layers):
        np.testing.assert_allclose(a.mean_shift, b.mean_shift, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(a.variance_ratio, b.variance_ratio, rtol=1e-6,
                                   err_msg=name)


def test_whole_arrays_are_read_as_fit_reads_them():
    model = _model()
    x = _data(96, mean=1.0, std=2.0)
    y, weights = np.zeros((96, 3), "float32"), np.ones(96, "float32")
    batches = [x[i:i + 32] for i in range(0, 96, 32)]
    want = keras_bn_ext.diagnose(model, batches)
    shift, ratio = _expected_gap(batches, *moving_statistics(model.get_layer("bn1")))
    np.testing.assert_allclose(want["bn1"].mean_shift, shift, rtol=1e-5)
    np.testing.assert_allclose(want["bn1"].variance_ratio, ratio, rtol=1e-5)
    forms = {
        "(x, y)": (x, y), "(x, y, sample_weight)": (x, y, weights),
        "(x, None)": (x, None), "[x, y]": [x, y],
        "[x, y] as tensors": [keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)],
    }
    for name, data in forms.items():
        _same_measurements(keras_bn_ext.diagnose(model, data), want, name)
    # Batches of the same shape stay batches: two of them are not (x, y).
    assert keras_bn_ext.diagnose(model, batches[:2]).batches == 2
    assert keras_bn_ext.diagnose(model, [(b, y[:32]) for b in batches[:2]]).batches == 2


def test_named_and_several_inputs_as_whole_arrays():
    model = _two_input_model()
    xa, xb = _data(64, mean=1.0, seed=1), _data(64, mean=2.0, seed=2)
    batches = [{"a": xa[i:i + 16], "b": xb[i:i + 16]} for i in range(0, 64, 16)]
    want = keras_bn_ext.diagnose(model, batches)
    sums = [b["a"] + b["b"] for b in batches]
    shift, ratio = _expected_gap(sums, np.zeros(4), np.ones(4))
    np.testing.assert_allclose(want["bn"].mean_shift, shift, rtol=1e-5)
    np.testing.assert_allclose(want["bn"].variance_ratio, ratio, rtol=1e-5)
    y = np.zeros((64, 4), "float32")
    # A dict, and (as fit(x=[a, b]) reads them) a list of the model's 2 inputs.
    for name, data in {"dict": {"a": xa, "b": xb}, "(dict, y)": ({"a": xa, "b": xb}, y),
                       "[xa, xb]": [xa, xb], "((xa, xb), y)": ((xa, xb), y)}.items():
        _same_measurements(keras_bn_ext.diagnose(model, data, batch_size=16), want, name)


def test_table_lists_each_layers_own_findings(tmp_path):
    model = _model()
    keras_bn_ext.recalibrate(model, _data(512), verbose=0)
    diagnosis = keras_bn_ext.diagnose(model, _data(96, mean=3.0, std=2.0), batch_size=16)
    assert diagnosis.kinds() == ["data_shift", "small_batch", "small_batch"]
    assert diagnosis["backbone/bn2"].inherited_from == "bn1"
    rows = {line.split()[0]: line for line in str(diagnosis).splitlines()
            if line.startswith("  bn1 ") or line.startswith("  backbone/bn2 ")}
    assert rows["bn1"].endswith("data_shift; small_batch")
    assert rows["backbone/bn2"].endswith("small_batch; gap inherited from bn1")


def _recalibrated_with_nan(value):
    model = _model()
    x = _data(128)
    keras_bn_ext.recalibrate(model, x, verbose=0)
    variance = to_numpy(model.get_layer("bn1").moving_variance).copy()
    variance[1] = value
    model.get_layer("bn1").moving_variance.assign(variance)
    return model, x


@pytest.mark.parametrize("value", [np.nan, -0.5])
def test_non_finite_inputs_from_an_upstream_layer_are_inherited(value):
    model, x = _recalibrated_with_nan(value)
    diagnosis = keras_bn_ext.diagnose(model, x)
    assert [(f.layer, f.kind) for f in diagnosis.findings] == [("bn1", "bad_variance")]
    bn2 = diagnosis["backbone/bn2"]
    # Dense mixes bn1's NaN channel into all of bn2's inputs in inference
    # mode only; batch-statistics mode never reads bn1's moving variance.
    assert bn2.nonfinite_input_channels == 6 and bn2.own_nonfinite_input_channels == 0
    assert bn2.inherited_from == "bn1"
    row = next(line for line in str(diagnosis).splitlines()
               if line.startswith("  backbone/bn2 "))
    assert row.endswith("non-finite inputs from bn1")
    # bn1's summaries skip the NaN channel; the table says it is there.
    bn1 = diagnosis["bn1"]
    assert np.isnan(bn1.mean_shift[1]) and np.isfinite(bn1.mean_shift_max)
    assert bn1.mean_shift_max == np.nanmax(bn1.mean_shift)
    assert "(1 nan)" in next(line for line in str(diagnosis).splitlines()
                             if line.startswith("  bn1 "))


def test_non_finite_data_is_found_at_the_first_layer_only():
    model = _model()
    x = _data(64)
    keras_bn_ext.recalibrate(model, x, verbose=0)
    x[5, 2] = np.nan
    diagnosis = keras_bn_ext.diagnose(model, x)
    assert [(f.layer, f.kind) for f in diagnosis.findings] == [("bn1", "bad_variance")]
    assert diagnosis.findings[0].numbers["nonfinite_input_channels"] == 1
    bn2 = diagnosis["backbone/bn2"]
    assert bn2.own_nonfinite_input_channels == 6 and bn2.inherited_from == "bn1"


def test_output_gap_and_small_batch_wording():
    model = _model()
    diagnosis = keras_bn_ext.diagnose(model, _data(4), batch_size=1)
    gap = diagnosis.output_gap
    assert type(gap.predictions_changed) is float and "np." not in repr(gap)
    small = next(f for f in diagnosis.findings if f.kind == "small_batch")
    assert small.summary.startswith("1 element per channel per batch")


def test_table_json_and_plot(tmp_path):
    model = _model()
    diagnosis = keras_bn_ext.diagnose(model, _data(64, mean=3.0))
    text = str(diagnosis)
    assert "Diagnosis of model" in text and "backbone/bn2" in text
    assert "1. bn1: never_updated" in text or "1. backbone/bn2: never_updated" in text
    assert text.count("fix: ") == len(diagnosis.findings) == 2
    loaded = json.loads(diagnosis.to_json())
    assert [f["kind"] for f in loaded["findings"]] == diagnosis.kinds()
    assert loaded["layers"][0]["mean_shift"] == pytest.approx(
        diagnosis.layers[0].mean_shift.tolist())
    assert set(loaded["output_gap"]) == {
        "relative_difference", "max_abs_difference", "predictions_changed", "samples"}
    path = diagnosis.plot(tmp_path / "gap.png")
    assert (tmp_path / "gap.png").read_bytes()[:4] == b"\x89PNG" and path


def test_bad_arguments_are_named():
    model = _model()
    x = _data(8)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        keras_bn_ext.diagnose(model, x, batch_size=0)
    with pytest.raises(ValueError, match="no batch"):
        keras_bn_ext.diagnose(model, [])
    for steps in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"positive integer or None. Received: steps={steps}"):
            keras_bn_ext.diagnose(model, x, steps=steps)
    with pytest.raises(ValueError, match="must be a Keras model. Received: model=None"):
        keras_bn_ext.diagnose(None, x)
    with pytest.raises(ValueError, match=r"model='m.keras' of type str.*load_model\('m.keras'\)"):
        keras_bn_ext.diagnose("m.keras", x)
    for data, received in ((None, "data=None of type NoneType"), (3, "data=3 of type int")):
        with pytest.raises(ValueError, match=f"`data` must be arrays.*Received: {received}"):
            keras_bn_ext.diagnose(model, data)
    with pytest.raises(ValueError, match="not a file path.*Received: data='x.npy' of type str"):
        keras_bn_ext.diagnose(model, "x.npy")
    with pytest.raises(ValueError, match="same number of rows.*keys \\['a', 'b'\\]"):
        keras_bn_ext.diagnose(_two_input_model(), {"a": x, "b": x[:4]})
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(ValueError, match="Model 'plain' has no BatchNormalization layer"):
        keras_bn_ext.diagnose(plain, x)


def test_docstring_example():
    module = importlib.import_module("keras_bn_ext.tools.diagnose")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

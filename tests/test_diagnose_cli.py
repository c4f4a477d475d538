"""`keras-bn-ext diagnose MODEL.keras DATA.npy|.npz`, and the example
examples/diagnose_gap.py (the diagnosis names the cause; the fix closes the gap)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import run_example

import keras_bn_ext
from keras_bn_ext.cli import main
from keras_bn_ext.tools import diagnose_cli


def _saved(tmp_path):
    """A saved model whose statistics describe N(0, 1), and data N(3, 2)."""
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.BatchNormalization(name="bn1"),
        keras.layers.Dense(5), keras_bn_ext.BatchNormalization(name="bn2"),
    ], name="saved")
    rng = np.random.default_rng(0)
    keras_bn_ext.recalibrate(model, rng.normal(size=(256, 4)).astype("float32"), verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    return path, rng.normal(3.0, 2.0, (128, 4)).astype("float32")


def test_diagnose_a_saved_model_on_npy_and_npz(tmp_path, capsys):
    path, x = _saved(tmp_path)
    np.save(tmp_path / "x.npy", x)
    plot = tmp_path / "gap.png"
    assert main(["diagnose", path, str(tmp_path / "x.npy"), "--batch-size", "16",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert f"on {tmp_path / 'x.npy'} (128, 4)" in out
    assert "on 128 samples in 8 batches" in out
    assert "1. bn1: data_shift" in out and "fix: " in out
    assert plot.read_bytes()[:4] == b"\x89PNG"

    # .npz: the array named x, else the first one; --json.
    np.savez(tmp_path / "named.npz", y=np.zeros(3), x=x)
    np.savez(tmp_path / "first.npz", x[:64])
    for name, samples in (("named.npz", 128), ("first.npz", 64)):
        assert main(["diagnose", path, str(tmp_path / name), "--json"]) == 0
        loaded = json.loads(capsys.readouterr().out)
        assert loaded["output_gap"]["samples"] == samples
        assert loaded["findings"][0]["layer"] == "bn1"
        assert loaded["findings"][0]["kind"] == "data_shift"


def test_bad_data_files_are_one_line_errors(tmp_path, capsys):
    path, x = _saved(tmp_path)
    (tmp_path / "x.csv").write_text("1,2,3,4")
    np.savez(tmp_path / "empty.npz")
    cases = {
        str(tmp_path / "missing.npy"): "no such file",
        str(tmp_path / "x.csv"): "must be a .npy or .npz file",
        str(tmp_path / "empty.npz"): "holds no array",
    }
    for data, message in cases.items():
        assert main(["diagnose", path, data]) == 1
        captured = capsys.readouterr()
        errors = [e for e in captured.err.splitlines() if e.startswith("keras-bn-ext:")]
        assert len(errors) == 1 and errors[0].startswith("keras-bn-ext: error: ")
        assert message in errors[0] and "Traceback" not in captured.err
    np.save(tmp_path / "x.npy", x)
    assert main(["diagnose", path, str(tmp_path / "x.npy"), "--batch-size", "0"]) == 1
    assert "Received: 0" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path / "nope.keras"), str(tmp_path / "x.npy")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_bad_options_fail_before_the_work(tmp_path, capsys, monkeypatch):
    path, x = _saved(tmp_path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "none.npy", x[:0])

    def not_called(*args, **kwargs):
        raise AssertionError("diagnose ran despite a bad option")

    monkeypatch.setattr(diagnose_cli, "diagnose", not_called)
    data = str(tmp_path / "x.npy")
    cases = [
        ([data, "--steps", "-2"], "--steps must be positive. Received: -2"),
        ([data, "--steps", "0"], "--steps must be positive. Received: 0"),
        ([data, "--plot", "/nonexistent_dir/x.png"], "--plot: no such directory: /nonexistent_dir"),
        ([data, "--plot", str(tmp_path)],
         f"--plot must be a file path, not a directory: {tmp_path}"),
        ([str(tmp_path / "none.npy")], "holds no rows (its array has shape (0, 4))"),
    ]
    for args, message in cases:
        assert main(["diagnose", path, *args]) == 1
        captured = capsys.readouterr()
        line = captured.err.strip()
        assert line.startswith("keras-bn-ext: error: ") and "\n" not in line
        assert message in line
        assert captured.out == ""


@pytest.mark.skipif(BACKEND != "jax", reason="one backend is enough for the process test")
def test_diagnose_command_in_its_own_process(tmp_path):
    path, x = _saved(tmp_path)
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "keras_bn_ext", "--backend", "torch", "diagnose", path,
         str(tmp_path / "x.npy"), "--steps", "2"],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "on 64 samples in 2 batches" in result.stdout
    assert "1. bn1: data_shift" in result.stdout


def test_diagnose_gap_example():
    out = run_example("diagnose_gap.py", "--quick")
    assert "First finding: bn1 data_shift" in out
    line = next(s for s in out.splitlines() if s.startswith("After keras_bn_ext.recalibrate"))
    after, before = line.split("accuracy ")[1].split(" (was ")
    assert float(after) > float(before.rstrip(")")) + 0.2
    assert "Diagnosis now: 0 findings" in out

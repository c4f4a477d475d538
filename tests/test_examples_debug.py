"""Smoke tests: the debugging examples run on the selected backend and print
what they promise."""

import os
import pathlib
import subprocess
import sys

from conftest import BACKEND

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def run_example(name):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_seed_question_example():
    out = run_example("seed_question.py")
    assert f"Backend: {BACKEND}" in out
    # The puzzling output, then the record and explain() that explain it.
    assert "[[0.     0.9995]\n [1.999  2.9985]]" in out
    assert "branch:   moving statistics (training=False)" in out
    assert "flags:    never_updated" in out
    assert "NeverUpdatedWarning:" in out
    assert "y ≈ x / sqrt(1.001) per channel" in out
    # What the user wanted, with the batch's statistics.
    assert "[[-0.9995 -0.9995]\n [ 0.9995  0.9995]]" in out
    assert "batch statistics, mean [1. 2.], variance [1. 1.], count 2" in out


def test_debug_in_fit_example():
    out = run_example("debug_in_fit.py")
    assert f"Backend: {BACKEND}" in out
    assert "2 epochs x 4 batches -> 8 records" in out
    assert "predict(): 2 batches -> 2 records" in out
    rows = [line.split() for line in out.splitlines()
            if line.strip()[:1].isdigit() and ("batch" in line or "moving" in line)]
    assert [row[1] for row in rows] == ["batch"] * 8 + ["moving"] * 2

"""Smoke tests: the debugging examples run on the selected backend and print
what they promise (`run_example` checks the backend line)."""

from helpers import run_example


def test_seed_question_example():
    out = run_example("seed_question.py")
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
    assert "2 epochs x 4 batches -> 8 records" in out
    assert "predict(): 2 batches -> 2 records" in out
    rows = [line.split() for line in out.splitlines()
            if line.strip()[:1].isdigit() and ("batch" in line or "moving" in line)]
    assert [row[1] for row in rows] == ["batch"] * 8 + ["moving"] * 2

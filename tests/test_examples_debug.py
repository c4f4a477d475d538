"""Smoke tests: the debugging examples run on the selected backend and print
what they promise (`run_example` checks the backend line)."""

from helpers import assert_explains_predict
from helpers import run_example


def test_seed_question_example():
    assert_explains_predict(run_example("seed_question.py"))


def test_debug_in_fit_example():
    out = run_example("debug_in_fit.py")
    assert "2 epochs x 4 batches -> 8 records" in out
    assert "predict(): 2 batches -> 2 records" in out
    rows = [line.split() for line in out.splitlines()
            if line.strip()[:1].isdigit() and ("batch" in line or "moving" in line)]
    assert [row[1] for row in rows] == ["batch"] * 8 + ["moving"] * 2

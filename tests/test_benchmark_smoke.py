"""A tiny run of benchmarks/bench.py on the current backend, so the benchmark
cannot rot: small shapes, one round, no timing assertions."""

import math
import os
import sys

import keras
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import bench  # noqa: E402
import bench_steps  # noqa: E402
import bench_timing  # noqa: E402

BACKEND = keras.backend.backend()

pytestmark = pytest.mark.skipif(
    BACKEND not in bench_steps.BACKENDS, reason=f"no benchmark for backend {BACKEND}"
)


# The two cases off the simplest path (channel axis 1; a mask), to stay fast:
# every step compiles once per layer.
CASES = tuple(c for c in bench_steps.TINY_CASES if c.axis == 1 or c.masked)


def test_tiny_benchmark_prints_a_table_with_finite_ratios(capsys):
    result = bench.run_backend(
        BACKEND, cases=CASES, settings="tiny", memory=True, bandwidth=True,
    )
    rows = result["rows"]
    # every case, and every step of this backend (train, inference, ...)
    assert [(r["case"], r["step"]) for r in rows] == [
        (c.name, s.label) for c in CASES for s in bench_steps.steps_for(BACKEND, c)
    ]
    for row in rows:
        assert math.isfinite(row["ours_over_keras"]) and row["ours_over_keras"] > 0
        assert all(math.isfinite(t) and t > 0 for t in row["median_ms"].values())
        assert math.isfinite(row["roofline_ms"]) and row["roofline_ms"] > 0
        if "ours_hook" in row["median_ms"]:
            assert math.isfinite(row["hook_over_off"])
        if BACKEND == "jax":
            assert set(row["xla_passes"]) == {"keras", "ours"}
    # the hook really ran, compiled in
    assert result["hook_calls"] > 0
    # the largest case's memory, where the backend can measure it
    assert bool(result["memory"]) == (BACKEND != "tensorflow")

    table = bench.format_table(result)
    print(table)
    print(bench.format_memory(result))
    out = capsys.readouterr().out
    assert "ours/keras" in out and "roofline ms" in out
    for case in CASES:
        assert case.name in out
    markdown = bench.format_table(result, markdown=True).splitlines()
    assert markdown[0].startswith("| backend |") and markdown[1].startswith("|---|")
    assert len(markdown) == 2 + len(rows)


def test_steps_for_adds_torch_compile_only_where_asked():
    dense, nhwc = bench_steps.FULL_CASES[:2]
    assert nhwc.name == "conv NHWC"
    compiled = [s.mode for s in bench_steps.steps_for("torch", nhwc, "one")]
    assert compiled == ["train", "infer", "train_compiled", "infer_compiled"]
    assert len(bench_steps.steps_for("torch", dense, "one")) == 2
    assert len(bench_steps.steps_for("torch", dense, "all")) == 4
    assert len(bench_steps.steps_for("torch", nhwc, "none")) == 2


def test_alternating_timer_and_median_ratio():
    calls = []
    times = bench_timing.time_group(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        rounds=3, target_s=0.0, warmup=1,
    )
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    # after warm-up and calibration (2 calls each), rounds alternate the order
    assert calls[:4] == ["a", "a", "b", "b"]
    assert calls[4:6] == ["a", "b"] and calls[6:8] == ["b", "a"]
    assert math.isfinite(bench_timing.median_ratio(times, "a", "b"))


def test_step_bytes_counts_passes():
    case = bench_steps.Case("dense", (4, 8), -1)
    assert bench_steps.step_bytes(case, "infer") == 2 * 32 * 4
    assert bench_steps.step_bytes(case, "train") == 8 * 32 * 4


@pytest.mark.skipif(BACKEND != "torch", reason="torch's native kernel only")
def test_torch_floor_prints_every_step_against_native(capsys):
    import torch_floor

    torch_floor.main(["--shape", "2", "4", "4", "8", "--rounds", "1", "--target-s", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "step | ms | x native"
    rows = dict(line.split(" | ", 1) for line in lines[2:])
    assert list(rows) == [
        "native", "keras minimal, no shift", "keras minimal, shifted", "keras_bn_ext",
    ]
    assert rows["native"].endswith("| 1.00")

"""Smoke tests: the model-tools examples run on the selected backend and
show what they promise (`run_example` checks the backend line)."""

from helpers import run_example


def test_finetune_frozen_bn_example():
    out = run_example("finetune_frozen_bn.py")
    rows = {line[:16].strip(): line[16:].split()[:3] for line in out.splitlines()
            if line.startswith(("default", "trainable=False", "mode='moving'"))}
    assert rows == {
        "default": ["trained", "updated", "batch"],
        "trainable=False": ["frozen", "frozen", "moving"],
        "mode='moving'": ["trained", "frozen", "moving"],
    }


def test_recalibrate_example():
    out = run_example("recalibrate.py")
    assert "input_bn: 384 samples in 4 batches; moving mean == x.mean(axis=0)" in out
    line = next(s for s in out.splitlines() if s.startswith("After recalibration"))
    after, before = (float(w.rstrip(")")) for w in (line.split()[4], line.split()[6]))
    assert after < before


def test_monitor_example(tmp_path):
    out = run_example("monitor.py", "--out", str(tmp_path))
    assert "48 training steps" in out
    assert (tmp_path / "bn_stats.png").read_bytes()[:4] == b"\x89PNG"
    header = (tmp_path / "bn_stats.csv").read_text().splitlines()[0]
    assert header.startswith("step,epoch,layer,source,mean,variance")

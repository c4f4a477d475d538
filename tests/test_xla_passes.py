"""XLA's exact count of the bytes a JAX step moves, in full-size passes.

The benchmark's `XLA passes` column, as a test: `xla_cost.xla_passes` compiles
the train and inference steps from shapes alone (nothing runs) and divides
`compiled.cost_analysis()["bytes accessed"]` by the float32 input's bytes.
A train step needs 8 passes at the least (bench_steps.step_bytes); 10 leaves
room for one reduction XLA CPU does not fuse. Inference needs 2.
"""

import os
import sys

import keras
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import bench_steps  # noqa: E402
import xla_cost  # noqa: E402

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="XLA cost analysis of a JAX step"
)

CASES = [c for c in bench_steps.FULL_CASES if c.name in ("conv NHWC", "conv NCHW", "dense")]

# Per-channel vectors (gamma, beta, the statistics, their gradients, the
# moving update) are C-sized: about 50 of their reads and writes add 0.2 of a
# pass on the dense case (C=1024 of 262144 elements), 0.002 on the convs. A
# full-size pass adds 1.0, so half a pass of slack still counts every one.
PER_CHANNEL_SLACK = 0.5


@pytest.mark.parametrize("mode, limit", [("train", 10), ("infer", 2)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.describe())
def test_step_makes_few_full_size_passes(case, mode, limit):
    ours = xla_cost.xla_passes("ours", case, mode)
    keras_passes = xla_cost.xla_passes("keras", case, mode)
    print(f"{case.describe()} {mode}: ours {ours:.3f}, keras {keras_passes:.3f} passes")
    assert ours <= limit + PER_CHANNEL_SLACK, (
        f"{mode} step of {case.describe()}: ours {ours:.3f} full-size passes "
        f"(Keras's layer {keras_passes:.3f}), over {limit}"
    )

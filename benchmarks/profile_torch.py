"""Where a torch train step spends its time: torch.profiler per layer.

    KERAS_BACKEND=torch python benchmarks/profile_torch.py ["conv NHWC"] [--mode train|infer] [--threads N]

For each of Keras's layer, ours and torch.nn.BatchNorm, prints the time of
one eager step, the number of aten calls, and the operators that cost the
most (self CPU time), so docs/performance.md can say which kernels and
passes make the difference.
"""

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("KINETO_LOG_LEVEL", "5")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_steps  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", nargs="?", default="conv NHWC",
                        choices=[c.name for c in bench_steps.FULL_CASES])
    parser.add_argument("--mode", default="train", choices=("train", "infer"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    case = next(c for c in bench_steps.FULL_CASES if c.name == args.case)
    data = bench_steps.make_data(case)
    print(f"{case.describe()}, {args.mode}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for impl in ("keras", "ours", "native"):
        run = bench_steps.build_step("torch", impl, case, args.mode, data)
        if run is None:
            continue
        for _ in range(3):
            run()
        n = 10
        t0 = time.perf_counter()
        for _ in range(n):
            run()
        ms = (time.perf_counter() - t0) / n * 1e3
        counts = bench_steps.torch_op_counts(run)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                run()
        print(f"\n== {impl}: {ms:.2f} ms per step, {counts['aten_calls']} aten "
              "calls per step; profile of 5 steps:")
        table = prof.key_averages().table(sort_by="self_cpu_time_total",
                                          row_limit=args.rows)
        print(table)


if __name__ == "__main__":
    main()

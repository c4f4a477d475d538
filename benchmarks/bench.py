"""Benchmark: keras_bn_ext.BatchNormalization against Keras's own layer.

    python benchmarks/bench.py --backend jax|tensorflow|torch|all [--quick] [--json OUT]

For each shape and step (a compiled train step: forward, backward, moving
update; and inference), it times our layer with debugging off, with one debug
hook on (train step), Keras's `keras.layers.BatchNormalization`, and where
installed the framework's native BatchNorm, alternating them round by round
in one process, and prints the median time of each and the median of the
per-round ratios. A roofline column divides the bytes a step must move by a
measured copy bandwidth at the same working-set size; on JAX, XLA's own count
of the bytes moved gives the passes column. Peak memory is reported for the
largest shape where the backend can measure it.

The backend is fixed once per process, so `--backend all` runs each backend
in a subprocess and prints the combined table. See docs/performance.md.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_steps  # noqa: E402
import bench_timing  # noqa: E402
import xla_cost  # noqa: E402
from bench_steps import BACKENDS  # noqa: E402
from bench_steps import FULL_CASES  # noqa: E402

# (rounds, seconds per measurement, warm-up calls)
SETTINGS = {
    "full": (15, 0.05, 3),
    "quick": (5, 0.015, 2),
    "tiny": (1, 0.0, 1),
}


def _log(message):
    print(message, file=sys.stderr, flush=True)


def run_backend(backend, cases=FULL_CASES, settings="full", torch_compile="none",
                memory=True, bandwidth=True, threads=None):
    """Runs the benchmark on the current process's Keras backend.

    `torch_compile`: "none", "one" (the conv NHWC case) or "all": which
    cases also time torch.compile (each graph takes tens of seconds to
    compile on a small CPU). Returns a JSON-serializable dict: rows (one per
    case and step), peak memory, bandwidth, versions, machine and notes.
    """
    import keras

    if keras.backend.backend() != backend:
        raise ValueError(
            f"This process runs Keras backend {keras.backend.backend()!r}; set "
            f"KERAS_BACKEND={backend} before importing keras. "
            f"Received: backend={backend!r}"
        )
    warnings.simplefilter("ignore")
    load_before = bench_timing.machine()["load_average"]
    hook = bench_steps.HookCounter()
    largest = max(cases, key=lambda c: c.size)
    rows, memory_rows, bandwidths = [], [], {}
    for case in cases:
        data = bench_steps.make_data(case)
        if bandwidth:
            bandwidths[case.name] = bench_timing.copy_bandwidth(case.size * 4)
        for step in bench_steps.steps_for(backend, case, torch_compile):
            fns = {}
            for impl in step.impls:
                fn = bench_steps.build_step(backend, impl, case, step.mode, data, hook)
                if fn is not None:
                    fns[impl] = fn
            _log(f"[{backend}] {case.describe()}: {step.label}")
            times = bench_timing.time_group(fns, *SETTINGS[settings])
            row, costs = _row(backend, case, step, times, bandwidths.get(case.name))
            rows.append(row)
            if memory and case is largest:
                memory_rows += _memory_rows(backend, case, step.mode, fns, costs)
    return {
        "backend": backend,
        "settings": settings,
        "rows": rows,
        "memory": memory_rows,
        "bandwidth": {k: {"bytes_per_s": v[0], "method": v[1]}
                      for k, v in bandwidths.items()},
        "versions": _versions(backend),
        "machine": {**bench_timing.machine(), "load_average_before": load_before},
        "hook_calls": hook.calls,
        "threads": threads or "library default",
        "notes": _notes(backend, torch_compile),
    }


def _row(backend, case, step, times, bandwidth):
    """One table row from the step's times; on JAX, with XLA's costs (also
    returned, impl -> `xla_cost.xla_cost` dict, for the memory report)."""

    def ratio(a, b):
        if a in times and b in times:
            return bench_timing.median_ratio(times, a, b)
        return None

    row = {
        "backend": backend,
        "case": case.name,
        "shape": list(case.shape),
        "axis": case.axis,
        "masked": case.masked,
        "mode": step.mode,
        "step": step.label,
        "median_ms": {k: 1e3 * bench_timing.median(v) for k, v in times.items()},
        "ours_over_keras": ratio("ours", "keras"),
        "hook_over_off": ratio("ours_hook", "ours"),
        "ours_over_native": ratio("ours", "native"),
        "keras_over_native": ratio("keras", "native"),
        "rounds": len(next(iter(times.values()))),
    }
    costs = {}
    if backend == "jax":
        costs = {impl: xla_cost.xla_cost(impl, case, step.mode)
                 for impl in ("keras", "ours") if impl in times}
        # XLA's count of bytes moved, in full-size float32 passes.
        row["xla_passes"] = {impl: c["passes"] for impl, c in costs.items()}
    if bandwidth:
        roof_s = bench_steps.step_bytes(case, step.mode) / bandwidth[0]
        row["roofline_ms"] = 1e3 * roof_s
        row["times_roofline"] = {
            k: bench_timing.median(v) / roof_s for k, v in times.items()
        }
    return row, costs


def _memory_rows(backend, case, mode, fns, costs):
    """XLA's buffers (JAX) or the allocator's peak (torch) for one step."""
    rows = [{"backend": backend, "case": case.name, "mode": mode, "impl": impl,
             **cost} for impl, cost in costs.items()]
    if backend == "torch" and not mode.endswith("_compiled"):
        for impl, fn in fns.items():
            if impl == "ours_hook":
                continue
            rows.append({
                "backend": backend, "case": case.name, "mode": mode, "impl": impl,
                "peak_bytes": bench_steps.torch_peak_bytes(fn),
                **bench_steps.torch_op_counts(fn),
                "method": "torch.profiler(profile_memory=True): running "
                          "sum of allocator records during one step",
            })
    return rows


def _notes(backend, torch_compile):
    notes = []
    if backend == "torch" and torch_compile != "all":
        notes.append(
            "torch.compile timed on "
            + ("the conv NHWC case only" if torch_compile == "one" else "no case")
            + " (each graph compiles in tens of seconds here; "
            "--torch-compile all times every case)."
        )
    if backend == "jax":
        try:
            import flax.nnx  # noqa: F401

            notes.append("flax is installed but flax.nnx.BatchNorm is not timed.")
        except ImportError:
            notes.append("flax not installed: no flax.nnx.BatchNorm column.")
    if backend == "tensorflow":
        notes.append("Peak memory not measured on TensorFlow: its CPU allocator "
                     "keeps no statistics (tf.config.experimental."
                     "get_memory_info('CPU:0') returns zeros).")
    return notes


def _versions(backend):
    import keras
    import numpy as np

    # Each backend's name is its Python module's name.
    module = importlib.import_module(backend)
    versions = {"keras": keras.__version__, "numpy": np.__version__,
                backend: module.__version__}
    if backend == "torch":
        versions["torch_threads"] = module.get_num_threads()
    try:
        versions["keras_bn_ext_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except Exception:
        pass
    return versions


def set_threads(backend, n):
    """Limits the backend's intra-op threads (call before any computation)."""
    if backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'} "
            f"intra_op_parallelism_threads={n}"
        ).strip()
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    elif backend == "torch":
        import torch

        torch.set_num_threads(n)


# Table -------------------------------------------------------------------------


def _fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def _field(key, spec=".2f"):
    return lambda row: _fmt(row.get(key), spec)


def _ms(impl):
    return lambda row: _fmt(row["median_ms"].get(impl), ".3f")


def _roof(impl):
    return lambda row: _fmt(row.get("times_roofline", {}).get(impl), ".1f")


def _passes(row):
    traffic = row.get("xla_passes") or {}
    if "keras" not in traffic or "ours" not in traffic:
        return "-"
    return f"{traffic['keras']:.0f}/{traffic['ours']:.0f}"


# (title, cell of a row)
COLUMNS = (
    ("backend", lambda row: row["backend"]),
    ("shape", lambda row: row["case"]),
    ("step", lambda row: row["step"]),
    ("keras ms", _ms("keras")),
    ("ours ms", _ms("ours")),
    ("ours/keras", _field("ours_over_keras")),
    ("hook ms", _ms("ours_hook")),
    ("hook/off", _field("hook_over_off")),
    ("native ms", _ms("native")),
    ("ours/native", _field("ours_over_native")),
    ("XLA passes k/o", _passes),
    ("roofline ms", _field("roofline_ms", ".3f")),
    ("keras/roof", _roof("keras")),
    ("ours/roof", _roof("ours")),
)


def format_table(results, markdown=False):
    """The results of one or more backends as a text (or Markdown) table."""
    if isinstance(results, dict):
        results = [results]
    header = [title for title, _ in COLUMNS]
    body = [[cell(row) for _, cell in COLUMNS]
            for result in results for row in result["rows"]]
    if markdown:
        lines = ["| " + " | ".join(cells) + " |" for cells in [header] + body]
        return "\n".join(lines[:1] + ["|" + "---|" * len(header)] + lines[1:])
    widths = [max(len(c[i]) for c in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells, widths))
             for cells in [header] + body]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def format_memory(results):
    """Peak memory and notes, one line each."""
    if isinstance(results, dict):
        results = [results]
    lines = []
    for result in results:
        for m in result["memory"]:
            if "peak_bytes" in m:
                what = (f"peak {m['peak_bytes'] / 2**20:.1f} MiB allocated, "
                        f"{m['aten_calls']} aten calls")
            else:
                what = (f"temp {m['temp_bytes'] / 2**10:.1f} KiB, output "
                        f"{m['output_bytes'] / 2**20:.1f} MiB (no full-size "
                        "temporary if temp < 1 MiB)")
            lines.append(f"{m['backend']:<10} {m['case']:<10} {m['mode']:<6} "
                         f"{m['impl']:<7} {what}")
        lines += [f"{result['backend']}: {note}" for note in result["notes"]]
    return "\n".join(lines)


# Command line ------------------------------------------------------------------


def _run_all(args):
    """Each backend in its own subprocess; their results, in order."""
    results = []
    for backend in BACKENDS:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, f"{backend}.json")
            command = [sys.executable, os.path.abspath(__file__), "--backend", backend,
                       "--json", out]
            if args.quick:
                command.append("--quick")
            if args.torch_compile:
                command += ["--torch-compile", args.torch_compile]
            if args.threads:
                command += ["--threads", str(args.threads)]
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            _log(f"=== {backend} ===")
            # The child's own table goes to stderr; the combined one to stdout.
            code = subprocess.run(command, env=env, stdout=sys.stderr).returncode
            if code != 0:
                _log(f"{backend}: benchmark failed (exit {code})")
                continue
            with open(out) as f:
                results.append(json.load(f))
    return results


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS + ("all",), required=True)
    parser.add_argument("--quick", action="store_true",
                        help="fewer, shorter rounds (for development)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    parser.add_argument("--markdown", action="store_true",
                        help="print the table as Markdown")
    parser.add_argument("--torch-compile", choices=("none", "one", "all"),
                        default=None,
                        help="cases that also time torch.compile: none, one "
                             "(conv NHWC; the default without --quick) or all")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for the backend (default: the "
                             "library's own choice, all cores)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.backend == "all":
        results = _run_all(args)
        if len(results) != len(BACKENDS):
            print(format_table(results, args.markdown))
            return 1
    else:
        os.environ["KERAS_BACKEND"] = args.backend
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        if args.threads:
            set_threads(args.backend, args.threads)
        torch_compile = args.torch_compile or ("none" if args.quick else "one")
        results = [run_backend(args.backend,
                               settings="quick" if args.quick else "full",
                               torch_compile=torch_compile, threads=args.threads)]
    print(format_table(results, args.markdown))
    print()
    print(format_memory(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results if args.backend == "all" else results[0], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

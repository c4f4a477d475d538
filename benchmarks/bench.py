"""Benchmark: keras_bn_ext.BatchNormalization against Keras's own layer.

    python benchmarks/bench.py --backend jax|tensorflow|torch|all [--quick] [--json OUT]

For each shape and step (a compiled train step: forward, backward, moving
update; and inference), it times our layer with debugging off, with one debug
hook on (train step), Keras's `keras.layers.BatchNormalization`, and where
installed the framework's native BatchNorm, alternating them round by round
in one process, and prints the median time of each and the median of the
per-round ratios. A roofline column divides the bytes a step must move by a
measured copy bandwidth at the same working-set size. Peak memory is reported
for the largest shape where the backend can measure it.

The backend is fixed once per process, so `--backend all` runs each backend
in a subprocess and prints the combined table. See docs/performance.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_timing  # noqa: E402
from bench_steps import FULL_CASES  # noqa: E402

BACKENDS = ("jax", "tensorflow", "torch")

# (rounds, seconds per measurement, warm-up calls)
SETTINGS = {
    "full": (15, 0.05, 3),
    "quick": (5, 0.015, 2),
    "tiny": (1, 0.0, 1),
}

STEP_LABELS = {
    ("jax", "train"): "train (jit)",
    ("jax", "infer"): "infer (jit)",
    ("tensorflow", "train"): "train (XLA)",
    ("tensorflow", "train_graph"): "train (graph, no XLA)",
    ("tensorflow", "infer"): "infer (XLA)",
    ("torch", "train"): "train (eager)",
    ("torch", "infer"): "infer (eager)",
    ("torch", "train_compiled"): "train (torch.compile)",
    ("torch", "infer_compiled"): "infer (torch.compile)",
}


def _log(message):
    print(message, file=sys.stderr, flush=True)


def _versions(backend):
    import keras
    import numpy as np

    versions = {"keras": keras.__version__, "numpy": np.__version__}
    if backend == "jax":
        import jax

        versions["jax"] = jax.__version__
    elif backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    elif backend == "torch":
        import torch

        versions["torch"] = torch.__version__
        versions["torch_threads"] = torch.get_num_threads()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        versions["keras_bn_ext_commit"] = commit
    except Exception:
        pass
    return versions


def _groups(backend, case, torch_compile):
    """(mode, implementations) pairs timed for `case` on `backend`."""
    if backend == "jax":
        return [("train", ["keras", "ours", "ours_hook"]), ("infer", ["keras", "ours"])]
    if backend == "tensorflow":
        return [
            ("train", ["keras", "ours"]),
            ("train_graph", ["keras", "ours", "ours_hook"]),
            ("infer", ["keras", "ours"]),
        ]
    groups = [
        ("train", ["keras", "ours", "ours_hook", "native"]),
        ("infer", ["keras", "ours", "native"]),
    ]
    if torch_compile == "all" or (torch_compile == "one" and case.name == "conv NHWC"):
        groups += [("train_compiled", ["keras", "ours"]),
                   ("infer_compiled", ["keras", "ours"])]
    return groups


def _build_step(backend, impl, case, mode, data, hook, memory=None):
    import bench_steps

    if impl == "native":
        module = bench_steps.torch_native_module(case)
        if module is None:
            return None
        return bench_steps.torch_native_step(module, case, mode, data)
    layer = bench_steps.make_layer(impl, case, hook)
    if backend == "jax":
        return bench_steps.jax_step(layer, case, mode, data, memory)
    if backend == "tensorflow":
        xla = mode != "train_graph"
        base_mode = "train" if mode == "train_graph" else mode
        return bench_steps.tf_step(layer, case, base_mode, data, xla)
    compiled = mode.endswith("_compiled")
    return bench_steps.torch_step(layer, case, mode.split("_")[0], data, compiled)


def _ratio(times, a, b):
    if a in times and b in times:
        return bench_timing.median_ratio(times, a, b)
    return None


def run_backend(backend, cases=FULL_CASES, settings="full", torch_compile="none",
                memory=True, bandwidth=True, threads=None):
    """Runs the benchmark on the current process's Keras backend.

    `torch_compile`: "none", "one" (the conv NHWC case) or "all": which
    cases also time torch.compile (each graph takes tens of seconds to
    compile on a small CPU). Returns a JSON-serializable dict: rows (one per case and step), peak
    memory, bandwidth, versions, machine and notes.
    """
    import bench_steps
    import keras

    if keras.backend.backend() != backend:
        raise ValueError(
            f"This process runs Keras backend {keras.backend.backend()!r}; set "
            f"KERAS_BACKEND={backend} before importing keras. "
            f"Received: backend={backend!r}"
        )
    warnings.simplefilter("ignore")
    load_before = bench_timing.machine()["load_average"]
    rounds, target_s, warmup = SETTINGS[settings]
    hook = bench_steps.HookCounter()
    rows = []
    memory_rows = []
    largest = max(cases, key=lambda c: c.size)
    bandwidths = {}
    for case in cases:
        data = bench_steps.make_data(case)
        if bandwidth:
            bandwidths[case.name] = bench_timing.copy_bandwidth(case.size * 4)
        for mode, impls in _groups(backend, case, torch_compile):
            fns = {}
            mem = {}
            for impl in impls:
                mem[impl] = {} if backend == "jax" and impl != "ours_hook" else None
                fn = _build_step(backend, impl, case, mode, data, hook, mem[impl])
                if fn is not None:
                    fns[impl] = fn
            label = STEP_LABELS[(backend, mode)]
            _log(f"[{backend}] {case.describe()}: {label}")
            times = bench_timing.time_group(fns, rounds, target_s, warmup)
            row = {
                "backend": backend,
                "case": case.name,
                "shape": list(case.shape),
                "axis": case.axis,
                "masked": case.masked,
                "mode": mode,
                "step": label,
                "median_ms": {k: 1e3 * bench_timing.median(v) for k, v in times.items()},
                "ours_over_keras": _ratio(times, "ours", "keras"),
                "hook_over_off": _ratio(times, "ours_hook", "ours"),
                "ours_over_native": _ratio(times, "ours", "native"),
                "keras_over_native": _ratio(times, "keras", "native"),
                "rounds": rounds,
            }
            traffic = {k: m["bytes_accessed"] / (4 * case.size)
                       for k, m in mem.items() if m and "bytes_accessed" in m}
            if traffic:
                # XLA's count of bytes moved, in full-size float32 passes.
                row["xla_passes"] = traffic
            if bandwidth:
                bw, how = bandwidths[case.name]
                roof_s = bench_steps.step_bytes(case, mode) / bw
                row["roofline_ms"] = 1e3 * roof_s
                row["times_roofline"] = {
                    k: bench_timing.median(v) / roof_s for k, v in times.items()
                }
            rows.append(row)
            for impl in ("keras", "ours"):
                if memory and case is largest and mem.get(impl):
                    memory_rows.append({"backend": backend, "case": case.name,
                                        "mode": mode, "impl": impl, **mem[impl]})
            if memory and backend == "torch" and case is largest and not mode.endswith("_compiled"):
                for impl in impls:
                    if impl == "ours_hook" or impl not in fns:
                        continue
                    peak = bench_steps.torch_peak_bytes(fns[impl])
                    counts = bench_steps.torch_op_counts(fns[impl])
                    memory_rows.append({
                        "backend": backend, "case": case.name, "mode": mode,
                        "impl": impl, "peak_bytes": peak, **counts,
                        "method": "torch.profiler(profile_memory=True): running "
                                  "sum of allocator records during one step",
                    })
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
        "notes": notes,
    }


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
    if value is None:
        return "-"
    return format(value, spec)


COLUMNS = (
    ("backend", "backend"),
    ("case", "shape"),
    ("step", "step"),
    ("keras", "keras ms"),
    ("ours", "ours ms"),
    ("ours_over_keras", "ours/keras"),
    ("ours_hook", "hook ms"),
    ("hook_over_off", "hook/off"),
    ("native", "native ms"),
    ("ours_over_native", "ours/native"),
    ("passes", "XLA passes k/o"),
    ("roofline_ms", "roofline ms"),
    ("keras_roof", "keras/roof"),
    ("ours_roof", "ours/roof"),
)


def _passes(traffic):
    if not traffic or "keras" not in traffic or "ours" not in traffic:
        return "-"
    return f"{traffic['keras']:.0f}/{traffic['ours']:.0f}"


def _cells(row):
    ms = row["median_ms"]
    roof = row.get("times_roofline", {})
    values = {
        "backend": row["backend"],
        "case": row["case"],
        "step": row["step"],
        "keras": _fmt(ms.get("keras"), ".3f"),
        "ours": _fmt(ms.get("ours"), ".3f"),
        "ours_over_keras": _fmt(row["ours_over_keras"]),
        "ours_hook": _fmt(ms.get("ours_hook"), ".3f"),
        "hook_over_off": _fmt(row["hook_over_off"]),
        "native": _fmt(ms.get("native"), ".3f"),
        "ours_over_native": _fmt(row["ours_over_native"]),
        "passes": _passes(row.get("xla_passes")),
        "roofline_ms": _fmt(row.get("roofline_ms"), ".3f"),
        "keras_roof": _fmt(roof.get("keras"), ".1f"),
        "ours_roof": _fmt(roof.get("ours"), ".1f"),
    }
    return [values[key] for key, _ in COLUMNS]


def format_table(results, markdown=False):
    """The results of one or more backends as a text (or Markdown) table."""
    if isinstance(results, dict):
        results = [results]
    header = [title for _, title in COLUMNS]
    body = [_cells(row) for result in results for row in result["rows"]]
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h)
              for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    lines = [line, "-" * len(line)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in body]
    return "\n".join(lines)


def format_memory(results):
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
        for note in result["notes"]:
            lines.append(f"{result['backend']}: {note}")
    return "\n".join(lines)


# Command line ------------------------------------------------------------------


def _run_all(args):
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


def main(argv=None):
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
    args = parser.parse_args(argv)

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
        payload = results if args.backend == "all" else results[0]
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

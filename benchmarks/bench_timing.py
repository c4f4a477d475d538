"""Backend-neutral measuring tools for the benchmark: the alternating timing
loop, the copy bandwidth behind the roofline, and the machine description.

Nothing here imports a Keras backend, so `bench.py --backend all` can use it
in the parent process.
"""

import gc
import os
import platform
import statistics
import threading
import time

import numpy as np


def time_group(fns, rounds, target_s, warmup=2):
    """Times each callable of `fns` (name -> fn, one step each, blocking).

    Warm-up first (compiles, fills caches), then `rounds` rounds; in each
    round every callable runs `inner` back-to-back steps (calibrated so one
    measurement takes about `target_s`), in an order rotated every round so
    that no one always runs first or right after another. Returns name ->
    list of seconds per step, one entry per round: per-round ratios pair
    measurements made a few milliseconds apart, which cancels most of the
    drift of a shared, noisy machine.
    """
    names = list(fns)
    inner = {}
    for name in names:
        fn = fns[name]
        for _ in range(warmup):
            fn()
        t0 = time.perf_counter()
        fn()
        one = time.perf_counter() - t0
        inner[name] = max(1, int(round(target_s / max(one, 1e-7))))
    times = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            k = r % len(names)
            order = names[k:] + names[:k]
            if (r // len(names)) % 2:
                order = order[::-1]
            for name in order:
                fn, n = fns[name], inner[name]
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                times[name].append((time.perf_counter() - t0) / n)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def median(values):
    return float(statistics.median(values))


def median_ratio(times, numerator, denominator):
    """Median over rounds of times[numerator][r] / times[denominator][r]."""
    pairs = zip(times[numerator], times[denominator])
    return median([a / b for a, b in pairs])


def copy_bandwidth(nbytes, repeats=30):
    """Best measured copy bandwidth (bytes moved per second, read + write)
    for a buffer of `nbytes`, i.e. at the working-set size of the tensor.

    Measured with NumPy, single-threaded and split over all cores (NumPy
    releases the GIL while copying), so the figure does not depend on the
    Keras backend; the faster of the two is returned with its name.
    """
    n = max(1, nbytes // 4)
    src = np.random.default_rng(0).standard_normal(n).astype("float32")
    dst = np.empty_like(src)
    best_single = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best_single = min(best_single, time.perf_counter() - t0)

    workers = os.cpu_count() or 1
    best_threaded = float("inf")
    if workers > 1 and n >= 1 << 16:
        bounds = np.linspace(0, n, workers + 1).astype(int)
        chunks = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        for _ in range(repeats):
            barrier = threading.Barrier(workers + 1)
            done = threading.Barrier(workers + 1)

            def work(d, s, barrier=barrier, done=done):
                barrier.wait()
                np.copyto(d, s)
                done.wait()

            threads = [threading.Thread(target=work, args=c) for c in chunks]
            for t in threads:
                t.start()
            barrier.wait()
            t0 = time.perf_counter()
            done.wait()
            best_threaded = min(best_threaded, time.perf_counter() - t0)
            for t in threads:
                t.join()
    moved = 2.0 * n * 4
    if best_threaded < best_single:
        return moved / best_threaded, f"numpy copy, {workers} threads"
    return moved / best_single, "numpy copy, 1 thread"


def machine():
    """CPU model, core count, load and OS, for the report."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        load = "n/a"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }

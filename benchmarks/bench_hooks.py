"""What debugging costs a whole model's train step: hooks off, one host
callback per layer, and one packed callback per step (`debug.capture(model)`
or `debug.retrace(model)` prepares the model's steps for it).

    KERAS_BACKEND=jax python benchmarks/bench_hooks.py [--layers 1 10 50] [--quick]

The model is `Dense(64) -> BatchNormalization` repeated, on a (256, 64)
batch, trained with `train_on_batch` (fit's compiled step). The three models
alternate round by round; ratios are medians of per-round ratios to "off".
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_timing  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bn_ext  # noqa: E402


def build(layers):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    x = inputs
    for _ in range(layers):
        x = keras_bn_ext.BatchNormalization()(keras.layers.Dense(64)(x))
    model = keras.Model(inputs, x)
    model.compile("sgd", "mse")
    return model


def steps(layers, x):
    """name -> one train step, for the three ways of debugging."""
    off = build(layers)
    per_layer = build(layers)
    packed = build(layers)
    for model in (per_layer, packed):
        for layer in model.layers:
            if isinstance(layer, keras_bn_ext.BatchNormalization):
                layer.add_debug_hook(lambda record: None)
    keras_bn_ext.debug.retrace(packed)  # its steps issue one callback each

    def step(model):
        def run():
            model.train_on_batch(x, x)
            keras_bn_ext.debug.step_callbacks.flush()

        return run

    return {"off": step(off), "per layer": step(per_layer), "packed": step(packed)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, target = (5, 0.05) if args.quick else (15, 0.2)
    x = np.random.default_rng(0).normal(size=(256, 64)).astype("float32")
    print(f"backend {keras.backend.backend()}: train step ms (ratio to off)")
    print("layers | off | per layer | packed")
    for layers in args.layers:
        keras_bn_ext.debug.reset()
        times = bench_timing.time_group(steps(layers, x), rounds, target)
        cells = [f"{bench_timing.median(times['off']) * 1e3:.2f}"]
        for name in ("per layer", "packed"):
            ms = bench_timing.median(times[name]) * 1e3
            cells.append(f"{ms:.2f} ({bench_timing.median_ratio(times, name, 'off'):.2f}x)")
        print(f"{layers} | " + " | ".join(cells), flush=True)
    keras_bn_ext.debug.reset()


if __name__ == "__main__":
    main()

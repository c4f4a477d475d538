"""Watching moving statistics converge during training, with a plot.

    KERAS_BACKEND=tensorflow python examples/monitor.py --out /tmp/bn   (or jax, torch)

`keras_bn_ext.callbacks.StatsMonitor` records every BatchNormalization
layer's moving mean and variance every few steps and, with
`batch_stats=True`, the statistics of every training batch (from our layers'
debug records, also inside the compiled train step). It saves them as CSV
and draws one row of plots per layer: the moving statistics (lines) chase
the batch statistics (dots) at a pace set by the momentum.
"""

import argparse
import pathlib
import tempfile

import keras
import numpy as np

import keras_bn_ext


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for bn_stats.csv and "
                        "bn_stats.png (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="bn_monitor_"))
    out.mkdir(parents=True, exist_ok=True)

    print(f"Backend: {keras.backend.backend()}")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(512, 4)) * [1.0, 2.0, 3.0, 0.5] + [4.0, -2.0, 0.0, 1.0])
    x = x.astype("float32")
    y = x @ rng.normal(size=(4, 1)).astype("float32")

    inputs = keras.Input((4,))
    h = keras_bn_ext.BatchNormalization(momentum=0.9, name="bn_input")(inputs)
    h = keras.layers.Dense(16, activation="relu")(h)
    h = keras_bn_ext.BatchNormalization(momentum=0.9, name="bn_hidden")(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.Adam(0.01), "mse")

    monitor = keras_bn_ext.callbacks.StatsMonitor(
        every_n_steps=2, batch_stats=True, path=str(out / "bn_stats.csv"))
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[monitor])
    png = monitor.plot(str(out / "bn_stats.png"))

    moving = monitor.records("bn_input", "moving")
    batch = monitor.records("bn_input", "batch")
    print(f"\n{len(batch)} training steps; {len(monitor.history)} records")
    print(f"bn_input moving mean (channel average): step 0 {moving[0].mean:.3f} -> "
          f"step {moving[-1].step} {moving[-1].mean:.3f}; the data's: "
          f"{x.mean():.3f}")
    print(f"saved {out / 'bn_stats.csv'}")
    print(f"plot  {png}")


if __name__ == "__main__":
    main()

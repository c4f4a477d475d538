"""What any Keras layer on torch's native training kernel can reach, eager,
next to `torch.nn.BatchNorm2d`, for the conv NHWC train step.

    python benchmarks/torch_floor.py [--rounds 9] [--shape 32 32 32 64]

Four train steps (forward and `backward(dy)`) on the same bytes, alternating
round by round; ratios are medians of per-round ratios to `BatchNorm2d`:

- `native`: `torch.nn.BatchNorm2d` on a channels-last tensor;
- `keras minimal, no shift`: a bare Keras layer that calls the same native
  kernel on the input (variables, moving update, nothing else);
- `keras minimal, shifted`: the same layer, on `x - s` (one element of
  each channel), which torch's kernel needs to be accurate for |mean| >> std;
- `keras_bn_ext`: our layer.

The distance between the two minimal layers is the price of the shift; the
distance between the shifted one and ours is what our layer adds.
"""

import argparse
import os
import sys
import warnings

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_timing  # noqa: E402
import keras  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import keras_bn_ext  # noqa: E402

SHAPE = (32, 32, 32, 64)  # NHWC, as bench.py's conv NHWC case (the default)
MOMENTUM, EPSILON = 0.99, 1e-3


class MinimalBatchNorm(keras.layers.Layer):
    """Training-only batch norm on torch's native kernel, channels last."""

    def __init__(self, shift, **kwargs):
        super().__init__(**kwargs)
        self.shift = shift

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros")
        self.moving_mean = self.add_weight(
            shape=(channels,), initializer="zeros", trainable=False
        )
        self.moving_variance = self.add_weight(
            shape=(channels,), initializer="ones", trainable=False
        )

    def call(self, x, training=None):
        channels = x.shape[-1]
        shift = x[:1, :1, :1, :].detach().reshape(-1) if self.shift else 0.0
        centered = x - shift if self.shift else x
        # (N, C, rows, 1) with channels-last strides: torch's channels-last kernel.
        view = centered.reshape(x.shape[0], -1, 1, channels).permute(0, 3, 1, 2)
        mean = torch.zeros(channels)
        unbiased = torch.ones(channels)
        out = F.batch_norm(view, mean, unbiased, self.gamma.value,
                           self.beta.value, True, 1.0, EPSILON)
        self.moving_mean.assign(
            self.moving_mean.value * MOMENTUM + (mean + shift) * (1 - MOMENTUM)
        )
        self.moving_variance.assign(
            self.moving_variance.value * MOMENTUM + unbiased * (1 - MOMENTUM)
        )
        return out.permute(0, 2, 3, 1).reshape(x.shape)


def keras_step(layer, x, dy):
    x = x.clone().requires_grad_(True)
    layer(x, training=True)  # builds
    params = [v.value for v in layer.trainable_variables]

    def run():
        for t in (x, *params):
            t.grad = None
        layer(x, training=True).backward(dy)

    return run


def native_step(x, dy):
    module = torch.nn.BatchNorm2d(x.shape[-1], eps=EPSILON, momentum=1 - MOMENTUM)
    x = x.permute(0, 3, 1, 2).clone().requires_grad_(True)  # channels_last
    assert x.is_contiguous(memory_format=torch.channels_last)
    dy = dy.permute(0, 3, 1, 2)

    def run():
        for t in (x, *module.parameters()):
            t.grad = None
        module(x).backward(dy)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--shape", type=int, nargs=4, default=SHAPE,
                        metavar=("N", "H", "W", "C"))
    parser.add_argument("--target-s", type=float, default=0.2,
                        help="seconds per measurement (each round, each step)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    shape = tuple(args.shape)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    dy = torch.randn(shape, generator=generator)
    steps = {
        "native": native_step(x, dy),
        "keras minimal, no shift": keras_step(MinimalBatchNorm(shift=False), x, dy),
        "keras minimal, shifted": keras_step(MinimalBatchNorm(shift=True), x, dy),
        "keras_bn_ext": keras_step(
            keras_bn_ext.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON), x, dy
        ),
    }
    times = bench_timing.time_group(steps, args.rounds, args.target_s)
    print(f"conv NHWC {shape} train step, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("step | ms | x native")
    for name in steps:
        ms = bench_timing.median(times[name]) * 1e3
        ratio = bench_timing.median_ratio(times, name, "native")
        print(f"{name} | {ms:.3f} | {ratio:.2f}")


if __name__ == "__main__":
    main()

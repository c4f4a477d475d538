"""Fine-tuning with frozen BatchNormalization: mode="moving" vs trainable=False.

    KERAS_BACKEND=jax python examples/finetune_frozen_bn.py   (or tensorflow, torch)

A model is trained on one data set, then fine-tuned on a shifted one. Three
ways to treat its BatchNormalization layer while fine-tuning:

- default: the layer normalizes with each batch's statistics and updates its
  moving statistics (they drift to the new data), and gamma/beta train;
- `trainable=False` (Keras's way to freeze BN): the moving statistics are used
  and kept, but gamma and beta are frozen too;
- `mode="moving"` (keras_bn_ext): the moving statistics are used and kept,
  while gamma and beta still train.
"""

import keras
import numpy as np

import keras_bn_ext


def make_model(**bn_options):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, name="dense")(inputs)
    h = keras_bn_ext.BatchNormalization(name="bn", **bn_options)(h)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(h))


def data(shift, n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 4)) + shift).astype("float32")
    return x, (x @ np.array([[1.0], [-2.0], [0.5], [1.5]]) + shift).astype("float32")


def snapshot(model):
    bn = model.get_layer("bn")
    return {name: np.array(keras.ops.convert_to_numpy(getattr(bn, name)))
            for name in ("gamma", "beta", "moving_mean", "moving_variance")}


def changed(before, after, names):
    return any(not np.allclose(before[n], after[n]) for n in names)


def main():
    print(f"Backend: {keras.backend.backend()}")
    keras.utils.set_random_seed(0)

    # 1. Pre-train, so the moving statistics describe the first data set.
    pretrained = make_model(momentum=0.9)
    pretrained.compile(keras.optimizers.SGD(0.01), "mse")
    pretrained.fit(*data(shift=0.0), batch_size=32, epochs=3, verbose=0)
    weights = pretrained.get_weights()

    # 2. Fine-tune a copy three ways on shifted data.
    variants = {
        "default": dict(momentum=0.9),
        "trainable=False": dict(momentum=0.9),
        "mode='moving'": dict(momentum=0.9, mode="moving"),
    }
    print(f"\n{'fine-tuning with':<16}  {'gamma/beta':<10}  {'moving stats':<12}  "
          "normalizes with (in fit)")
    results = {}
    for name, options in variants.items():
        model = make_model(**options)
        model.set_weights(weights)
        bn = model.get_layer("bn")
        if name == "trainable=False":
            bn.trainable = False
        model.compile(keras.optimizers.SGD(0.01), "mse")
        before = snapshot(model)
        model.fit(*data(shift=3.0, seed=1), batch_size=32, epochs=2, verbose=0)
        after = snapshot(model)
        params = changed(before, after, ["gamma", "beta"])
        stats = changed(before, after, ["moving_mean", "moving_variance"])
        decision = keras_bn_ext.decide_branch(True, bn.trainable, bn.mode)
        results[name] = (params, stats)
        print(f"{name:<16}  {'trained' if params else 'frozen':<10}  "
              f"{'updated' if stats else 'frozen':<12}  {decision.branch} statistics")
        print(f"{'':<16}  why: {decision.reason}")

    # What the table shows, checked.
    assert results["default"] == (True, True)
    assert results["trainable=False"] == (False, False)
    assert results["mode='moving'"] == (True, False)
    print("\nWith mode='moving' the statistics stay those of the pre-training data "
          "while gamma and beta adapt; trainable=False freezes both.")


if __name__ == "__main__":
    main()

"""Recalibrating BatchNormalization statistics after training (precise BN).

    KERAS_BACKEND=torch python examples/recalibrate.py   (or tensorflow, jax)

A short training run with the default momentum (0.99) leaves the moving
statistics far from the data they should describe: after 12 steps they have
moved only 1 - 0.99**12 = 11% of the way from their initial values, so the
model predicts badly in inference mode although it fits well in training
mode. `keras_bn_ext.recalibrate` replaces them by the exact statistics of
each layer's inputs over a data set, and the gap closes.
"""

import keras
import numpy as np

import keras_bn_ext


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6))
    x = (z * 3.0 + 50.0).astype("float32")  # far from the initial mean 0
    y = (np.sin(z[:, :1]) + 0.5 * z[:, 1:2]).astype("float32")
    return x, y


def inference_loss(model, x, y):
    # training=False: the moving statistics, as in predict() and evaluate().
    prediction = keras.ops.convert_to_numpy(model(x, training=False))
    return float(np.mean((prediction - y) ** 2))


def main():
    print(f"Backend: {keras.backend.backend()}")
    keras.utils.set_random_seed(0)
    x, y = make_data(384, seed=0)

    inputs = keras.Input((6,))
    h = keras.layers.BatchNormalization(name="input_bn")(inputs)  # Keras's layer
    h = keras.layers.Dense(32, activation="relu")(h)
    h = keras.layers.Dropout(0.2)(h)
    h = keras_bn_ext.BatchNormalization(name="hidden_bn")(h)  # ours
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.Adam(0.01), "mse")
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)

    before = inference_loss(model, x, y)
    print(f"\nAfter 12 training steps: training loss {history.history['loss'][-1]:.3f}, "
          f"inference loss {before:.3f}")
    print(keras_bn_ext.report(model))

    # Batches of unequal size: each sample counts the same.
    batches = [x[i:i + n] for i, n in zip((0, 50, 150, 300), (50, 100, 150, 84))]
    print("\nrecalibrate(model, batches):")
    stats = keras_bn_ext.recalibrate(model, batches)
    after = inference_loss(model, x, y)
    print(f"\nAfter recalibration: inference loss {after:.3f} (was {before:.3f})")
    print(keras_bn_ext.report(model))

    # The input layer's statistics are now exactly those of the data.
    mean = keras.ops.convert_to_numpy(model.get_layer("input_bn").moving_mean)
    np.testing.assert_allclose(mean, x.astype("float64").mean(axis=0), rtol=1e-5)
    print(f"\ninput_bn: {stats['input_bn'].count} samples in {stats['input_bn'].batches} "
          "batches; moving mean == x.mean(axis=0)")
    assert after < before


if __name__ == "__main__":
    main()

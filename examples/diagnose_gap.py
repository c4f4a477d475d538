"""Why is my model good in fit() and bad in predict()? `diagnose` measures it.

    KERAS_BACKEND=jax python examples/diagnose_gap.py   (or tensorflow, torch;
    --quick for a smaller run)

A small CNN is trained on images from one camera, then fine-tuned for a few
steps on a new camera whose images are brighter and more contrasted. fit()
reports a good accuracy on the new images: in training mode each
BatchNormalization layer normalizes with the batch's own statistics. But
evaluate() and predict() use the moving statistics, which after 10 steps at
momentum 0.99 still describe the old camera (0.99**10 = 90% of their
weight): the accuracy collapses.

`keras_bn_ext.diagnose(model, new_images)` runs the data through both modes,
names the first layer where the statistics disagree (the first
BatchNormalization, fed the brighter images), says by how much, and what to
do; `keras_bn_ext.recalibrate(model, new_images)` closes the gap.
"""

import sys

import keras
import numpy as np

import keras_bn_ext

SIZE = 10


def images(n, seed, brightness=0.0, contrast=1.0):
    """Three classes of 10x10 patterns: horizontal stripes, vertical
    stripes, a centred square; with noise. A camera changes brightness and
    contrast."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    grid = np.arange(SIZE)
    stripes = np.where(grid % 4 < 2, 1.0, -1.0)
    square = np.where((abs(grid - 4.5) < 3)[:, None] & (abs(grid - 4.5) < 3)[None, :],
                      1.0, -1.0)
    patterns = np.stack([np.tile(stripes[:, None], (1, SIZE)),
                         np.tile(stripes[None, :], (SIZE, 1)), square])
    shifts = rng.integers(0, 4, n)
    x = np.stack([np.roll(patterns[c], s, axis=c % 2) for c, s in zip(labels, shifts)])
    x = x + rng.normal(0.0, 0.8, x.shape)
    x = x * contrast + brightness
    return x[..., None].astype("float32"), labels.astype("int32")


def build():
    inputs = keras.Input((SIZE, SIZE, 1))
    h = keras.layers.Conv2D(8, 3, use_bias=False, name="conv1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)  # Keras's layer
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(16, 3, use_bias=False, name="conv2")(h)
    h = keras_bn_ext.BatchNormalization(name="bn2")(h)  # ours
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classes")(h), name="cnn")
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def main(quick):
    print(f"Backend: {keras.backend.backend()}")
    keras.utils.set_random_seed(0)
    n = 480 if quick else 1600
    old_x, old_y = images(n, seed=0, brightness=1.0, contrast=0.5)
    new_x, new_y = images(n, seed=1, brightness=6.0, contrast=3.0)

    model = build()
    model.fit(old_x, old_y, batch_size=32, epochs=2 if quick else 4, verbose=0)
    # A long pretraining would bring the moving statistics to the old
    # camera's; recalibrate gets there at once.
    keras_bn_ext.recalibrate(model, old_x, verbose=0)
    old_accuracy = model.evaluate(old_x, old_y, verbose=0)[1]
    print(f"Trained on the old camera: evaluate() accuracy {old_accuracy:.2f}")

    steps = 10
    history = model.fit(new_x[:steps * 32], new_y[:steps * 32], batch_size=32,
                        epochs=1, verbose=0)
    fit_accuracy = history.history["accuracy"][-1]
    before = model.evaluate(new_x, new_y, verbose=0)[1]
    print(f"\nFine-tuned {steps} steps on the new camera: fit() reports accuracy "
          f"{fit_accuracy:.2f}, evaluate() gives {before:.2f}. Why?\n")

    diagnosis = keras_bn_ext.diagnose(model, new_x, batch_size=32)
    print(diagnosis)
    first = diagnosis.findings[0]
    print(f"\nFirst finding: {first.layer} {first.kind}, mean shift "
          f"{first.numbers['mean_shift_max']:.2f} std")

    # The fix the diagnosis names: statistics of the data the model will see.
    keras_bn_ext.recalibrate(model, new_x, verbose=0)
    after = model.evaluate(new_x, new_y, verbose=0)[1]
    print(f"\nAfter keras_bn_ext.recalibrate(model, new_x): evaluate() accuracy "
          f"{after:.2f} (was {before:.2f})")
    fixed = keras_bn_ext.diagnose(model, new_x, batch_size=32)
    print(f"Diagnosis now: {len(fixed.findings)} findings, output relative difference "
          f"{fixed.output_gap.relative_difference:.3f} (was "
          f"{diagnosis.output_gap.relative_difference:.3f})")
    assert after > before


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])

"""The seed question, asked of keras_bn_ext: why does predict() not normalize?

    KERAS_BACKEND=jax python examples/seed_question.py   (or tensorflow, torch)

A user builds the smallest model, predicts on [[0, 1], [2, 3]] and expects
[[-1, -1], [1, 1]]. They get the input divided by sqrt(1 + epsilon). Here the
layer's own debug record and `layer.explain()` say why.
"""

import warnings

import keras
import numpy as np

import keras_bn_ext


def main():
    np.set_printoptions(precision=4, suppress=True)
    print(f"Backend: {keras.backend.backend()}")

    # The user's model, exactly, with our layer in place of Keras's.
    X_input = keras.Input((2,))
    X = keras_bn_ext.BatchNormalization(axis=1)(X_input)
    model1 = keras.Model(inputs=X_input, outputs=X)
    a = np.arange(4).reshape((2, 2))
    layer = model1.layers[-1]

    # capture(model1) retraces predict() so the compiled function reports.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with keras_bn_ext.debug.capture(model1) as records:
            out = model1.predict(a, batch_size=2, verbose=0)

    print("\nmodel1.predict(a, batch_size=2) returned:")
    print(out)
    print("expected by the user: [[-1, -1], [1, 1]] "
          "(batch mean [1, 2], variance [1, 1])")

    (record,) = records  # one batch, one record
    print("\nThe layer's record of that call:")
    print(f"  branch:   {record.branch} statistics (training={record.training})")
    print(f"  why:      {record.reason}")
    print(f"  mean:     {record.mean}")
    print(f"  variance: {record.variance}")
    print(f"  updated:  {record.updated}")
    print(f"  flags:    {', '.join(record.flags) or '-'}")
    for w in caught:
        if issubclass(w.category, keras_bn_ext.NeverUpdatedWarning):
            print(f"\nNeverUpdatedWarning: {w.message}")

    # The record's numbers reproduce the puzzling output exactly.
    rebuilt = (a - record.mean) / np.sqrt(record.variance + layer.epsilon)
    print(f"\n(a - mean) / sqrt(variance + {layer.epsilon:g}) from the record:")
    print(rebuilt.astype("float32"))
    print(f"max |predict - rebuilt| = {np.max(np.abs(out - rebuilt)):.1e}")

    # The user's second try: batch_size=4 and random inputs. Same rule, so
    # again x / sqrt(1 + epsilon), whatever the batch.
    b = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 2)).astype("float32")
    with keras_bn_ext.debug.capture(model1) as records:
        out_b = model1.predict(b, batch_size=4, verbose=0)
    print(f"\nRandom inputs, batch_size=4: {records[0].branch} statistics "
          f"again, flags {records[0].flags}; max |predict - x/sqrt(1+eps)| = "
          f"{np.max(np.abs(out_b - b / np.sqrt(1 + layer.epsilon))):.1e}")

    print("\nlayer.explain():")
    print(layer.explain())

    # What the user wanted: this batch's statistics.
    with keras_bn_ext.debug.capture() as records:
        wanted = keras.ops.convert_to_numpy(layer(a, training=True))
    print("\nlayer(a, training=True) uses the batch's statistics:")
    print(wanted)
    print(f"  record: {records[0].branch} statistics, mean {records[0].mean}, "
          f"variance {records[0].variance}, count {records[0].count}")


if __name__ == "__main__":
    main()

"""Debug records inside compiled fit() and predict(), on any backend.

    KERAS_BACKEND=tensorflow python examples/debug_in_fit.py   (or jax, torch)

`keras_bn_ext.debug.capture(model)` collects one `StatsRecord` per real
execution of every keras_bn_ext layer, also inside the compiled train and
predict functions (tf.function, jax.jit, torch), and prints them as a table.
"""

import keras
import numpy as np

import keras_bn_ext


def _vec(values):
    return np.array2string(np.asarray(values), precision=2, suppress_small=True,
                           floatmode="fixed")


def table(records):
    # "used" is this batch's statistics on the batch branch and the moving
    # statistics on the moving branch: what the layer normalized with.
    print(f"{'step':>4}  {'branch':<6}  {'mean used':<20}  {'variance used':<20}  "
          f"{'moving mean after':<20}  flags")
    for step, r in enumerate(records, 1):
        print(f"{step:>4}  {r.branch:<6}  {_vec(r.mean):<20}  "
              f"{_vec(r.variance):<20}  {_vec(r.moving_mean):<20}  "
              f"{','.join(r.flags) or '-'}")


def main():
    print(f"Backend: {keras.backend.backend()}")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(32, 3)) * [1.0, 2.0, 0.5] + [5.0, -3.0, 1.0]).astype("float32")
    y = x.sum(axis=1, keepdims=True)

    inputs = keras.Input((3,))
    bn = keras_bn_ext.BatchNormalization(momentum=0.9, name="bn")
    model = keras.Model(inputs, keras.layers.Dense(1)(bn(inputs)))
    model.compile(optimizer="sgd", loss="mse")  # default settings: compiled

    # capture(model) retraces the compiled functions, so records flow even
    # if fit() or predict() ran before.
    with keras_bn_ext.debug.capture(model) as records:
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        n_fit = len(records)
        model.predict(x, batch_size=16, verbose=0)

    print(f"\nfit(): 2 epochs x 4 batches -> {n_fit} records")
    table(records[:n_fit])
    print(f"\npredict(): 2 batches -> {len(records) - n_fit} records "
          "(moving statistics, no update)")
    table(records[n_fit:])

    print(f"\nwhy (fit):     {records[0].reason}")
    print(f"why (predict): {records[-1].reason}")
    final = keras.ops.convert_to_numpy(bn.moving_mean)
    print(f"layer.moving_mean now: {np.array2string(final, precision=3)} "
          "(= the last fit record's 'moving mean after')")


if __name__ == "__main__":
    main()

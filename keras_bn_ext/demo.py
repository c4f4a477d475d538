"""Why does predict() not normalize? Answered by the layer itself.

A user builds the smallest model, calls `predict()` on [[0, 1], [2, 3]] and
expects [[-1, -1], [1, 1]]; Keras returns the input divided by
sqrt(1 + epsilon). This demo shows why, from the layer's own records:
`keras-bn-ext demo` and examples/seed_question.py both run it.
"""

import warnings

import numpy as np


def run_demo():
    """Prints the question, its explanation and two ways out."""
    import keras

    print(f"keras_bn_ext demo on the {keras.backend.backend()} backend "
          f"(Keras {keras.__version__})")
    with np.printoptions(precision=4, suppress=True):
        model1, a = _seed_question()
        _explain(model1, a)
        _after_fit(model1, a)
        _ways_out(a)


def _rule(title):
    print()
    print(f"--- {title} " + "-" * max(0, 66 - len(title)))


def _seed_question():
    """The user's model, exactly, with our layer in place of Keras's; what
    its record says about predict(). Returns the model and its input."""
    import keras

    import keras_bn_ext

    _rule("1. The question: why does predict() not normalize?")
    print("X_input = keras.Input((2,))")
    print("X = keras_bn_ext.BatchNormalization(axis=1)(X_input)")
    print("model1 = keras.Model(inputs=X_input, outputs=X)")
    print("a = np.arange(4).reshape((2, 2));  model1.predict(a, batch_size=2)")
    X_input = keras.Input((2,))
    X = keras_bn_ext.BatchNormalization(axis=1, name="bn")(X_input)
    model1 = keras.Model(inputs=X_input, outputs=X)
    a = np.arange(4).reshape((2, 2))
    layer = model1.get_layer("bn")

    # capture(model1) retraces predict() so the compiled function reports.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with keras_bn_ext.debug.capture(model1) as records:
            out = model1.predict(a, batch_size=2, verbose=0)
    print("\npredict() returned:")
    print(out)
    print("The user expected [[-1, -1], [1, 1]] (batch mean [1, 2], variance [1, 1]).")

    _rule("2. What the layer says about that call")
    (record,) = records  # one batch, one record
    print("The layer's record of that call:")
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
    return model1, a


def _explain(model1, a):
    """The same rule for any batch; explain(); what training=True does."""
    import keras

    import keras_bn_ext

    layer = model1.get_layer("bn")
    eps = layer.epsilon
    print("\nThe user also tried batch_size=4 with random inputs:")
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(8, 2)).astype("float32")
    with keras_bn_ext.debug.capture(model1) as records:
        out = model1.predict(x, batch_size=4, verbose=0)
    print(f"{len(records)} predict() batches, branches: "
          f"{[str(r.branch) for r in records]}, means used: "
          f"{[r.mean.tolist() for r in records]}")
    print(f"max |predict - x/sqrt(1+eps)| = "
          f"{np.max(np.abs(out - x / np.sqrt(1 + eps))):.2e}: the same rule, "
          "whatever the batch size or data.")

    _rule("3. layer.explain()")
    print(layer.explain())

    _rule("4. The same batch with training=True")
    with keras_bn_ext.debug.capture() as records:
        y = keras.ops.convert_to_numpy(layer(a, training=True))
    print("layer(a, training=True) uses the batch's statistics:")
    print(y)
    r = records[-1]
    print(f"  record: {r.branch} statistics, mean {r.mean}, variance {r.variance}, "
          f"count {r.count}; moving statistics updated: {r.updated}")
    print(f"(The +-0.9995 rather than +-1 is epsilon: 1 / sqrt(1 + {eps:g}).)")


def _after_fit(model1, a):
    import keras

    import keras_bn_ext

    _rule("5. After a few fit() steps")
    layer = model1.get_layer("bn")
    model1.compile(optimizer="sgd", loss="mse")
    steps = 5
    with keras_bn_ext.debug.capture(model1) as records:
        model1.fit(a, a, batch_size=2, epochs=steps, verbose=0, shuffle=False)
    for step, r in enumerate(records, 1):
        print(f"  fit step {step}: {r.branch} statistics mean={r.mean} "
              f"var={r.variance} -> moving_mean={r.moving_mean}")
    print(f"With momentum={layer.momentum}, each step moves the moving mean "
          f"only {1 - layer.momentum:.0%} of the way: after {steps} steps")
    print(f"moving_mean = {keras.ops.convert_to_numpy(layer.moving_mean)}, "
          "so predict() now gives:")
    print(model1.predict(a, batch_size=2, verbose=0))


def _ways_out(a):
    import keras

    import keras_bn_ext

    _rule("6. Two ways to get the normalized batch in predict()")
    fixed = keras_bn_ext.BatchNormalization(axis=1, debias=True)
    fixed(a, training=True)  # one training step
    print("debias=True, after ONE training step, predict-mode output:")
    print(keras.ops.convert_to_numpy(fixed(a, training=False)))
    batch_mode = keras_bn_ext.BatchNormalization(axis=1, mode="batch")
    print("mode='batch' (always the batch's statistics), no training at all:")
    print(keras.ops.convert_to_numpy(batch_mode(a)))
    print("\nIn short: predict() uses the moving statistics; they start at 0 and 1 "
          "and only training changes them.")

"""Makes the tf-keras (Keras 2) fixtures of tests/test_tf_keras.py: run as
`python tests/tf_keras_fixtures.py OUT_DIR` (it imports `tf_keras`, so it
runs in a process of its own, whatever Keras 3 backend the tests use).

For each case in `CASES`, a model `Input -> BatchNormalization(**kwargs)`
with random gamma, beta and moving statistics, and in OUT_DIR:

- `<case>.h5`: the model before training (tf-keras's legacy format);
- `<case>.npz`: the data, the layer's config (JSON, `layer_config`) and
  weights (`initial_<i>`, in `get_weights()` order), and what tf-keras
  computes with the model it loads from the `.h5` file:
  `predict` (inference outputs); one call with `training=True` (`train_y`,
  the moving statistics after it as `call_<weight>`, and the gradients of
  `sum(y * dy)`: `grad_x`, `grad_gamma`, `grad_beta`); then from the same
  state `fit` with SGD(0.1) on mse, `FIT` epochs of `BATCH` samples without
  shuffling (`fit_<weight>` after it, and `fit_predict`).
"""

import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BATCH = 6
FIT = 2
CLIPPING = {"rmax": 1.5, "rmin": 0.7, "dmax": 0.4}

# name: (layer kwargs, sample shape, samples)
CASES = {
    "plain": ({"momentum": 0.9}, (3,), 12),
    "fused_image": ({"momentum": 0.9}, (4, 4, 3), 12),
    "not_fused": ({"momentum": 0.9, "fused": False}, (4, 4, 3), 12),
    "virtual_image": ({"momentum": 0.9, "virtual_batch_size": 3}, (4, 4, 3), 12),
    "virtual_channels_first": ({"axis": 1, "momentum": 0.8, "virtual_batch_size": 2},
                               (3, 5), 12),
    "virtual_two_axes": ({"axis": [1, 3], "virtual_batch_size": 2, "momentum": 0.9},
                         (2, 3, 4), 12),
    "two_axes": ({"axis": [1, 3], "momentum": 0.9}, (2, 3, 4), 12),
    "renorm": ({"renorm": True, "renorm_clipping": CLIPPING, "renorm_momentum": 0.8,
                "momentum": 0.9}, (5,), 12),
    "renorm_virtual": ({"renorm": True, "renorm_clipping": CLIPPING,
                        "renorm_momentum": 0.8, "momentum": 0.9,
                        "virtual_batch_size": 3}, (2, 5), 12),
}


def weight_name(variable):
    return variable.name.split("/")[-1].split(":")[0]


def make(name, out_dir):
    import tensorflow as tf
    import tf_keras

    kwargs, sample_shape, samples = CASES[name]
    rng = np.random.default_rng(len(name))
    x = (rng.standard_normal((samples,) + sample_shape) * 2 + 1).astype("float32")
    target = rng.standard_normal(x.shape).astype("float32")
    dy = rng.standard_normal(x.shape).astype("float32")

    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input(sample_shape)
    layer = tf_keras.layers.BatchNormalization(**kwargs)
    model = tf_keras.Model(inputs, layer(inputs))
    initial = []
    for w in model.weights:  # a trained-looking state, every weight nontrivial
        value = rng.uniform(0.5, 1.5, w.shape).astype("float32")
        if weight_name(w) in ("beta", "moving_mean", "renorm_mean"):
            value -= 1.0
        initial.append(value)
    model.set_weights(initial)
    path = os.path.join(out_dir, f"{name}.h5")
    model.save(path)
    # tf-keras's numbers for this file are those of the model it loads from
    # it (`fused` is not saved: a loaded layer chooses again). It cannot load
    # its own files with virtual batches (the shifted axis): there the
    # model itself (never fused) gives them.
    if "virtual_batch_size" not in kwargs:
        model = tf_keras.models.load_model(path)
        layer = model.layers[-1]
    result = {"x": x, "target": target, "dy": dy,
              "layer_config": json.dumps(
                  json.loads(model.to_json())["config"]["layers"][-1]["config"]),
              **{f"initial_{i}": value for i, value in enumerate(initial)},
              "predict": model.predict(x, batch_size=BATCH, verbose=0)}

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(y * dy)
    grads = tape.gradient(loss, [xt, layer.gamma, layer.beta])
    result.update(train_y=y.numpy(), grad_x=grads[0].numpy(),
                  grad_gamma=grads[1].numpy(), grad_beta=grads[2].numpy())
    result.update({f"call_{weight_name(w)}": w.numpy() for w in model.weights})

    model.set_weights(initial)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, target, batch_size=BATCH, epochs=FIT, shuffle=False, verbose=0)
    result.update({f"fit_{weight_name(w)}": w.numpy() for w in model.weights})
    result["fit_predict"] = model.predict(x, batch_size=BATCH, verbose=0)
    np.savez(os.path.join(out_dir, f"{name}.npz"), **result)


if __name__ == "__main__":
    for case in CASES:
        make(case, sys.argv[1])
    print(json.dumps(sorted(CASES)))

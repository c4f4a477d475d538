"""A small layer-test harness in the spirit of Keras's `run_layer_test`.

`keras.src.testing` is private, so the package carries its own. Plain
functions with bare asserts, usable from any pytest test:

    from harness import run_layer_test
    run_layer_test(MyLayer, {"units": 3}, input_shape=(2, 4),
                   expected_output_shape=(2, 3))

Each check is also a function of its own (`check_config_round_trip`, ...),
so a test can run just the part it cares about.
"""

import json

import keras
import numpy as np
from keras import ops

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _config_json(config):
    # JSON with sorted keys: tuples and lists compare equal, as on disk.
    return json.dumps(config, sort_keys=True, default=repr)


def check_config_round_trip(layer_cls, init_kwargs, custom_objects=None):
    """`get_config` -> `from_config` -> `get_config` gives the same config,
    both directly and through `keras.saving.serialize_keras_object`.
    Returns the revived layer."""
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    # The config must survive JSON: that is how `.keras` files store it.
    config_json = _config_json(config)
    json.loads(json.dumps(config))

    revived = layer_cls.from_config(config)
    assert type(revived) is layer_cls
    assert _config_json(revived.get_config()) == config_json

    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    with keras.saving.custom_object_scope(custom_objects or {}):
        revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is layer_cls, (
        f"deserialized as {type(revived)}: is the class registered for "
        "serialization?"
    )
    assert _config_json(revived.get_config()) == config_json
    return revived


def check_weight_counts(layer, expected_num_trainable_weights=None,
                        expected_num_non_trainable_weights=None):
    assert layer.built
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights, (
            [w.path for w in layer.trainable_weights]
        )
    if expected_num_non_trainable_weights is not None:
        assert (
            len(layer.non_trainable_weights) == expected_num_non_trainable_weights
        ), [w.path for w in layer.non_trainable_weights]
    if keras.backend.backend() == "torch":
        # Torch tracks variables as module parameters: they must all be seen,
        # or the optimizer and `state_dict` miss some.
        assert len(layer.torch_params) == len(layer.weights)


def _shapes_match(expected, actual):
    expected, actual = tuple(expected), tuple(actual)
    return len(expected) == len(actual) and all(
        e is None or a is None or e == a for e, a in zip(expected, actual)
    )


def make_input_data(input_shape, input_dtype="float32", seed=0):
    """Well-conditioned random data (mean 5, std 10) of the given shape."""
    rng = np.random.default_rng(seed)
    data = rng.normal(5.0, 10.0, size=input_shape)
    if np.issubdtype(np.dtype(input_dtype), np.integer):
        data = np.round(data)
    return data.astype(input_dtype)


def check_symbolic_call(layer_cls, init_kwargs, input_shape, call_kwargs,
                        expected_output_shape, input_dtype="float32",
                        expected_num_trainable_weights=None,
                        expected_num_non_trainable_weights=None):
    """Calling on `keras.Input`s builds the layer and infers the output shape,
    with a defined and with an unknown batch size."""
    for batch_size in (input_shape[0], None):
        layer = layer_cls(**init_kwargs)
        inputs = keras.Input(
            shape=tuple(input_shape[1:]), batch_size=batch_size, dtype=input_dtype
        )
        outputs = layer(inputs, **call_kwargs)
        check_weight_counts(layer, expected_num_trainable_weights,
                            expected_num_non_trainable_weights)
        expected = (batch_size,) + tuple(expected_output_shape[1:])
        assert _shapes_match(expected, outputs.shape), (expected, outputs.shape)
        assert outputs.shape[0] == batch_size
        assert tuple(layer.compute_output_shape(tuple(inputs.shape))) == tuple(
            outputs.shape
        )


def check_eager_call(layer_cls, init_kwargs, input_data, call_kwargs,
                     expected_output_shape=None, expected_output=None,
                     expected_num_losses=None,
                     expected_num_trainable_weights=None,
                     expected_num_non_trainable_weights=None):
    """Calls the layer on real data; returns (layer, output)."""
    layer = layer_cls(**init_kwargs)
    output = layer(input_data, **call_kwargs)
    check_weight_counts(layer, expected_num_trainable_weights,
                        expected_num_non_trainable_weights)
    out = to_numpy(output)
    if expected_output_shape is not None:
        assert _shapes_match(expected_output_shape, out.shape), (
            expected_output_shape, out.shape
        )
    assert np.all(np.isfinite(out))
    assert keras.backend.standardize_dtype(output.dtype) == layer.compute_dtype
    if expected_output is not None:
        np.testing.assert_allclose(out, expected_output, rtol=1e-5, atol=1e-5)
    if expected_num_losses is not None:
        assert len(layer.losses) == expected_num_losses
    return layer, output


class LayerTestModel(keras.Model):
    # Keras's harness model: passes `training` through, as fit() sets it.
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def call(self, x, training=False):
        return self.layer(x, training=training)


def check_fit_step(layer, input_data, target_data):
    """One `model.fit` step with default compile settings (the default
    `jit_compile="auto"` of each backend: XLA on TF and JAX, eager torch).

    The loss must be finite and every trainable weight must move: a step
    that silently produces no gradient is a failure, not a pass.
    """
    model = LayerTestModel(layer)
    model.compile("sgd", "mse")
    before = [to_numpy(w).copy() for w in layer.trainable_weights]
    history = model.fit(
        to_numpy(input_data), to_numpy(target_data),
        batch_size=len(input_data), epochs=1, verbose=0, shuffle=False,
    )
    assert np.isfinite(history.history["loss"][0])
    for weight, old in zip(layer.trainable_weights, before):
        new = to_numpy(weight)
        assert np.all(np.isfinite(new)), weight.path
        assert not np.allclose(new, old), f"{weight.path} did not train"
    return model


def mixed_precision_supported():
    """Whether this backend runs float16/bfloat16 ops on this device.

    Keras never tests mixed precision on torch CPU; recent torch CPU builds
    do support the ops a normalization layer needs, so probe instead of
    skipping: the check is skipped only if the probe genuinely fails.
    """
    if keras.backend.backend() != "torch":
        return True
    import torch

    try:
        for dtype in (torch.float16, torch.bfloat16):
            x = torch.ones((2, 3), dtype=dtype)
            y = torch.rsqrt(x.float().var(0) + 1.0) * x.float()
            y.to(dtype).sum().item()
            (x * x + x).sum().item()
    except RuntimeError:
        return False
    return True


def check_mixed_precision(layer_cls, init_kwargs, input_data, call_kwargs,
                          policies=MIXED_POLICIES):
    """Under each mixed policy the output has the compute dtype (also in
    `compute_output_spec`), it is finite, and every float weight stays
    float32."""
    for policy in policies:
        layer = layer_cls(**{**init_kwargs, "dtype": policy})
        compute_dtype = keras.DTypePolicy(policy).compute_dtype
        assert layer.compute_dtype == compute_dtype
        output = layer(input_data, **call_kwargs)
        dtype = keras.backend.standardize_dtype(output.dtype)
        assert dtype == compute_dtype, (policy, dtype)
        assert np.all(np.isfinite(to_numpy(ops.cast(output, "float32"))))
        spec_input = keras.KerasTensor(
            tuple(input_data.shape),
            dtype=compute_dtype
            if keras.backend.is_float_dtype(input_data.dtype)
            else input_data.dtype,
        )
        spec = layer.compute_output_spec(spec_input, **call_kwargs)
        assert keras.backend.standardize_dtype(spec.dtype) == compute_dtype
        for weight in layer.weights:
            weight_dtype = keras.backend.standardize_dtype(weight.dtype)
            if keras.backend.is_float_dtype(weight_dtype):
                assert weight_dtype == "float32", (policy, weight.path, weight_dtype)


def run_layer_test(
    layer_cls,
    init_kwargs=None,
    input_shape=None,
    input_dtype="float32",
    input_data=None,
    call_kwargs=None,
    expected_output_shape=None,
    expected_output=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    expected_num_losses=None,
    supports_masking=None,
    custom_objects=None,
    run_training_check=True,
    run_mixed_precision_check=True,
):
    """Runs every check on `layer_cls(**init_kwargs)`.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_shape: full input shape, batch included (or give `input_data`).
        input_dtype: dtype of the generated input.
        input_data: NumPy input to use instead of random data.
        call_kwargs: extra call arguments, e.g. `{"training": True}`.
        expected_output_shape: checked in symbolic and eager calls.
        expected_output: NumPy array the eager call must give (1e-5).
        expected_num_trainable_weights / expected_num_non_trainable_weights:
            checked after `build`, a symbolic call and an eager call.
        expected_num_losses: `len(layer.losses)` after an eager call.
        supports_masking: the expected `layer.supports_masking`.
        custom_objects: for deserialization of unregistered classes.
        run_training_check: run one `fit` step.
        run_mixed_precision_check: run the `mixed_float16`/`mixed_bfloat16`
            checks (skipped only where `mixed_precision_supported()` is False).

    Returns:
        The layer of the eager call (after the fit step, if one ran).
    """
    init_kwargs = dict(init_kwargs or {})
    call_kwargs = dict(call_kwargs or {})
    if (input_shape is None) == (input_data is None):
        raise ValueError("Pass exactly one of input_shape and input_data.")
    if input_data is None:
        input_data = make_input_data(input_shape, input_dtype)
    input_data = np.asarray(input_data)
    input_shape = tuple(input_data.shape)

    # Serialization.
    check_config_round_trip(layer_cls, init_kwargs, custom_objects)

    # Masking.
    if supports_masking is not None:
        assert layer_cls(**init_kwargs).supports_masking is supports_masking

    # Build.
    layer = layer_cls(**init_kwargs)
    layer.build(input_shape)
    check_weight_counts(layer, expected_num_trainable_weights,
                        expected_num_non_trainable_weights)
    # Building must not change the config (Keras warns against `build`
    # rewriting constructor attributes). The auto-generated name differs.
    unbuilt = layer_cls(**{**init_kwargs, "name": layer.name})
    assert _config_json(layer.get_config()) == _config_json(unbuilt.get_config())

    # Symbolic call.
    if expected_output_shape is not None:
        check_symbolic_call(
            layer_cls, init_kwargs, input_shape, call_kwargs,
            expected_output_shape, input_dtype=str(input_data.dtype),
            expected_num_trainable_weights=expected_num_trainable_weights,
            expected_num_non_trainable_weights=expected_num_non_trainable_weights,
        )

    # Eager call.
    layer, output = check_eager_call(
        layer_cls, init_kwargs, input_data, call_kwargs,
        expected_output_shape=expected_output_shape,
        expected_output=expected_output,
        expected_num_losses=expected_num_losses,
        expected_num_trainable_weights=expected_num_trainable_weights,
        expected_num_non_trainable_weights=expected_num_non_trainable_weights,
    )

    # One compiled training step, towards targets that differ from the output.
    if run_training_check:
        rng = np.random.default_rng(1)
        target = rng.normal(size=to_numpy(output).shape).astype("float32")
        check_fit_step(layer, input_data, target)

    # Mixed precision.
    if run_mixed_precision_check and mixed_precision_supported():
        check_mixed_precision(layer_cls, init_kwargs, input_data, call_kwargs)
    return layer

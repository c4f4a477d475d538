"""A layer-test harness in the spirit of Keras's `run_layer_test`.

`keras.src.testing` is private, so the package carries its own, with bare
asserts for pytest and a few checks Keras's lacks (every weight trains,
outputs are finite, both mixed policies, torch CPU included):

    from harness import run_layer_test
    run_layer_test(MyLayer, {"units": 3}, input_shape=(2, 4),
                   expected_output_shape=(2, 3))
"""

import json

import keras
import numpy as np
from helpers import config_json
from helpers import to_numpy


def check_config_round_trip(layer_cls, init_kwargs, custom_objects=None):
    """`get_config` -> `from_config` -> `get_config` gives the same config,
    directly and through `keras.saving.serialize_keras_object` and JSON (as
    `.keras` files store it)."""
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    expected = config_json(config)

    revived = layer_cls.from_config(config)
    assert type(revived) is layer_cls
    assert config_json(revived.get_config()) == expected

    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    with keras.saving.custom_object_scope(custom_objects or {}):
        revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is layer_cls, (
        f"deserialized as {type(revived)}: is the class registered for serialization?"
    )
    assert config_json(revived.get_config()) == expected


class LayerTestModel(keras.Model):
    # Keras's harness model: passes `training` through, as fit() sets it.
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def call(self, x, training=False):
        return self.layer(x, training=training)


def check_fit_step(layer, input_data, target_data):
    """One `fit` step with default compile settings (`jit_compile="auto"`:
    XLA on TF and JAX, eager torch): the loss is finite and every trainable
    weight moves (a step that silently trains nothing is a failure)."""
    model = LayerTestModel(layer)
    model.compile("sgd", "mse")
    before = [to_numpy(w).copy() for w in layer.trainable_weights]
    history = model.fit(input_data, target_data, batch_size=len(input_data), epochs=1,
                        verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    for weight, old in zip(layer.trainable_weights, before):
        new = to_numpy(weight)
        assert np.all(np.isfinite(new)), weight.path
        assert not np.allclose(new, old), f"{weight.path} did not train"


def mixed_precision_supported():
    """Whether this backend runs float16/bfloat16 ops here. Keras never tests
    mixed precision on torch CPU; recent torch CPU builds have the ops a
    normalization needs, so probe rather than skip."""
    if keras.backend.backend() != "torch":
        return True
    import torch

    try:
        for dtype in (torch.float16, torch.bfloat16):
            x = torch.ones((2, 3), dtype=dtype)
            (torch.rsqrt(x.float().var(0) + 1.0) * x.float()).to(dtype).sum().item()
            (x * x + x).sum().item()
    except RuntimeError:
        return False
    return True


def check_mixed_precision(layer_cls, init_kwargs, input_data, call_kwargs):
    """Under each mixed policy the output has the compute dtype (in
    `compute_output_spec` too) and is finite; float weights stay float32."""
    for policy in ("mixed_float16", "mixed_bfloat16"):
        layer = layer_cls(**{**init_kwargs, "dtype": policy})
        compute_dtype = keras.DTypePolicy(policy).compute_dtype
        assert layer.compute_dtype == compute_dtype
        output = layer(input_data, **call_kwargs)
        assert keras.backend.standardize_dtype(output.dtype) == compute_dtype, policy
        assert np.all(np.isfinite(to_numpy(keras.ops.cast(output, "float32"))))
        float_input = keras.backend.is_float_dtype(input_data.dtype)
        spec_input = keras.KerasTensor(
            input_data.shape, dtype=compute_dtype if float_input else input_data.dtype
        )
        spec = layer.compute_output_spec(spec_input, **call_kwargs)
        assert keras.backend.standardize_dtype(spec.dtype) == compute_dtype
        for weight in layer.weights:
            dtype = keras.backend.standardize_dtype(weight.dtype)
            if keras.backend.is_float_dtype(dtype):
                assert dtype == "float32", (policy, weight.path, dtype)


def _shapes_match(expected, actual):
    return len(expected) == len(actual) and all(
        e is None or a is None or e == a for e, a in zip(expected, actual)
    )


def run_layer_test(
    layer_cls,
    init_kwargs=None,
    input_shape=None,
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
    """Config round trip, build, symbolic call (known and unknown batch
    size), eager call, one `fit` step and the mixed policies.

    Give `input_shape` (random float32 data, mean 5 and std 10, is made) or
    `input_data`. The `expected_*` arguments are checked where given: the
    weight counts after build, symbolic and eager calls; the output shape in
    both calls; the output values (1e-5) and `len(layer.losses)` after the
    eager call. `custom_objects` are for deserializing unregistered classes.

    Returns:
        The layer of the eager call (after the fit step, if one ran).
    """
    init_kwargs = dict(init_kwargs or {})
    call_kwargs = dict(call_kwargs or {})
    if (input_shape is None) == (input_data is None):
        raise ValueError("Pass exactly one of input_shape and input_data.")
    if input_data is None:
        input_data = np.random.default_rng(0).normal(5.0, 10.0, input_shape)
        input_data = input_data.astype("float32")
    input_data = np.asarray(input_data)
    input_shape = input_data.shape

    def check_weights(layer):
        assert layer.built
        for expected, weights in (
            (expected_num_trainable_weights, layer.trainable_weights),
            (expected_num_non_trainable_weights, layer.non_trainable_weights),
        ):
            if expected is not None:
                assert len(weights) == expected, [w.path for w in weights]
        if keras.backend.backend() == "torch":
            # Torch tracks variables as module parameters: all must be seen,
            # or the optimizer and `state_dict` miss some.
            assert len(layer.torch_params) == len(layer.weights)

    check_config_round_trip(layer_cls, init_kwargs, custom_objects)
    if supports_masking is not None:
        assert layer_cls(**init_kwargs).supports_masking is supports_masking

    # Build. It must not change the config (Keras warns against `build`
    # rewriting constructor attributes); only the auto-generated name differs.
    layer = layer_cls(**init_kwargs)
    layer.build(input_shape)
    check_weights(layer)
    unbuilt = layer_cls(**{**init_kwargs, "name": layer.name})
    assert config_json(layer.get_config()) == config_json(unbuilt.get_config())

    # Symbolic call, with a defined and with an unknown batch size.
    for batch_size in (input_shape[0], None) if expected_output_shape else ():
        layer = layer_cls(**init_kwargs)
        inputs = keras.Input(input_shape[1:], batch_size=batch_size,
                             dtype=str(input_data.dtype))
        outputs = layer(inputs, **call_kwargs)
        check_weights(layer)
        expected = (batch_size,) + tuple(expected_output_shape[1:])
        assert _shapes_match(expected, outputs.shape), (expected, outputs.shape)
        assert outputs.shape[0] == batch_size
        output_shape = layer.compute_output_shape(tuple(inputs.shape))
        assert tuple(output_shape) == tuple(outputs.shape)

    # Eager call.
    layer = layer_cls(**init_kwargs)
    output = layer(input_data, **call_kwargs)
    check_weights(layer)
    out = to_numpy(output)
    if expected_output_shape is not None:
        assert _shapes_match(expected_output_shape, out.shape), out.shape
    assert np.all(np.isfinite(out))
    assert keras.backend.standardize_dtype(output.dtype) == layer.compute_dtype
    if expected_output is not None:
        np.testing.assert_allclose(out, expected_output, rtol=1e-5, atol=1e-5)
    if expected_num_losses is not None:
        assert len(layer.losses) == expected_num_losses

    if run_training_check:  # towards targets that differ from the output
        target = np.random.default_rng(1).normal(size=out.shape).astype("float32")
        check_fit_step(layer, input_data, target)
    if run_mixed_precision_check and mixed_precision_supported():
        check_mixed_precision(layer_cls, init_kwargs, input_data, call_kwargs)
    return layer

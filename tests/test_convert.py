"""convert_model: Keras BatchNormalization <-> keras_bn_ext, weights kept."""

import keras
import numpy as np
import pytest
from helpers import BACKEND
from helpers import to_numpy
from helpers import weight_values

import keras_bn_ext
from keras_bn_ext.tools.report import batch_norm_layers


def _randomize_statistics(model, seed=0):
    # Fresh statistics (0 and 1) would hide a weight that was not copied.
    rng = np.random.default_rng(seed)
    for _, layer in batch_norm_layers(model):
        for variable in layer.weights:
            if "num_batches_tracked" in variable.name:
                continue
            value = rng.uniform(0.5, 1.5, variable.shape)
            variable.assign(value.astype(variable.dtype))


def _kinds(model):
    return [type(layer) for _, layer in batch_norm_layers(model)]


def _nested_model():
    inner_seq = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(6),
         keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-2, name="seq_bn")],
        name="inner_seq",
    )
    x_in = keras.Input((6,))
    inner_fn = keras.Model(
        x_in, keras.layers.BatchNormalization(center=False, name="fn_bn")(x_in),
        name="inner_fn",
    )
    x = keras.Input((4,))
    h = keras.layers.Dense(6)(x)
    h = keras.layers.BatchNormalization(name="top_bn")(h)
    h = keras.layers.Dropout(0.3)(h)
    h = inner_fn(inner_seq(h))
    out = keras.layers.Dense(2)(h)
    model = keras.Model(x, out, name="outer")
    _randomize_statistics(model)
    return model


def test_sequential_to_ours_keeps_config_weights_and_outputs():
    model = keras.Sequential([
        keras.Input((5,)), keras.layers.Dense(3),
        keras.layers.BatchNormalization(momentum=0.8, epsilon=1e-4,
                                        beta_initializer="ones", name="bn"),
    ])
    _randomize_statistics(model)
    converted = keras_bn_ext.convert_model(model)

    new_bn, old_bn = converted.get_layer("bn"), model.get_layer("bn")
    assert isinstance(new_bn, keras_bn_ext.BatchNormalization)
    assert new_bn.get_config() == old_bn.get_config()
    for new, old in zip(weight_values(converted), weight_values(model)):
        np.testing.assert_array_equal(new, old)
    x = np.random.default_rng(1).normal(2.0, 3.0, (8, 5)).astype("float32")
    np.testing.assert_allclose(to_numpy(converted(x, training=False)),
                               to_numpy(model(x, training=False)), atol=1e-5)
    # Training outputs and statistics updates match too.
    np.testing.assert_allclose(to_numpy(converted(x, training=True)),
                               to_numpy(model(x, training=True)), atol=1e-5)
    np.testing.assert_allclose(to_numpy(new_bn.moving_variance),
                               to_numpy(old_bn.moving_variance), rtol=1e-5)


def test_nested_models_are_converted_and_the_original_is_untouched():
    model = _nested_model()
    before = weight_values(model)
    converted = keras_bn_ext.convert_model(model)

    assert _kinds(model) == [keras.layers.BatchNormalization] * 3
    assert _kinds(converted) == [keras_bn_ext.BatchNormalization] * 3
    assert [p for p, _ in batch_norm_layers(converted)] == [
        "top_bn", "inner_seq/seq_bn", "inner_fn/fn_bn"]
    # No layer or variable is shared with the original.
    old_ids = {id(v) for v in model.weights}
    assert not old_ids & {id(v) for v in converted.weights}
    for now, then in zip(weight_values(model), before):
        np.testing.assert_array_equal(now, then)
    x = np.random.default_rng(2).normal(size=(7, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(converted(x, training=False)),
                               to_numpy(model(x, training=False)), atol=1e-5)


def test_the_copy_owns_its_weights():
    # Training the original (on JAX, fit donates its buffers) must neither
    # change nor break the converted model.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization(name="bn")])
    converted = keras_bn_ext.convert_model(model)
    before = weight_values(converted)
    model.compile("sgd", "mse")
    x = np.random.default_rng(6).normal(size=(8, 3)).astype("float32")
    model.fit(x, x, epochs=1, batch_size=4, verbose=0)
    assert not np.array_equal(weight_values(model)[0], before[0])
    for now, then in zip(weight_values(converted), before):
        np.testing.assert_array_equal(now, then)
    converted.predict(x, verbose=0)


def test_round_trip_gives_back_keras_layers_with_the_same_configs():
    model = _nested_model()
    back = keras_bn_ext.convert_model(keras_bn_ext.convert_model(model), to="keras")

    assert _kinds(back) == [keras.layers.BatchNormalization] * 3
    for (_, old), (_, new) in zip(batch_norm_layers(model), batch_norm_layers(back)):
        assert new.get_config() == old.get_config()
    for new, old in zip(weight_values(back), weight_values(model)):
        np.testing.assert_array_equal(new, old)


def test_frozen_and_renorm_layers_keep_their_state():
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.BatchNormalization(renorm=True, renorm_momentum=0.9, name="rn"),
        keras.layers.BatchNormalization(name="frozen"),
    ])
    model.get_layer("frozen").trainable = False
    _randomize_statistics(model)
    converted = keras_bn_ext.convert_model(model)

    assert [w.name for w in converted.get_layer("rn").weights] == [
        w.name for w in model.get_layer("rn").weights]
    assert converted.get_layer("frozen").trainable is False
    x = np.random.default_rng(3).normal(size=(6, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(converted(x, training=True)),
                               to_numpy(model(x, training=True)), atol=1e-5)


def test_a_shared_layer_stays_shared():
    bn = keras.layers.BatchNormalization(name="shared")
    a, b = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([a, b], keras.layers.Add()([bn(a), bn(b)]))
    converted = keras_bn_ext.convert_model(model)
    assert len(_kinds(converted)) == 1
    assert len(converted.get_layer("shared")._inbound_nodes) == 2


def test_a_sequential_built_without_input_is_converted_with_weights():
    model = keras.Sequential([keras.layers.Dense(3),
                              keras.layers.BatchNormalization(name="bn")])
    model.build((None, 2))
    _randomize_statistics(model)
    converted = keras_bn_ext.convert_model(model)
    assert converted.built
    np.testing.assert_array_equal(to_numpy(converted.get_layer("bn").moving_mean),
                                  to_numpy(model.get_layer("bn").moving_mean))


@pytest.mark.parametrize(
    "option, value",
    [("mode", "moving"), ("momentum", None), ("unbiased_moving_variance", True),
     ("debias", True), ("virtual_batch_size", 2), ("track_updates", True)],
)
def test_to_keras_refuses_options_keras_cannot_express(option, value):
    model = keras.Sequential([keras.Input((3,)),
                              keras_bn_ext.BatchNormalization(**{option: value})])
    with pytest.raises(ValueError, match=f"{option}={value!r}"):
        keras_bn_ext.convert_model(model, to="keras")


def test_to_keras_drops_debug_and_skip_nonfinite_updates():
    model = keras.Sequential([keras.Input((3,)), keras_bn_ext.BatchNormalization(
        debug=True, skip_nonfinite_updates=False, name="bn")])
    back = keras_bn_ext.convert_model(model, to="keras")
    assert type(back.get_layer("bn")) is keras.layers.BatchNormalization


def test_bad_arguments_and_unreachable_layers_raise():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="to='torch'"):
        keras_bn_ext.convert_model(model, to="torch")

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(x)

    x = keras.Input((3,))
    custom = keras.Model(x, Block(name="block")(x))
    with pytest.raises(ValueError, match="'block'"):
        keras_bn_ext.convert_model(custom)


def _infer(model, x):
    if BACKEND == "jax":
        # JAX runs a deep model op by op slowly; predict() compiles it once.
        return model.predict(x, verbose=0)
    return to_numpy(model(x, training=False))


def _assert_application_converts(model, shape):
    _randomize_statistics(model)
    converted = keras_bn_ext.convert_model(model)
    kinds = _kinds(converted)
    assert len(kinds) == len(_kinds(model)) > 10
    assert set(kinds) == {keras_bn_ext.BatchNormalization}
    x = np.random.default_rng(4).uniform(size=(2,) + shape).astype("float32")
    expected = _infer(model, x)
    np.testing.assert_allclose(_infer(converted, x), expected, rtol=1e-4, atol=1e-6)
    back = keras_bn_ext.convert_model(converted, to="keras")
    np.testing.assert_allclose(_infer(back, x), expected, rtol=1e-4, atol=1e-6)


def test_mobilenet_v2_converts_with_identical_predictions():
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5)
    _assert_application_converts(model, (32, 32, 3))


@pytest.mark.skipif(BACKEND == "jax", reason="building ResNet50 eagerly on "
                    "JAX takes ~30 s on CPU; MobileNetV2 covers it there")
def test_resnet50_converts_with_identical_predictions():
    model = keras.applications.ResNet50(
        input_shape=(32, 32, 3), weights=None, classes=5)
    _assert_application_converts(model, (32, 32, 3))

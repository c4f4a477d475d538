"""Swap every Keras `BatchNormalization` in a model for ours, and back.

`convert_model` clones the model with `keras.models.clone_model`, replacing
each batch normalization layer by the other class built from the same config,
recursing into nested Sequential and functional models, then copies every
layer's weights. The original model is never modified.
"""

from typing import Literal

import keras

from keras_bn_ext.layers import BatchNormalization
from keras_bn_ext.layers import options

TARGETS = ("keras_bn_ext", "keras")


def convert_model(
    model: keras.Model, to: Literal["keras_bn_ext", "keras"] = "keras_bn_ext"
) -> keras.Model:
    """Returns a copy of `model` with its batch normalization layers swapped.

    Every `keras.layers.BatchNormalization` becomes a
    `keras_bn_ext.BatchNormalization` (`to="keras_bn_ext"`), or the other
    way round (`to="keras"`), with the same config (name, axis, momentum,
    epsilon, initializers, trainable, dtype policy, ...) and the same weights;
    every other layer is cloned with its weights, so predictions are the same.
    Works for Sequential and functional models, nested ones included (e.g.
    `keras.applications` models). The original model is left untouched; the
    new model is not compiled.

    Subclasses of Keras's layer are kept as they are (they may compute
    something else). Converting to Keras a layer with an extension option
    Keras cannot express (`mode`, `momentum=None`,
    `unbiased_moving_variance`, `debias`, `virtual_batch_size`,
    `track_updates`: the options whose row in
    `keras_bn_ext.layers.options` gives a `keras` reason) raises a
    `ValueError` naming it; `debug` and `skip_nonfinite_updates` are dropped.

    Args:
        model: a built Sequential or functional `keras.Model`.
        to: `"keras_bn_ext"` or `"keras"`.

    Returns:
        A new `keras.Model`.

    Examples:
        >>> import keras, keras_bn_ext
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
        ...                           keras.layers.BatchNormalization()])
        >>> ours = keras_bn_ext.convert_model(model)
        >>> type(ours.layers[1]).__module__.split(".")[0]
        'keras_bn_ext'
        >>> back = keras_bn_ext.convert_model(ours, to="keras")
        >>> type(back.layers[1]) is keras.layers.BatchNormalization
        True
    """
    if to not in TARGETS:
        raise ValueError(f"`to` must be one of {TARGETS}. Received: to={to!r}")
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a keras.Model. Received: model={model!r}"
        )
    return _clone(model, to)


def _clone(model, to):
    if not isinstance(model, (keras.Sequential, _functional_class())):
        raise ValueError(
            "convert_model works on Sequential and functional models (nested "
            f"ones too); {model.name!r} is a subclassed "
            f"{type(model).__name__}, which Keras cannot clone layer by "
            "layer. Build it as a functional model, or create its "
            "BatchNormalization layers with keras_bn_ext directly."
        )
    pairs = []

    def clone_layer(layer):
        if isinstance(layer, keras.Model):
            new = _clone(layer, to)  # copies its own weights
        else:
            new = _convert_layer(layer, to)
            pairs.append((layer, new))
        return new

    new_model = keras.models.clone_model(model, clone_function=clone_layer)
    if model.built and not new_model.built:
        # A Sequential built by calling it (no Input) clones unbuilt.
        new_model.build_from_config(model.get_build_config())
    for old, new in pairs:
        _copy_weights(old, new)
    return new_model


def _functional_class():
    # The functional model class is not public in Keras 3.
    from keras.src.models.functional import Functional

    return Functional


def _convert_layer(layer, to):
    if to == "keras_bn_ext" and type(layer) is keras.layers.BatchNormalization:
        return BatchNormalization.from_config(layer.get_config())
    if to == "keras" and isinstance(layer, BatchNormalization):
        return keras.layers.BatchNormalization.from_config(_keras_config(layer))
    _check_no_hidden_batch_norm(layer)
    return layer.__class__.from_config(layer.get_config())


def _keras_config(layer):
    # Options Keras's layer would silently compute differently raise; the
    # others (they only log, or only matter on a non-finite batch) are dropped.
    offending = [
        (option, value)
        for option, value in options.used_options(layer)
        if option.keras
    ]
    if offending:
        reasons = "; ".join(option.keras for option, _ in offending)
        received = ", ".join(option.received(value) for option, value in offending)
        raise ValueError(
            f"Cannot convert layer {layer.name!r} to "
            f"keras.layers.BatchNormalization: {reasons}. Received: {received}"
        )
    config = layer.get_config()
    for option in options.EXTENSIONS:
        config.pop(option.name, None)
    return config


def _check_no_hidden_batch_norm(layer):
    # A custom layer owning a BatchNormalization cannot be rebuilt with a
    # different sublayer from its config; better an error than a silent skip.
    inner = [
        sub.name
        for sub in layer._flatten_layers(include_self=False)
        if type(sub) is keras.layers.BatchNormalization
        or isinstance(sub, BatchNormalization)
    ]
    if inner:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) holds "
            f"BatchNormalization layers {inner} that convert_model cannot "
            "reach: only layers of Sequential and functional models are "
            "swapped. Create them with keras_bn_ext directly."
        )


def _copy_weights(old, new):
    if not old.built:
        return
    if not new.built:
        new.build_from_config(old.get_build_config())
    old_weights, new_weights = old.weights, new.weights
    if [w.shape for w in old_weights] != [w.shape for w in new_weights]:
        raise ValueError(
            f"Cannot copy the weights of layer {old.name!r}: its converted "
            f"copy has weights {[w.name for w in new_weights]}, the original "
            f"{[w.name for w in old_weights]}."
        )
    for source, target in zip(old_weights, new_weights):
        # A copy: on JAX, assign() would share the buffer, and the other
        # model's compiled fit/predict donates (deletes) its buffers.
        target.assign(keras.ops.copy(source.value))

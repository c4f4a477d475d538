"""What every export (`to_torch`, `to_flax`) checks first."""


def check_exportable_layer(layer, function):
    """`layer` must be a built `keras_bn_ext.BatchNormalization`."""
    from keras_bn_ext.layers import BatchNormalization

    if not isinstance(layer, BatchNormalization):
        kind = f"{type(layer).__module__}.{type(layer).__qualname__}"
        raise ValueError(
            f"{function} exports a keras_bn_ext.BatchNormalization; "
            "keras_bn_ext.convert_model(model) swaps Keras's layers for ours. "
            f"Received: layer of type {kind}"
        )
    if not layer.built:
        raise ValueError(
            f"{function} needs a built layer (its weights have their shapes "
            "then): call it on an input or use layer.build(shape). Received: "
            f"layer={layer.name!r}"
        )

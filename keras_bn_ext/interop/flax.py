"""Flax `nnx.BatchNorm` import and export.

Flax and Keras agree on the conventions: `momentum` is the weight of the
old value (default 0.99 in both), the moving variance is the biased one,
channels are last by default. They differ in names (`scale`/`bias`/`mean`/
`var` against `gamma`/`beta`/`moving_mean`/`moving_variance`), in the
default `epsilon` (1e-5 against 1e-3: the value is copied), and in how the
mode is chosen: `use_running_average` (set by `nnx.Module.train()`/`eval()`)
is Keras's `training` argument of each call.

Flax computes the batch variance as `E[x^2] - E[x]^2` by default
(`use_fast_variance=True`), which loses digits when the mean is large
against the standard deviation; the layer always computes it exactly, so
it agrees with both settings wherever the fast one is accurate, and
`to_flax` exports `use_fast_variance=False`.

`flax` is imported only inside the functions (`pip install
"keras-bn-ext[flax]"`). The values go through NumPy, so both work under
any Keras backend.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING
from typing import Any

import keras
import numpy as np

from keras_bn_ext.interop._layer_check import check_exportable_layer
from keras_bn_ext.layers import options

if TYPE_CHECKING:
    from keras_bn_ext.layers import BatchNormalization


def from_flax(
    bn: Any,
    input_shape: tuple[int | None, ...] | None = None,
    name: str | None = None,
) -> BatchNormalization:
    """Builds a `keras_bn_ext.BatchNormalization` from a Flax `nnx.BatchNorm`.

    The layer gets the module's `scale`, `bias`, `mean` and `var` (as
    `gamma`, `beta`, `moving_mean`, `moving_variance`), `axis`, `momentum`
    and `epsilon` as they are, `use_scale`/`use_bias` as `scale`/`center`,
    `axis_name` as `synchronized=True`, its dtypes (`param_dtype` float64:
    a float64 layer; `dtype` float16/bfloat16: mixed precision). Not
    copied: `use_running_average` (Keras's `training` argument chooses per
    call), and what only shaped the module's creation (initializers,
    metadata, `rngs`). The values are copied.

    Args:
        bn: a `flax.nnx.BatchNorm`.
        input_shape: the shape the layer is built for (the batch dimension
            may be None). By default `(None, num_features)`, which needs the
            module's `axis` to be -1 or 1; give it for images, e.g.
            `(None, None, None, 16)` for NHWC inputs with 16 channels.
        name: optional name of the layer.

    Returns:
        A built `keras_bn_ext.BatchNormalization`.

    Raises:
        ImportError: if Flax is not installed.
        ValueError: naming what the layer cannot express (e.g.
            `axis_index_groups`), or an `input_shape` that does not fit.

    Example:

    >>> from flax import nnx
    >>> import keras_bn_ext
    >>> bn = nnx.BatchNorm(8, momentum=0.9, rngs=nnx.Rngs(0))
    >>> layer = keras_bn_ext.interop.from_flax(bn)
    >>> layer.axis, layer.momentum, layer.epsilon
    (-1, 0.9, 1e-05)
    """
    _check_flax_arguments(bn, _import_nnx())
    axis = list(bn.axis) if isinstance(bn.axis, (tuple, list)) else int(bn.axis)
    input_shape = _check_input_shape(axis, int(bn.num_features), input_shape)

    from keras_bn_ext.layers import BatchNormalization

    layer = BatchNormalization(
        axis=axis,
        momentum=float(bn.momentum),
        epsilon=float(bn.epsilon),
        center=bool(bn.use_bias),
        scale=bool(bn.use_scale),
        synchronized=bn.axis_name is not None,
        name=name,
        dtype=_keras_dtype(bn),
    )
    layer.build(input_shape)
    _copy_from_module(layer, bn)
    return layer


def to_flax(layer: BatchNormalization, rngs: Any = None) -> Any:
    """Returns the Flax `nnx.BatchNorm` matching a built layer.

    The module gets the layer's weights and moving statistics (as `scale`,
    `bias`, `mean`, `var`, flattened for several channel axes), its `axis`,
    `momentum`, `epsilon`, `center`/`scale` (as `use_bias`/`use_scale`),
    dtypes, and `use_fast_variance=False` (the layer's exact variance). A
    `mode="moving"` layer (always frozen) gives `use_running_average=True`;
    Flax has no frozen BatchNorm, so `nnx.Module.train()` would unfreeze it.

    Args:
        layer: a built `keras_bn_ext.BatchNormalization`.
        rngs: the `nnx.Rngs` the module is created with (its values are
            then replaced by the layer's); `nnx.Rngs(0)` by default.

    Returns:
        A `flax.nnx.BatchNorm`, in training mode unless `mode="moving"`.

    Raises:
        ImportError: if Flax is not installed.
        ValueError: for an unbuilt layer, `mode="batch"`, or an option whose
            row in `keras_bn_ext.layers.options` gives a `flax` reason
            (`momentum=None`, `renorm`, `synchronized`, `debias`, ...).

    Example:

    >>> import numpy as np, keras_bn_ext
    >>> layer = keras_bn_ext.BatchNormalization(momentum=0.9)
    >>> _ = layer(np.ones((2, 4), "float32"), training=True)
    >>> bn = keras_bn_ext.interop.to_flax(layer)
    >>> bn.num_features, bn.momentum, bn.use_running_average
    (4, 0.9, False)
    """
    nnx = _import_nnx()
    _check_exportable(layer)
    shape = tuple(layer.moving_mean.shape)
    dtype, param_dtype = _flax_dtypes(layer)
    bn = nnx.BatchNorm(
        math.prod(shape),
        axis=tuple(layer.axis) if isinstance(layer.axis, list) else layer.axis,
        momentum=layer.momentum,
        epsilon=layer.epsilon,
        use_bias=layer.center,
        use_scale=layer.scale,
        use_fast_variance=False,
        use_running_average=layer.mode == "moving",
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs if rngs is not None else nnx.Rngs(0),
    )
    for ours, theirs in _PAIRS:
        variable = getattr(layer, ours)
        if variable is not None:
            value = np.asarray(keras.ops.convert_to_numpy(variable)).reshape(-1)
            module_variable = getattr(bn, theirs)
            module_variable[...] = value.astype(module_variable[...].dtype)
    return bn


# Private helpers ---------------------------------------------------------------


def _copy_from_module(layer, bn):
    for ours, theirs in _PAIRS:
        module_variable = getattr(bn, theirs)
        variable = getattr(layer, ours)
        if variable is not None and module_variable is not None:
            value = np.asarray(module_variable[...])
            variable.assign(value.reshape(variable.shape).astype(variable.dtype))

# (layer attribute, module attribute)
_PAIRS = (
    ("gamma", "scale"),
    ("beta", "bias"),
    ("moving_mean", "mean"),
    ("moving_variance", "var"),
)


def _import_nnx():
    try:
        from flax import nnx
    except ImportError as error:
        raise ImportError(
            "from_flax and to_flax need Flax: pip install 'keras-bn-ext[flax]' "
            "(or pip install flax)."
        ) from error
    return nnx


def _check_flax_arguments(bn, nnx):
    """Errors for anything but an nnx.BatchNorm, and for the module's
    arguments the layer has no counterpart for."""
    if not isinstance(bn, nnx.BatchNorm):
        raise ValueError(
            f"from_flax expects a flax.nnx.BatchNorm. Received: bn={type(bn).__name__}"
        )
    if bn.axis_index_groups is not None:
        raise ValueError(
            "The layer synchronizes its statistics over all devices or none; "
            "it has no groups of devices. Received: "
            f"axis_index_groups={bn.axis_index_groups!r}"
        )
    default_promote = nnx.BatchNorm.__init__.__kwdefaults__["promote_dtype"]
    if bn.promote_dtype is not default_promote:
        raise ValueError(
            "The layer computes its statistics in float32 (float64 for "
            "float64 inputs) and has no dtype promotion function. Received: "
            f"promote_dtype={bn.promote_dtype!r}"
        )


def _keras_dtype(bn):
    """The layer's dtype policy for the module's `dtype`/`param_dtype`."""
    param = np.dtype(bn.param_dtype).name
    given = None if bn.dtype is None else np.dtype(bn.dtype).name
    compute = given or param
    if compute == param and param in ("float32", "float64"):
        return param
    if param == "float32" and compute in ("float16", "bfloat16"):
        return f"mixed_{compute}"
    raise ValueError(
        "The layer keeps float32 or float64 weights, computing in the same "
        "dtype or in float16/bfloat16 over float32 weights. Received: "
        f"dtype={given}, param_dtype={param}"
    )


def _flax_dtypes(layer):
    """`(dtype, param_dtype)` for the module, from the layer's policy."""
    policy = layer.dtype_policy
    compute = None
    if policy.compute_dtype != policy.variable_dtype:
        compute = policy.compute_dtype
    return compute, policy.variable_dtype


def _check_input_shape(axis, num_features, input_shape):
    axes = axis if isinstance(axis, list) else [axis]
    if input_shape is None:
        if axes not in ([-1], [1]):
            raise ValueError(
                "Give the input_shape of a module whose feature axis is not "
                f"-1 or 1 (e.g. (None, None, None, C) for images). Received: "
                f"axis={axis}, input_shape=None"
            )
        return (None, num_features)
    input_shape = tuple(input_shape)
    ndim = len(input_shape)
    if any(not -ndim <= a < ndim for a in axes) or math.prod(
        input_shape[a] or 0 for a in axes
    ) != num_features:
        raise ValueError(
            f"The input_shape must have num_features={num_features} along the "
            f"module's axis={axis}. Received: input_shape={input_shape}"
        )
    return input_shape


def _check_exportable(layer):
    check_exportable_layer(layer, "to_flax")
    if isinstance(layer.axis, list) and len(layer.axis) > 1:
        # Flax 0.12's nnx.BatchNorm broadcasts its flat (C1*C2,) statistics
        # against the (C1, C2) batch statistics in training and fails.
        warnings.warn(
            "flax.nnx.BatchNorm with several feature axes runs in inference "
            "(eval()) only: in training it fails to broadcast its statistics "
            f"(Flax 0.12). Received: axis={layer.axis}",
            UserWarning,
            stacklevel=3,
        )
    if layer.mode == "batch":
        raise ValueError(
            "Flax's BatchNorm has no mode that always uses the batch "
            "statistics: eval() switches it to the running averages. "
            "Received: mode='batch'"
        )
    for option, value in options.used_options(layer):
        if option.flax:
            raise ValueError(f"{option.flax}. Received: {option.received(value)}")

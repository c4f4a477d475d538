"""PyTorch BatchNorm import and export, with the conventions converted.

PyTorch and Keras keep the same four tensors but disagree on two numbers:

- momentum: PyTorch's `m` is the weight of the *new* batch (default 0.1);
  Keras's is the weight of the *old* value (default 0.99). So a PyTorch
  module with momentum `m` is a Keras layer with momentum `1 - m`, and
  PyTorch's `momentum=None` (a cumulative average) is our `momentum=None`.
- variance: PyTorch normalizes with the biased batch variance but stores
  the unbiased one (`n / (n - 1)` times it) in `running_var`: our
  `unbiased_moving_variance=True`.

PyTorch is channels-first, so the layer gets `axis=1`. `torch` is imported
only inside the functions: the package imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

import keras
import numpy as np

from keras_bn_ext.interop._layer_check import check_exportable_layer
from keras_bn_ext.layers import options

if TYPE_CHECKING:
    from keras_bn_ext.layers import BatchNormalization

_TORCH_CLASSES = {
    # module class name -> input ranks it accepts (the first is the default)
    "BatchNorm1d": (2, 3),
    "BatchNorm2d": (4,),
    "BatchNorm3d": (5,),
}
_RANK_TO_CLASS = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}
_LAYOUTS = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}
_INT32_MAX = 2**31 - 1


def from_torch(
    module: Any,
    input_shape: tuple[int | None, ...] | None = None,
    name: str | None = None,
) -> BatchNormalization:
    """Builds a `keras_bn_ext.BatchNormalization` from a PyTorch BatchNorm.

    The layer gets the module's weights (`weight` -> `gamma`, `bias` ->
    `beta`), running statistics, `num_batches_tracked` (as the layer's
    update counter), `eps` and momentum (PyTorch's `m` becomes Keras's
    `1 - m`; `None` stays a cumulative average), with `axis=1`
    (channels first) and `unbiased_moving_variance=True`, so that training
    and inference give PyTorch's numbers. `affine=False` gives
    `center=scale=False`; `track_running_stats=False` gives `mode="batch"`.
    The values are copied: the layer and the module share no memory.

    Args:
        module: a `torch.nn.BatchNorm1d`, `BatchNorm2d` or `BatchNorm3d`.
        input_shape: the shape the layer is built for (batch dimension may
            be `None`); needed only for `BatchNorm1d` on `(N, C, L)`
            inputs (the default is `(N, C)`, `(N, C, H, W)` or
            `(N, C, D, H, W)`).
        name: optional name of the layer.

    Returns:
        A built `keras_bn_ext.BatchNormalization`.

    Examples:
        >>> import torch, keras_bn_ext
        >>> bn = torch.nn.BatchNorm2d(8, momentum=0.1)
        >>> layer = keras_bn_ext.interop.from_torch(bn)
        >>> layer.axis, layer.momentum, layer.unbiased_moving_variance
        (1, 0.9, True)
        >>> tuple(layer.moving_mean.shape)
        (8,)
    """
    import torch

    kind = _torch_kind(module, torch)
    input_shape = _check_input_shape(kind, int(module.num_features), input_shape)
    running = bool(module.track_running_stats) and module.running_mean is not None
    dtype = "float64" if _torch_float_dtype(module, torch) == torch.float64 else None
    from keras_bn_ext.layers import BatchNormalization

    layer = BatchNormalization(
        axis=1,
        momentum=_keras_momentum(module.momentum),
        epsilon=float(module.eps),
        center=bool(module.affine),
        scale=bool(module.affine),
        mode="auto" if running else "batch",
        unbiased_moving_variance=True,
        # PyTorch counts its updates; keep the count when it has one.
        track_updates=module.num_batches_tracked is not None,
        name=name,
        dtype=dtype,
    )
    layer.build(input_shape)
    _copy_from_module(layer, module, running)
    return layer


def to_torch(layer: BatchNormalization) -> Any:
    """Returns the PyTorch BatchNorm module matching a built layer.

    `BatchNorm1d`, `BatchNorm2d` or `BatchNorm3d` is chosen by the rank the
    layer was built for (2 or 3, 4, 5); the module gets the layer's
    `gamma`/`beta` (as `weight`/`bias`), moving statistics, update counter
    (as `num_batches_tracked`, 0 without one), epsilon and momentum
    (Keras's `m` becomes PyTorch's `1 - m`, `None` stays cumulative).
    `mode="batch"` gives `track_running_stats=False`. A `mode="moving"`
    layer (always frozen) is returned in `eval()` mode, as PyTorch has no
    frozen BatchNorm: keep it there. The module is returned in train mode
    otherwise, like any new PyTorch module, on the CPU; the values are copied.

    Inference matches the layer exactly. Further training in PyTorch stores
    the unbiased variance and does not debias: a layer trained with
    `unbiased_moving_variance=False` (Keras's convention) or `debias=True`
    continues with PyTorch's convention from its current state.

    Args:
        layer: a built `keras_bn_ext.BatchNormalization` whose channel axis
            is 1 (PyTorch's layout), with `center == scale`.

    Returns:
        A `torch.nn.BatchNorm1d`, `BatchNorm2d` or `BatchNorm3d`.

    Raises:
        ValueError: for what PyTorch's BatchNorm cannot express: a channel
            axis other than 1, `center != scale`, an unbuilt layer, or an
            option whose row in `keras_bn_ext.layers.options` gives a `torch`
            reason (`renorm=True`, `synchronized=True`, `virtual_batch_size`).

    Examples:
        >>> import numpy as np, keras_bn_ext
        >>> layer = keras_bn_ext.BatchNormalization(axis=1, momentum=0.9)
        >>> _ = layer(np.ones((2, 4, 5), "float32"), training=True)
        >>> module = keras_bn_ext.interop.to_torch(layer)
        >>> type(module).__name__, module.num_features, round(module.momentum, 6)
        ('BatchNorm1d', 4, 0.1)
    """
    import torch

    rank = _check_exportable(layer)
    is_float64 = _variable_numpy(layer.moving_mean).dtype == np.float64
    dtype = torch.float64 if is_float64 else torch.float32
    track = layer.mode != "batch"
    module_class = getattr(torch.nn, _RANK_TO_CLASS[rank])
    module = module_class(
        num_features=int(layer.moving_mean.shape[0]),
        eps=float(layer.epsilon),
        momentum=_torch_momentum(layer.momentum),
        affine=bool(layer.scale),
        track_running_stats=track,
        dtype=dtype,
    )
    with torch.no_grad():
        _copy_into_module(module, layer, torch, dtype, track)
    if layer.mode == "moving":
        module.eval()
    return module


# Private helpers ---------------------------------------------------------------


def _keras_momentum(torch_momentum):
    """PyTorch's weight of the new batch `m` as Keras's weight of the old
    value `1 - m`; `None` (a cumulative average) stays `None`."""
    if torch_momentum is None:
        return None
    if not 0.0 <= float(torch_momentum) <= 1.0:
        raise ValueError(
            "PyTorch's momentum (the weight of the new batch) must be in "
            f"[0, 1] or None to map to Keras's 1 - momentum. Received: "
            f"momentum={torch_momentum}"
        )
    # Rounding drops the float noise of `1 - m` (1 - 0.1 = 0.9, not
    # 0.8999999999999999), far below float32 resolution.
    return round(1.0 - float(torch_momentum), 12)


def _torch_momentum(keras_momentum):
    if keras_momentum is None:
        return None
    return round(1.0 - float(keras_momentum), 12)


def _copy_from_module(layer, module, running):
    if module.affine:
        layer.gamma.assign(_to_numpy(module.weight))
        layer.beta.assign(_to_numpy(module.bias))
    if running:
        layer.moving_mean.assign(_to_numpy(module.running_mean))
        layer.moving_variance.assign(_to_numpy(module.running_var))
    if layer.num_batches_tracked is not None and module.num_batches_tracked is not None:
        count = int(module.num_batches_tracked.item())
        if count > _INT32_MAX:
            raise ValueError(
                "`num_batches_tracked` does not fit the layer's int32 counter. "
                f"Received: num_batches_tracked={count}"
            )
        layer.num_batches_tracked.assign(count)


def _copy_into_module(module, layer, torch, dtype, track):
    if layer.scale:
        module.weight.copy_(_torch_tensor(torch, layer.gamma, dtype))
        module.bias.copy_(_torch_tensor(torch, layer.beta, dtype))
    if track:
        module.running_mean.copy_(_torch_tensor(torch, layer.moving_mean, dtype))
        module.running_var.copy_(_torch_tensor(torch, layer.moving_variance, dtype))
        count = 0
        if layer.num_batches_tracked is not None:
            count = int(_variable_numpy(layer.num_batches_tracked))
        module.num_batches_tracked.fill_(count)


def _torch_kind(module, torch):
    if isinstance(module, torch.nn.modules.lazy.LazyModuleMixin) and (
        module.has_uninitialized_params()
    ):
        raise ValueError(
            "The lazy module has not seen an input yet, so its number of "
            f"features is unknown. Received: module={type(module).__name__}"
        )
    for kind in _TORCH_CLASSES:
        if isinstance(module, getattr(torch.nn, kind)):
            return kind
    raise ValueError(
        "from_torch expects a torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d. "
        f"Received: module={type(module).__name__}"
    )


def _check_input_shape(kind, num_features, input_shape):
    ranks = _TORCH_CLASSES[kind]
    if input_shape is None:
        return (None, num_features) + (None,) * (ranks[0] - 2)
    input_shape = tuple(input_shape)
    if len(input_shape) not in ranks or input_shape[1] != num_features:
        expected = " or ".join(_LAYOUTS[r] for r in ranks)
        raise ValueError(
            f"A {kind} with {num_features} features takes inputs of shape "
            f"{expected} with C={num_features}. Received: input_shape={input_shape}"
        )
    return input_shape


def _torch_float_dtype(module, torch):
    for tensor in (module.weight, module.running_mean):
        if tensor is not None:
            return tensor.dtype
    return torch.get_default_dtype()


def _to_numpy(tensor):
    return tensor.detach().cpu().numpy().copy()


def _variable_numpy(variable):
    return np.array(keras.ops.convert_to_numpy(variable))


def _torch_tensor(torch, variable, dtype):
    return torch.from_numpy(_variable_numpy(variable)).to(dtype)


def _check_exportable(layer):
    """The rank the layer was built for; errors for what cannot map."""
    check_exportable_layer(layer, "to_torch")
    # The layer's input spec (set by build) holds its rank and channel axes.
    rank = layer.input_spec.ndim
    if sorted(layer.input_spec.axes) != [1]:
        raise ValueError(
            "PyTorch's BatchNorm normalizes channels-first inputs (channel axis "
            f"1). Received: axis={layer.axis} (for inputs of rank {rank})"
        )
    if rank not in _RANK_TO_CLASS:
        raise ValueError(
            "PyTorch has BatchNorm1d/2d/3d for inputs of rank 2 to 5. "
            f"Received: a layer built for rank {rank}"
        )
    if layer.center != layer.scale:
        raise ValueError(
            "PyTorch's `affine` adds both weight and bias or neither. "
            f"Received: center={layer.center}, scale={layer.scale}"
        )
    for option, value in options.used_options(layer):
        if option.torch:
            raise ValueError(f"{option.torch}. Received: {option.received(value)}")
    return rank

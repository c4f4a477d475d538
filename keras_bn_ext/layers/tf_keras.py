"""tf-keras (Keras 2) BatchNormalization configs and weights, read as this
layer's: what tf-keras writes differently, undone.

- A built tf-keras layer with `virtual_batch_size` writes its channel axis
  shifted by one (it inserts the virtual batch axis at index 1), and groups
  its virtual batches strided (`virtual_batch_grouping="strided"`).
- With virtual batches or several channel axes, its weights have the rank of
  the inputs (one more with virtual batches): `(1, 1, 1, 1, C)` for images
  with virtual batches, `(1, C1, 1, C3)` for `axis=[1, 3]`; this layer's are
  `(C,)` and `(C1, C3)`. A layer made from a tf-keras config creates its
  weights in tf-keras's shapes, so that Keras's loader of `.h5` files (which
  checks shapes) fills them; `set_weights` and `.keras` loading accept either
  shape.
- Its constructor takes `fused` (a kernel choice: accepted, a no-op here) and
  `adjustment` (a function, never in a config: only None is accepted). Its
  configs do not save `fused`: a loaded tf-keras layer uses its fused kernel
  wherever it can (`uses_fused_kernel`), and that kernel averages the
  unbiased batch variance into the moving variance, so a layer made from a
  tf-keras config does too there (`unbiased_moving_variance=True`).
- Its `dtype` is a string, or `{"class_name": "Policy", ...}` under mixed
  precision.

A config is tf-keras's when its `dtype` is written the tf-keras way and it
has no `virtual_batch_grouping` (this layer writes one whenever it has
virtual batches).
"""

import numpy as np


def pop_arguments(kwargs):
    """`kwargs` without tf-keras's `fused` and `adjustment` (checked)."""
    kwargs = dict(kwargs)
    kwargs.pop("fused", None)  # tf-keras's choice of kernel: nothing to do
    adjustment = kwargs.pop("adjustment", None)
    if adjustment is not None:
        raise ValueError(
            "tf-keras's `adjustment` (a function of the batch shape that "
            "rescales and shifts the normalized outputs in training) has no "
            "counterpart here: apply it in a layer of its own after this one. "
            f"Received: adjustment={adjustment!r}"
        )
    return kwargs


def is_tf_keras_config(config):
    """Whether `config` was written by tf-keras's BatchNormalization."""
    if "virtual_batch_grouping" in config:
        return False
    dtype = config.get("dtype")
    return isinstance(dtype, str) or (
        isinstance(dtype, dict) and dtype.get("class_name") == "Policy"
    )


def to_config(config):
    """This layer's config for tf-keras's `config` (a dict, not modified)."""
    if "axis" not in config:
        # tf-keras always writes it; Keras 3's loader of legacy files (.h5,
        # model_from_json) drops an axis list of several axes.
        raise ValueError(
            "This tf-keras BatchNormalization config has no `axis`: Keras's "
            "loader of legacy files drops a list of several axes before the "
            "layer sees it. Build the model with "
            "keras_bn_ext.BatchNormalization(axis=[...]) and copy the weights "
            "with set_weights() (tf-keras's weight shapes are accepted), or "
            "pass the layer's config with its axis to from_config(). "
            f"Received: config={config}"
        )
    config = dict(config)
    dtype = config["dtype"]
    if isinstance(dtype, dict):  # a tf-keras mixed precision policy
        config["dtype"] = dtype["config"]["name"]
    if config.get("virtual_batch_size") is not None:
        config["axis"] = _unshift(config.get("axis", -1))
        config["virtual_batch_grouping"] = "strided"
    return config


def _unshift(axis):
    # A built layer writes its axes non-negative and shifted by one, so at
    # least 2 (the batch axis cannot be one); an unbuilt layer's config keeps
    # the axis given, e.g. -1, which is taken as written.
    if isinstance(axis, (list, tuple)):
        return [a - 1 if a >= 2 else a for a in axis]
    return axis - 1 if axis >= 2 else axis


def uses_fused_kernel(layer, ndim, channel_axes):
    """Whether tf-keras would build `layer`'s config with its fused kernel
    (`fused` is never saved, so a loaded layer chooses again): one channel
    axis, first or last, of 4D or 5D inputs, no renorm or virtual batches,
    a float32/16 compute dtype. That kernel normalizes with the biased batch
    variance but averages the unbiased one into the moving variance."""
    return (
        ndim in (4, 5)
        and channel_axes in ([1], [ndim - 1])
        and not layer.renorm
        and layer.virtual_batch_size is None
        and layer.compute_dtype in ("float16", "bfloat16", "float32")
    )


def weight_shape(input_shape, channel_axes, virtual_batch_size):
    """The shape tf-keras gives the weights for `input_shape`."""
    if len(channel_axes) == 1 and virtual_batch_size is None:
        return (input_shape[channel_axes[0]],)
    shape = [input_shape[i] if i in channel_axes else 1
             for i in range(len(input_shape))]
    if virtual_batch_size is not None:
        shape.insert(1, 1)
    return tuple(shape)


def fit_shape(value, shape):
    """`value` (array-like) reshaped to `shape` when it holds the same
    dimensions, only with ones added or removed (tf-keras's layout and this
    layer's); else unchanged, for Keras to report the mismatch."""
    value = np.asarray(value)
    shape = tuple(shape)
    if value.shape != shape and _squeezed(value.shape) == _squeezed(shape):
        return value.reshape(shape)
    return value


def _squeezed(shape):
    return tuple(d for d in shape if d != 1)

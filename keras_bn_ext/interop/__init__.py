"""Interoperability: PyTorch and Flax BatchNorm weights, and swapping Keras's
layers."""

from keras_bn_ext.interop.flax import from_flax
from keras_bn_ext.interop.flax import to_flax
from keras_bn_ext.interop.swap import convert_model
from keras_bn_ext.interop.torch import from_torch
from keras_bn_ext.interop.torch import to_torch

__all__ = ["convert_model", "from_flax", "from_torch", "to_flax", "to_torch"]

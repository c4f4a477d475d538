"""Keras callbacks: `keras_bn_ext.callbacks.StatsMonitor`."""

from keras_bn_ext.tools.monitor import StatsMonitor

__all__ = ["StatsMonitor"]

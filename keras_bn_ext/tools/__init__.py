"""Model-level tools: precise-BN recalibration, reports, the stats monitor."""

from keras_bn_ext.tools.monitor import StatsMonitor
from keras_bn_ext.tools.recalibrate import recalibrate
from keras_bn_ext.tools.report import report

__all__ = ["StatsMonitor", "recalibrate", "report"]

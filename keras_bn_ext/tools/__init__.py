"""Model-level tools: precise-BN recalibration, reports, the stats monitor,
diagnosis of train/inference gaps."""

from keras_bn_ext.tools.diagnose import diagnose
from keras_bn_ext.tools.diagnose_result import Diagnosis
from keras_bn_ext.tools.monitor import StatsMonitor
from keras_bn_ext.tools.recalibrate import recalibrate
from keras_bn_ext.tools.report import report

__all__ = ["Diagnosis", "StatsMonitor", "diagnose", "recalibrate", "report"]

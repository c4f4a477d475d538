"""keras_bn_ext: a BatchNormalization for Keras 3 that explains itself."""

from keras_bn_ext import _startup
from keras_bn_ext._version import __version__ as __version__

# The command line chooses the Keras backend first, then loads these
# (see `_startup`); every other `import keras_bn_ext` loads them now, which
# also registers the layer for `keras.saving.load_model`.
if not _startup.defer_public_api():
    from keras_bn_ext import callbacks
    from keras_bn_ext import debug
    from keras_bn_ext import interop
    from keras_bn_ext.branching import Branch
    from keras_bn_ext.branching import decide_branch
    from keras_bn_ext.debug import NeverUpdatedWarning
    from keras_bn_ext.debug import StatsRecord
    from keras_bn_ext.interop import convert_model
    from keras_bn_ext.layers import BatchNormalization
    from keras_bn_ext.tools import Diagnosis
    from keras_bn_ext.tools import diagnose
    from keras_bn_ext.tools import recalibrate
    from keras_bn_ext.tools import report

__all__ = [
    "BatchNormalization",
    "Branch",
    "Diagnosis",
    "NeverUpdatedWarning",
    "StatsRecord",
    "callbacks",
    "convert_model",
    "debug",
    "decide_branch",
    "diagnose",
    "interop",
    "recalibrate",
    "report",
]

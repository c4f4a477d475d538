"""Debug depends on the layer's public surface, never the other way round:
`keras_bn_ext.debug` imports nothing of `keras_bn_ext.layers` (no import
cycle), and debug and `report` read no private attribute of our layer."""

import pathlib
import re
import subprocess
import sys

import keras

import keras_bn_ext

PACKAGE = pathlib.Path(keras_bn_ext.__file__).resolve().parent
DEBUG_MODULES = sorted(
    f"keras_bn_ext.debug.{path.stem}"
    for path in (PACKAGE / "debug").glob("*.py")
    if path.stem != "__init__"
)
READERS = sorted((PACKAGE / "debug").glob("*.py")) + [PACKAGE / "tools" / "report.py"]

# Keras has no public way to walk the sublayers of any layer (only
# `Model.layers`), so this Keras method is allowed.
KERAS_PRIVATE_ALLOWED = {"_flatten_layers"}

# Imports the debug modules without the package's __init__ (which imports
# everything), then lists the keras_bn_ext modules they pulled in.
_IMPORT_SCRIPT = """
import importlib, sys, types
package = types.ModuleType("keras_bn_ext")
package.__path__ = [{path!r}]
sys.modules["keras_bn_ext"] = package
for name in {modules!r}:
    importlib.import_module(name)
print(" ".join(sorted(m for m in sys.modules if m.startswith("keras_bn_ext"))))
"""


def test_debug_modules_import_without_the_layer():
    assert "keras_bn_ext.debug.records" in DEBUG_MODULES  # not vacuous
    script = _IMPORT_SCRIPT.format(path=str(PACKAGE), modules=DEBUG_MODULES)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = result.stdout.split()
    assert set(DEBUG_MODULES) <= set(loaded)
    assert not [m for m in loaded if m.startswith("keras_bn_ext.layers")], loaded
    assert not [m for m in loaded if m.startswith("keras_bn_ext.tools")], loaded


def _private_names_of_our_layer():
    layer = keras_bn_ext.BatchNormalization()
    layer.build((2, 3))
    keras_layer = keras.layers.Layer()
    ours = set(vars(layer)) | set(dir(type(layer)))
    theirs = set(vars(keras_layer)) | set(dir(keras.layers.Layer))
    return {name for name in ours - theirs if name.startswith("_")}


def test_debug_and_report_read_no_private_layer_attribute():
    private = _private_names_of_our_layer()
    assert {"_hooks", "_records", "_param_shape"} <= private  # not vacuous
    for path in READERS:
        text = path.read_text()
        # Any `layer._x` (Keras's layer or ours), but Keras's layer walk.
        layer_private = set(re.findall(r"\blayer\.(_\w+)", text))
        assert layer_private <= KERAS_PRIVATE_ALLOWED, (path.name, layer_private)
        # Our layer's private names, whatever the variable is called (the
        # modules' own objects, `self._x`, aside).
        accessed = re.findall(r"\b(\w+)\.(_\w+)", text)
        used = {name for owner, name in accessed if owner != "self"} & private
        assert not used, (path.name, used)

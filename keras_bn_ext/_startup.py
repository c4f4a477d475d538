"""How the package is being started, decided without importing Keras.

Keras fixes its backend when it is first imported. The command line
(`keras-bn-ext`, `python -m keras_bn_ext`) must read `--backend` before
that, and `--help`/`--version` must not import a backend at all; so in a
command-line process `keras_bn_ext/__init__.py` defers its imports, and the
CLI calls `load_public_api()` once it has chosen the backend.
"""

import contextlib
import importlib
import os
import re
import sys
import tempfile

_CLI_NAMES = ("keras-bn-ext", "keras-bn-ext.exe", "keras-bn-ext-script.py")
_deferred = False
_backend_chosen = False


def defer_public_api():
    """True (and remembered) when this process was started as the command
    line, which has not chosen the backend yet."""
    global _deferred
    if _backend_chosen or "keras" in sys.modules:
        return False
    started_as_script = os.path.basename(sys.argv[0] if sys.argv else "") in _CLI_NAMES
    orig = list(getattr(sys, "orig_argv", []))
    started_as_module = any(
        orig[i : i + 2] == ["-m", "keras_bn_ext"] for i in range(len(orig) - 1)
    )
    _deferred = started_as_script or started_as_module
    return _deferred


def load_public_api():
    """Imports what `import keras_bn_ext` normally imports (the layer, its
    registration for deserialization, the tools). Call after the backend
    is chosen; a no-op when nothing was deferred."""
    global _deferred, _backend_chosen
    _backend_chosen = True
    if _deferred:
        _deferred = False
        with _without_tensorflow_startup_lines():
            importlib.reload(sys.modules["keras_bn_ext"])


# TensorFlow 2.21 writes these from C++ while it is imported, whatever
# TF_CPP_MIN_LOG_LEVEL says: the absl notice and INFO/WARNING lines such
# as "oneDNN custom operations are on".
_TF_STARTUP_LINE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\)"
    rb"|[IW]\d{4} [\d:. ]+\d+ \w+\.cc:\d+\])"
)


@contextlib.contextmanager
def _without_tensorflow_startup_lines():
    """Holds back what C++ code writes to stderr (file descriptor 2) during
    the block, then writes it out less TensorFlow's start-up lines."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held:
                if not _TF_STARTUP_LINE.match(line):
                    os.write(2, line)

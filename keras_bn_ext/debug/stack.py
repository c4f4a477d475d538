"""Where a warning should point: the user's line, not the library's.

A warning raised inside a layer call runs under many frames of this package,
of Keras and of the backend (its trainer, `tf.function`, `jax.jit`, torch
modules). A fixed `stacklevel` would point somewhere inside them, and which
frame depends on the path taken (a direct call, `predict()`, a trace), so
the level is counted at warning time: the first frame outside those
libraries is the user's. (Python 3.12's `skip_file_prefixes` would do this,
but the package supports 3.10 and 3.11.)
"""

import contextlib
import os
import sys

# Libraries whose frames stand between the user's call and a warning.
_LIBRARIES = ("keras", "tensorflow", "tf_keras", "jax", "jaxlib", "torch", "optree")
# This package's folder (keras_bn_ext/), and contextlib for the `with` blocks
# of `debug.capture`.
_ALWAYS = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.abspath(contextlib.__file__),
)


def _library_prefixes() -> tuple[str, ...]:
    prefixes = list(_ALWAYS)
    for name in _LIBRARIES:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:  # only the libraries already imported can be on the stack
            prefixes.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(prefixes)


def _is_library_file(filename: str) -> bool:
    if os.path.basename(filename).startswith("__autograph_generated_file"):
        return True  # TensorFlow's AutoGraph rewrites of Keras's step functions
    path = os.path.abspath(filename)
    return path.startswith(_library_prefixes())


def user_stacklevel() -> int:
    """The `stacklevel` for a `warnings.warn` made by the caller of this
    function, so that the warning names the first frame outside this package,
    Keras and the backends: the user's call (or, when no such frame exists,
    e.g. in a backend's callback thread, the outermost frame)."""
    frame = sys._getframe(1)  # the function that will call warnings.warn
    level = 1
    while frame.f_back is not None and _is_library_file(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level

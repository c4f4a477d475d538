"""Where a warning should point: the user's line, not the library's.

A warning raised inside a layer call runs under many frames of this package,
of Keras and of the backend (its trainer, `tf.function`, `jax.jit`, torch
modules). A fixed `stacklevel` would point somewhere inside them, and which
frame depends on the path taken (a direct call, `predict()`, a trace), so
the user's frame is searched for at warning time: the first one outside
those libraries. (Python 3.12's `skip_file_prefixes` would do this, but the
package supports 3.10 and 3.11.) A host callback that a backend runs on its
own thread (TensorFlow's `tf.py_function`) has no user frame on its stack:
there the warning points at a location noted earlier, when the call was
traced on the user's thread.
"""

import contextlib
import os
import sys
import warnings

# Libraries whose frames stand between the user's call and a warning.
_LIBRARIES = ("keras", "tensorflow", "tf_keras", "jax", "jaxlib", "torch", "optree")
# This package's folder (keras_bn_ext/), and contextlib for the `with` blocks
# of `debug.capture`.
_ALWAYS = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.abspath(contextlib.__file__),
)

# (filename, line number) of a line of user code.
Location = tuple[str, int]


def _library_prefixes() -> tuple[str, ...]:
    prefixes = list(_ALWAYS)
    for name in _LIBRARIES:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:  # only the libraries already imported can be on the stack
            prefixes.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(prefixes)


def _is_library_file(filename: str, prefixes: tuple[str, ...]) -> bool:
    if os.path.basename(filename).startswith("__autograph_generated_file"):
        return True  # TensorFlow's AutoGraph rewrites of Keras's step functions
    return os.path.abspath(filename).startswith(prefixes)


def _user_frame(frame):
    """`(stacklevel relative to frame, user frame)`, or `(depth, None)`
    where every frame is a library's (depth: the outermost frame's level)."""
    prefixes = _library_prefixes()  # once per walk: ~25 frames deep
    level = 1
    while True:
        if not _is_library_file(frame.f_code.co_filename, prefixes):
            return level, frame
        if frame.f_back is None:
            return level, None
        frame = frame.f_back
        level += 1


def user_location() -> Location | None:
    """Where the user's code is on this thread's stack now, else None."""
    _, frame = _user_frame(sys._getframe(1))
    return None if frame is None else (frame.f_code.co_filename, frame.f_lineno)


def warn_at_user(
    message: str, category: type[Warning], fallback: Location | None = None
) -> None:
    """`warnings.warn` pointing at the first frame outside this package,
    Keras and the backends: the user's line. Without one on this thread's
    stack, at `fallback` (noted earlier with `user_location`), else at the
    outermost frame."""
    level, frame = _user_frame(sys._getframe(1))
    if frame is None and fallback is not None:
        warnings.warn_explicit(message, category, *fallback)
        return
    # +1: the level counts from our caller, `warnings.warn` from here.
    warnings.warn(message, category, stacklevel=level + 1)

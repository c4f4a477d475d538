"""Command line: `keras-bn-ext [--backend NAME] demo | inspect MODEL.keras |
diagnose MODEL.keras DATA.npy`.

The backend must be chosen before Keras is imported, so this module imports
nothing from Keras at the top, and `--help`/`--version` import no backend
at all (`keras_bn_ext/_startup.py` defers the package's own imports).
"""

import argparse
import importlib.util
import json
import os
import runpy
import signal
import sys

from keras_bn_ext import _startup
from keras_bn_ext._version import __version__

# Read from its file: importing keras_bn_ext.backend would import Keras.
BACKENDS = runpy.run_path(
    os.path.join(os.path.dirname(__file__), "backend", "supported.py")
)["BACKENDS"]

# The module each Keras backend imports.
_BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-bn-ext",
        description="keras_bn_ext: a BatchNormalization that explains itself.",
    )
    parser.add_argument(
        "--version", action="version", version=f"keras-bn-ext {__version__}"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else the one in "
        "~/.keras/keras.json if installed, else the first installed of "
        f"{', '.join(BACKENDS)}).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="Reproduce and explain the classic BatchNorm surprise (predict() on a "
        "fresh BatchNormalization returns x / sqrt(1 + epsilon))."
    )
    demo.add_argument("--backend", choices=BACKENDS,
                      default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    inspect = commands.add_parser(
        "inspect", help="Report every BatchNormalization layer of a saved "
        ".keras model file."
    )
    inspect.add_argument("path", help="a .keras model file")
    inspect.add_argument("--backend", choices=BACKENDS,
                         default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    _add_diagnose_parser(commands)
    return parser


def _add_diagnose_parser(commands):
    diagnose = commands.add_parser(
        "diagnose", help="Measure why a saved model's inference outputs differ "
        "from its training-mode outputs on some data: per BatchNormalization "
        "layer, with the fix."
    )
    diagnose.add_argument("path", help="a .keras model file")
    diagnose.add_argument("data", help="the model's inputs: a .npy file, or a "
                          ".npz file (its array 'x', else its first array)")
    diagnose.add_argument("--batch-size", type=int, default=32,
                          help="batch size, as in training (default: 32)")
    diagnose.add_argument("--steps", type=int, help="use only the first STEPS batches")
    diagnose.add_argument("--plot", metavar="PNG", help="also draw the per-layer gaps here")
    diagnose.add_argument("--json", action="store_true",
                          help="print the diagnosis as JSON instead of a table")
    diagnose.add_argument("--backend", choices=BACKENDS,
                          default=argparse.SUPPRESS, help=argparse.SUPPRESS)


# The status a shell reports for a command killed by SIGPIPE (128 + 13).
_READER_LEFT_STATUS = 128 + getattr(signal, "SIGPIPE", 13)


def main(argv=None):
    """Runs the command line; returns its exit status.

    A reader that leaves early (`keras-bn-ext inspect M.keras | head -1`)
    ends the command quietly with status 141, as the shell reports for a C
    tool (cat, grep) that SIGPIPE ends: `set -o pipefail` scripts see the
    same thing, and 1 stays this command's own "error" status.
    """
    try:
        try:
            status = _main(argv)
        except SystemExit:  # argparse's --help, --version and usage errors
            _flush_stdout()
            raise
        _flush_stdout()  # the reader's leaving shows here, not at exit
    except BrokenPipeError:
        _silence_stdout()
        return _READER_LEFT_STATUS
    return status


def _flush_stdout():
    if sys.stdout is not None:
        sys.stdout.flush()


def _silence_stdout():
    """Points stdout's file descriptor at the null device, so that what is
    left in its buffer is dropped at exit instead of raising
    BrokenPipeError again ("Exception ignored ..." on stderr)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass  # a stdout with no file descriptor (a test's capture) has no pipe


def _main(argv):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        backend = _choose_backend(args.backend)
    except RuntimeError as e:
        print(f"keras-bn-ext: error: {e}", file=sys.stderr)
        return 1
    os.environ["KERAS_BACKEND"] = backend
    _restart_if_backend_loaded(backend, argv)
    # TensorFlow's start-up log lines are not for the CLI's user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _startup.load_public_api()
    if args.command == "demo":
        from keras_bn_ext.demo import run_demo

        run_demo()
        return 0
    if args.command == "inspect":
        return _inspect(args.path)
    if args.command == "diagnose":
        return _diagnose(args)
    parser.print_help()
    return 2


def _choose_backend(requested):
    """--backend, else $KERAS_BACKEND, else the one in Keras's config file
    if installed, else the first installed backend: the CLI works with any
    one of them."""
    keras = sys.modules.get("keras")
    if requested is None and keras is not None:
        return keras.backend.backend()  # called in a process that has Keras
    for name, source in ((requested, "--backend"),
                         (os.environ.get("KERAS_BACKEND"), "KERAS_BACKEND")):
        if name:
            if name in _BACKEND_MODULES and not _installed(name):
                raise RuntimeError(
                    f"the {name} backend is not installed (pip install "
                    f"'keras-bn-ext[{name}]'). Received: {source}={name}"
                )
            return name
    # Keras writes keras.json with its default (tensorflow) on first import,
    # so the file's backend is a preference, not a requirement.
    configured = _configured_backend()
    candidates = ([configured] if configured in BACKENDS else []) + list(BACKENDS)
    for candidate in candidates:
        if _installed(candidate):
            return candidate
    raise RuntimeError(
        "no Keras backend is installed: pip install 'keras-bn-ext[jax]' "
        "(or [tensorflow], or [torch])"
    )


def _installed(backend):
    try:
        return importlib.util.find_spec(_BACKEND_MODULES[backend]) is not None
    except (ImportError, ValueError):
        return False


def _configured_backend():
    """The backend in Keras's config file, when the user wrote one."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return None


def _restart_if_backend_loaded(backend, argv):
    """Keras fixes its backend at import; importing this package imported
    Keras already, so a different backend needs a fresh process."""
    keras = sys.modules.get("keras")
    if keras is None or keras.backend.backend() == backend:
        return
    argv = sys.argv[1:] if argv is None else list(argv)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "keras_bn_ext", *argv])


def _inspect(path):
    model = _load_model(path)
    if model is None:
        return 1
    import keras

    import keras_bn_ext

    print(f"{path} (Keras {keras.__version__}, {keras.backend.backend()} backend)")
    print(keras_bn_ext.report(model))
    return 0


def _diagnose(args):
    model = _load_model(args.path)
    if model is None:
        return 1
    from keras_bn_ext.tools import diagnose_cli

    return diagnose_cli.run(model, args)


def _load_model(path):
    """The model in a `.keras` file, or None after a one-line error."""
    if not os.path.isfile(path):
        what = "is a directory, not a model file" if os.path.isdir(path) else "no such file"
        print(f"keras-bn-ext: error: {what}: {path}", file=sys.stderr)
        return None
    import zipfile

    import keras

    import keras_bn_ext  # noqa: F401  (registers the layer for deserialization)

    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        print(
            f"keras-bn-ext: error: {path} is not a Keras model file (a .keras "
            "file is a zip archive saved by model.save()).",
            file=sys.stderr,
        )
        return None
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(
            f"keras-bn-ext: error: {path} is not a loadable Keras model: "
            f"{first_line}",
            file=sys.stderr,
        )
        return None

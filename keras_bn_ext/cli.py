"""Command line: `keras-bn-ext demo | inspect MODEL.keras [--backend NAME]`.

The backend must be chosen before Keras is imported, so this module imports
nothing from Keras at the top.
"""

import argparse
import os
import runpy
import sys

# Read from its file: importing the package would start a Keras backend.
BACKENDS = runpy.run_path(
    os.path.join(os.path.dirname(__file__), "backend", "supported.py")
)["BACKENDS"]


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-bn-ext",
        description="keras_bn_ext: a BatchNormalization that explains itself.",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else Keras's default).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="Reproduce and explain the seed question (predict() on a "
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
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
        _restart_if_backend_loaded(args.backend, argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.command == "demo":
        from keras_bn_ext.demo import run_demo

        run_demo()
        return 0
    if args.command == "inspect":
        return _inspect(args.path)
    parser.print_help()
    return 2


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
    if not os.path.isfile(path):
        what = "is a directory, not a model file" if os.path.isdir(path) else "no such file"
        print(f"keras-bn-ext: error: {what}: {path}", file=sys.stderr)
        return 1
    import zipfile

    import keras

    import keras_bn_ext  # registers the layer for deserialization

    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        print(
            f"keras-bn-ext: error: {path} is not a Keras model file (a .keras "
            "file is a zip archive saved by model.save()).",
            file=sys.stderr,
        )
        return 1
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(
            f"keras-bn-ext: error: {path} is not a loadable Keras model: "
            f"{first_line}",
            file=sys.stderr,
        )
        return 1
    print(f"{path} (Keras {keras.__version__}, {keras.backend.backend()} backend)")
    print(keras_bn_ext.report(model))
    return 0

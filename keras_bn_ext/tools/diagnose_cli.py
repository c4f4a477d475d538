"""`keras-bn-ext diagnose MODEL.keras DATA.npy|DATA.npz`: the command line's
side of `diagnose` (reading the data file, printing, plotting)."""

import os
import sys

import numpy as np

from keras_bn_ext.tools.diagnose import diagnose


def load_inputs(path):
    """The array in a `.npy` file, or a `.npz` file's array `x` (else its
    first array). Raises `ValueError` with a one-line message."""
    if not os.path.isfile(path):
        what = "is a directory, not a data file" if os.path.isdir(path) else "no such file"
        raise ValueError(f"{what}: {path}")
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".npy", ".npz"):
        raise ValueError(f"the data must be a .npy or .npz file. Received: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path} is not a NumPy {extension} file: {e}") from None
    if extension == ".npy":
        return _rows(loaded, path)
    with loaded:
        if not loaded.files:
            raise ValueError(f"{path} holds no array")
        return _rows(loaded["x" if "x" in loaded.files else loaded.files[0]], path)


def _rows(x, path):
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{path} holds no rows (its array has shape {x.shape})")
    return x


def check_options(args):
    """The options' values, checked before any work (so that a long run
    does not fail at its end, on the plot's path). Raises `ValueError`."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive. Received: {args.batch_size}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be positive. Received: {args.steps}")
    if args.plot:
        folder = os.path.dirname(os.path.abspath(args.plot))
        if os.path.isdir(args.plot):
            raise ValueError(f"--plot must be a file path, not a directory: {args.plot}")
        if not os.path.isdir(folder):
            raise ValueError(f"--plot: no such directory: {folder}")
        if not os.access(folder, os.W_OK):
            raise ValueError(f"--plot: cannot write to the directory {folder}")


def run(model, args):
    """Diagnoses `model` on `args.data`; prints the table (or JSON), draws
    `args.plot`. Returns the exit status."""
    try:
        check_options(args)
        x = load_inputs(args.data)
    except ValueError as e:
        print(f"keras-bn-ext: error: {e}", file=sys.stderr)
        return 1
    diagnosis = diagnose(model, x, steps=args.steps, batch_size=args.batch_size)
    if args.json:
        print(diagnosis.to_json(indent=1))
    else:
        print(f"{args.path} on {args.data} {tuple(x.shape)}")
        print(diagnosis)
    if args.plot:
        diagnosis.plot(args.plot)
        if not args.json:
            print(f"Plot: {args.plot}")
    return 0

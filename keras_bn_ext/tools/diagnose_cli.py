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
        return loaded
    with loaded:
        if not loaded.files:
            raise ValueError(f"{path} holds no array")
        return loaded["x" if "x" in loaded.files else loaded.files[0]]


def run(model, args):
    """Diagnoses `model` on `args.data`; prints the table (or JSON), draws
    `args.plot`. Returns the exit status."""
    try:
        x = load_inputs(args.data)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be positive. Received: {args.batch_size}")
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

"""How `recalibrate` and `diagnose` read their `data` argument, as `fit`
reads its data: which forms are whole arrays, split into batches of
`batch_size`, and which are batches already.

Whole arrays ("arrays": NumPy arrays or backend tensors, all with the same
number of rows):

- an array, or a dict of arrays (a model's named inputs);
- a tuple `(x, y)` or `(x, y, sample_weight)`, as Keras's `validation_data`,
  where `x` is an array or a dict of arrays (for a model whose number of
  inputs is unknown, any structure of arrays); `y` and `sample_weight` may
  be None or structures of arrays; only `x` is used;
- for a model with n > 1 inputs, a list or tuple of n arrays: its inputs,
  as `fit(x=[a, b])` reads them;
- a list of 2 or 3 such items is read as `(x, y[, sample_weight])` too,
  unless its items all have the same layout (structure, and shapes after
  the first dimension): then it is a list of batches of `x`, as
  `[x[:32], x[32:64]]` always was. Whole `x` and `y` of the same shape (an
  autoencoder's) must come as a tuple.

Everything else that iterates (a list of batches, a generator, a dataset)
is batches.
"""

import numbers
import os

import keras


def check_model(model, action):
    """`model` must be a Keras model (or layer); a path gets a hint."""
    if not isinstance(model, keras.Layer):
        hint = ""
        if isinstance(model, (str, os.PathLike)):
            hint = (f" To {action} a saved model, load it first: "
                    f"keras.saving.load_model({model!r}).")
        raise ValueError(
            f"`model` must be a Keras model. Received: model={model!r} of type "
            f"{type(model).__name__}.{hint}"
        )


def check_steps(steps):
    """`steps` must be None or a positive integer."""
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(
            f"`steps` must be a positive integer or None. Received: steps={steps!r}"
        )


def check_data(data):
    """Rejects what cannot be data, naming `data` and the type received."""
    if isinstance(data, (str, bytes, os.PathLike)):
        raise ValueError(
            "`data` must be the data itself (arrays, a dataset or batches), not a "
            "file path: load it first (e.g. numpy.load). "
            f"Received: data={data!r} of type {type(data).__name__}"
        )
    scalar = hasattr(data, "shape") and len(data.shape) == 0
    iterable = hasattr(data, "__iter__") or hasattr(data, "__getitem__")
    if data is None or scalar or not iterable:
        raise ValueError(
            "`data` must be arrays, a dict of arrays, a tf.data.Dataset, a "
            "keras.utils.PyDataset, a torch DataLoader, or an iterable of batches, "
            f"as fit() accepts. Received: data={data!r} of type {type(data).__name__}"
        )


def whole_inputs(data, model):
    """The model's inputs `x` when `data` is whole arrays (see the module),
    else None (`data` is batches)."""
    if _is_array(data):
        return data
    if isinstance(data, dict):
        if _rows(data) is None:
            raise ValueError(
                "A dict `data` must hold arrays with the same number of rows (the "
                f"model's named inputs). Received: data with keys {list(data)}"
            )
        return data
    if not isinstance(data, (list, tuple)) or _rows(data) is None:
        return None
    inputs = _input_count(model)
    if inputs is not None and inputs > 1 and len(data) == inputs and all(
            _is_array(item) for item in data):
        return data  # as fit(x=[a, b]): a list of arrays is the inputs
    if not 2 <= len(data) <= 3 or (isinstance(data, list) and _same_layout(data)):
        return None
    x = data[0]
    if x is None or (inputs == 1 and not (_is_array(x) or isinstance(x, dict))):
        return None
    return x


def split(x, batch_size):
    """Whole arrays `x` (a structure) as a list of batches of `batch_size`
    rows, each a batch `(x,)`: a list `x` (several inputs) is then not read
    as `(x, y)`."""
    return [
        (keras.tree.map_structure(
            lambda a: a if a is None else a[start:start + batch_size], x),)
        for start in range(0, _rows(x), batch_size)
    ]


def _is_array(value):
    shape = getattr(value, "shape", None)
    return shape is not None and len(shape) >= 1 and hasattr(value, "__getitem__")


def _rows(structure):
    """The number of rows every array in `structure` has (None items
    skipped); None when a leaf is not an array or the counts differ."""
    leaves = [leaf for leaf in keras.tree.flatten(structure) if leaf is not None]
    if not leaves or not all(_is_array(leaf) for leaf in leaves):
        return None
    rows = {leaf.shape[0] for leaf in leaves}
    return rows.pop() if len(rows) == 1 and None not in rows else None


def _same_layout(items):
    def layout(item):
        return keras.tree.map_structure(
            lambda a: None if a is None else tuple(a.shape[1:]), item)

    first = layout(items[0])
    return all(type(item) is type(items[0]) and layout(item) == first for item in items)


def _input_count(model):
    """How many inputs the model takes, or None where it cannot tell
    (a subclassed model, a Sequential model not built yet)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return len(inputs) if inputs else None

"""The options of `BatchNormalization` beyond Keras's layer, in one table.

One row per extension option, and per Keras argument that has a value Keras's
layer, PyTorch's or Flax's BatchNorm cannot express: its default, its check,
what Keras, PyTorch and Flax can express, and how `explain()` words it. The
layer's `__init__` and `get_config`, `convert_model(to="keras")`, `to_torch`,
`to_flax` and `layer.explain()` read it.

Adding an option: a row here, and the argument in the layer's signature and
docstring (`tests/test_options_table.py` checks both against this table);
`__init__` sets an attribute of the same name, checked by the row.
"""

import dataclasses
from typing import Any
from typing import Callable
from typing import Optional

from keras_bn_ext.layers import arguments


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of the layer.

    Attributes:
        name: the constructor argument, and the layer attribute holding it.
        default: its default value.
        check: value -> the value to store; raises a `ValueError` that ends
            in `Received: name=value`.
        keras_argument: whether Keras's layer has this argument too. Its
            config then always carries it; an extension option is written
            only when it differs from its default, so a default layer's
            config is exactly Keras's.
        used_when: value -> whether the value goes beyond the default
            (`keras`, `torch` and `explain` speak of such values). `None`:
            any value other than the default.
        keras: why Keras's layer cannot express a used value:
            `convert_model(to="keras")` raises with it. `None`: Keras's layer
            computes the same, and conversion drops the option.
        torch: why PyTorch's BatchNorm cannot express a used value:
            `to_torch` raises with it. `None`: `to_torch` maps it.
        flax: why Flax's `nnx.BatchNorm` cannot express a used value:
            `to_flax` raises with it. `None`: `to_flax` maps or drops it.
        explain: value -> the words for a used value in `explain()`'s
            "Options:" line. `None`: not listed there.
        written_with: the name of another extension option: the config
            carries this one, default or not, whenever it carries that one
            (so that a config says it, and tells ours from tf-keras's).
    """

    name: str
    default: Any
    check: Callable[[Any], Any] = bool
    keras_argument: bool = False
    used_when: Optional[Callable[[Any], bool]] = None
    keras: Optional[str] = None
    torch: Optional[str] = None
    flax: Optional[str] = None
    explain: Optional[Callable[[Any], str]] = None
    written_with: Optional[str] = None

    def is_used(self, value):
        """Whether `value` goes beyond the default (see `used_when`)."""
        if self.used_when is None:
            return value != self.default
        return bool(self.used_when(value))

    def received(self, value):
        """`name=value`, as error messages end."""
        return f"{self.name}={value!r}"


def _check_momentum(value):
    return arguments.check_momentum(value, "momentum", allow_none=True)


# In the order of the layer's signature.
_ROWS = (
    Option(
        "momentum", 0.99, _check_momentum, keras_argument=True,
        used_when=lambda momentum: momentum is None,
        keras="Keras has no cumulative average (momentum=None)",
        flax="Flax's BatchNorm has no cumulative average (momentum=None)",
        explain=lambda _: "cumulative average (momentum=None)",
    ),
    Option(
        "renorm", False, keras_argument=True,
        torch="PyTorch has no Batch Renormalization",
        flax="Flax's BatchNorm has no Batch Renormalization",
        explain=lambda _: "batch renormalization",
    ),
    Option(
        "synchronized", False, keras_argument=True,
        torch="to_torch exports a plain BatchNorm; wrap the result with "
        "torch.nn.SyncBatchNorm.convert_sync_batchnorm for synchronized "
        "statistics",
        flax="Flax's BatchNorm synchronizes over a named device axis that the "
        "layer does not know; export without synchronized=True, then set the "
        "module's axis_name",
    ),
    # explain() names the mode in its first line and its rules. to_flax maps
    # "moving" and refuses "batch" itself.
    Option(
        "mode", "auto", arguments.check_mode,
        keras="Keras has no forced mode; trainable=False freezes the moving "
        "statistics but also gamma and beta",
    ),
    # Keras never skips an update; the two differ only on a non-finite
    # batch: dropped.
    Option("skip_nonfinite_updates", True),
    Option(
        "unbiased_moving_variance", False,
        keras="Keras always stores the biased variance",
        flax="Flax's BatchNorm always stores the biased variance",
        explain=lambda _: "unbiased_moving_variance",
    ),
    Option(
        "debias", False,
        keras="Keras has no debiased moving averages",
        flax="Flax's BatchNorm has no debiased moving averages",
        explain=lambda _: "debias",
    ),
    Option(
        "virtual_batch_size", None, arguments.check_virtual_batch_size,
        keras="Keras 3 has no virtual (ghost) batches",
        torch="PyTorch's BatchNorm has no virtual (ghost) batches",
        flax="Flax's BatchNorm has no virtual (ghost) batches",
        explain=lambda size: f"virtual batches of {size}",
    ),
    # Written whenever virtual_batch_size is: a tf-keras config (strided,
    # always) is one with virtual batches and without this key.
    Option(
        "virtual_batch_grouping", "contiguous",
        arguments.check_virtual_batch_grouping,
        keras="Keras 3 has no virtual (ghost) batches",
        torch="PyTorch's BatchNorm has no virtual (ghost) batches",
        flax="Flax's BatchNorm has no virtual (ghost) batches",
        written_with="virtual_batch_size",
    ),
    # explain() reports the counter itself ("Updated N times").
    Option(
        "track_updates", False,
        keras="Keras has no update counter, so `num_batches_tracked` would "
        "be lost",
        flax="Flax's BatchNorm has no update counter, so `num_batches_tracked` "
        "would be lost",
    ),
    # Only logs and makes records: dropped.
    Option("debug", False),
)

OPTIONS = {option.name: option for option in _ROWS}
EXTENSIONS = tuple(option for option in _ROWS if not option.keras_argument)


def check(name, value):
    """The value to store for option `name`; raises a `ValueError` naming it."""
    return OPTIONS[name].check(value)


def extension_config(layer):
    """The extension options that differ from their default (or go with one
    that does, see `written_with`), for the config."""
    config = {}
    for option in EXTENSIONS:
        value = getattr(layer, option.name)
        if value != option.default or option.written_with in config:
            config[option.name] = value
    return config


def used_options(layer):
    """`(option, value)` for each option whose value on `layer` is used."""
    return [
        (option, getattr(layer, option.name))
        for option in _ROWS
        if option.is_used(getattr(layer, option.name))
    ]

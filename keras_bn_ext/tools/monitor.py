"""`StatsMonitor`: a callback that records BatchNormalization statistics
during training, saves them, and plots the moving statistics converging."""

import csv
import dataclasses
import functools
import json
import os
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from keras_bn_ext import debug
from keras_bn_ext.debug import step_callbacks
from keras_bn_ext.tools.report import batch_norm_layers


@dataclasses.dataclass(frozen=True)
class MonitorRecord:
    """One observation of one layer.

    Attributes:
        step: training steps done so far, over every `fit` this monitor saw
            (0: before the first step).
        epoch: the epoch (0-based) it belongs to.
        layer: the layer's path in the model.
        source: `"moving"` (the moving statistics after `step` steps) or
            `"batch"` (the statistics of the batch of step `step`).
        mean: the mean, averaged over channels.
        variance: the variance, averaged over channels.
        mean_channels: the mean of the first few channels.
        variance_channels: the variance of the first few channels.
    """

    step: int
    epoch: int
    layer: str
    source: str
    mean: float
    variance: float
    mean_channels: tuple[float, ...]
    variance_channels: tuple[float, ...]


class StatsMonitor(keras.callbacks.Callback):
    """Records per-layer BatchNormalization statistics over training.

    Moving statistics of every BatchNormalization layer (Keras's and ours)
    are read every `every_n_steps` training steps, or at the end of each
    epoch, plus once before training. With `batch_stats=True`, the statistics
    of every training batch are recorded too, from the debug records of our
    layers (Keras's layers make none): the monitor adds a
    `keras_bn_ext.debug` hook and retraces the model when training begins,
    and removes it when training ends.

    Args:
        layers: names (or paths, e.g. `"backbone/bn1"`) of the layers to
            monitor; `None`: all of them.
        every_n_steps: read the moving statistics every this many steps;
            `None`: at the end of each epoch.
        batch_stats: also record each training batch's statistics.
        channels: how many leading channels to keep besides the average.
        path: if given, `save(path)` when training ends (`.csv` or `.json`).

    Examples:
        >>> import numpy as np, keras, keras_bn_ext
        >>> model = keras.Sequential([keras.Input((3,)),
        ...     keras_bn_ext.BatchNormalization(name="bn"), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> monitor = keras_bn_ext.callbacks.StatsMonitor(every_n_steps=2,
        ...                                               batch_stats=True)
        >>> _ = model.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=2,
        ...               verbose=0, callbacks=[monitor])
        >>> [r.step for r in monitor.records("bn", "moving")]
        [0, 2, 4]
        >>> [r.step for r in monitor.records("bn", "batch")]
        [1, 2, 3, 4]
        >>> monitor.save("bn_stats.csv")  # doctest: +SKIP
        'bn_stats.csv'
        >>> monitor.plot("bn_stats.png")  # doctest: +SKIP
        'bn_stats.png'
    """

    def __init__(
        self,
        layers: Iterable[str] | None = None,
        every_n_steps: int | None = None,
        batch_stats: bool = False,
        channels: int = 4,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and (
            not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ValueError(
                "`every_n_steps` must be a positive int or None. "
                f"Received: every_n_steps={every_n_steps!r}"
            )
        if path is not None:
            _format_of(path)
        self.layer_names = None if layers is None else list(layers)
        self.every_n_steps = every_n_steps
        self.batch_stats = bool(batch_stats)
        self.channels = int(channels)
        self.path = path
        self.history: list[MonitorRecord] = []
        self._step = 0
        self._epoch = 0
        self._layers: dict[str, Any] = {}

    # Callback methods ------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._layers = self._resolve_layers()
        if self.batch_stats:
            self._monitor_train_steps()
        self._record_moving()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._step += 1
        if self.every_n_steps and self._step % self.every_n_steps == 0:
            self._record_moving()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.every_n_steps is None:
            self._record_moving()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.batch_stats:
            debug.retrace(self.model)  # later calls compile without the hook
        if self.path is not None:
            self.save(self.path)

    # Results ---------------------------------------------------------------

    def records(
        self, layer: str | None = None, source: str | None = None
    ) -> list[MonitorRecord]:
        """The recorded `MonitorRecord`s, optionally of one layer/source."""
        return [
            r for r in self.history
            if (layer is None or r.layer == layer)
            and (source is None or r.source == source)
        ]

    def save(self, path: str | os.PathLike[str]) -> str | os.PathLike[str]:
        """Writes the history to `path`: CSV (`.csv`) or JSON (`.json`).

        Returns:
            The path.
        """
        rows = [dataclasses.asdict(r) for r in self.history]
        if _format_of(path) == "json":
            with open(path, "w") as f:
                json.dump([_jsonable(row) for row in rows], f, indent=1)
            return path
        width = max([len(r.mean_channels) for r in self.history] or [0])
        header = ["step", "epoch", "layer", "source", "mean", "variance"]
        header += [f"mean_{i}" for i in range(width)]
        header += [f"variance_{i}" for i in range(width)]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for r in self.history:
                pad = [""] * (width - len(r.mean_channels))
                writer.writerow(
                    [r.step, r.epoch, r.layer, r.source, r.mean, r.variance]
                    + list(r.mean_channels) + pad
                    + list(r.variance_channels) + pad
                )
        return path

    def plot(
        self, path: str | os.PathLike[str], channels: int | None = None
    ) -> str | os.PathLike[str]:
        """Draws the moving mean and variance of each layer against the
        batch statistics, one row of two plots per layer, as a PNG.

        Args:
            path: the PNG file to write.
            channels: `None` plots the average over channels; an int `k`
                plots each of the first `k` recorded channels.

        Returns:
            The path.
        """
        figure_class, canvas_class = _matplotlib()
        layers = list(dict.fromkeys(r.layer for r in self.history))
        figure = figure_class(figsize=(10, 2.6 * max(1, len(layers))))
        canvas_class(figure)
        axes = figure.subplots(max(1, len(layers)), 2, squeeze=False)
        for row, layer in zip(axes, layers):
            for ax, stat in zip(row, ("mean", "variance")):
                self._plot_one(ax, layer, stat, channels)
        if not layers:
            axes[0][0].set_title("no BatchNormalization statistics recorded")
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=80)
        return path

    # Private ---------------------------------------------------------------

    def _resolve_layers(self):
        found = dict(batch_norm_layers(self.model))
        if self.layer_names is None:
            return found
        chosen = {}
        for name in self.layer_names:
            matches = [p for p in found if p == name or p.rsplit("/", 1)[-1] == name]
            if not matches:
                raise ValueError(
                    f"StatsMonitor: no BatchNormalization layer {name!r} in "
                    f"model {self.model.name!r}. Its layers: {list(found)}"
                )
            chosen[matches[0]] = found[matches[0]]
        return chosen

    def _monitor_train_steps(self):
        """Records each train step's batch statistics through a global hook
        that is attached only while a step runs, so that no exit from `fit`
        (an exception, KeyboardInterrupt, early stopping) leaves it behind
        for other models to compile in."""
        by_name = {layer.name: path for path, layer in self._layers.items()}
        hook = functools.partial(self._on_record, by_name=by_name)
        model = self.model
        # Keras made the train function before on_train_begin; the hook is
        # compiled in only when it is traced again, so make a new one now,
        # with the hook attached (TensorFlow then leaves XLA out of it).
        with debug.add_hook(hook):
            debug.retrace(model)
            model.make_train_function()
        step = model.train_function

        def monitored_step(*args, **kwargs):
            handle = debug.add_hook(hook)
            try:
                return step(*args, **kwargs)
            finally:
                step_callbacks.flush()  # this step's records are in
                handle.remove()

        model.train_function = monitored_step

    def _record_moving(self):
        _ = self.model  # on JAX, reading it syncs the variables with fit's state
        for path, layer in self._layers.items():
            if not layer.built:
                continue
            self._add(path, "moving", _numpy(layer.moving_mean),
                      _numpy(layer.moving_variance))

    def _plot_one(self, ax, layer, stat, channels):
        for source, style in (("batch", dict(s=9, alpha=0.55)),
                              ("moving", dict(linewidth=1.8))):
            records = self.records(layer, source)
            if not records:
                continue
            steps = [r.step for r in records]
            if channels is None:
                series = {"": [getattr(r, stat) for r in records]}
            else:
                series = {
                    f" ch{i}": [_channel(r, stat, i) for r in records]
                    for i in range(channels)
                }
            for suffix, values in series.items():
                label = f"{source} {stat}{suffix}"
                if source == "batch":
                    ax.scatter(steps, values, label=label, **style)
                else:
                    ax.plot(steps, values, label=label, **style)
        which = "channel average" if channels is None else f"first {channels} channels"
        ax.set_title(f"{layer}: {stat} ({which})", fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.has_data():
            ax.legend(fontsize=7)

    def _on_record(self, record, by_name):
        if record.branch != "batch" or not record.training:
            return
        path = by_name.get(record.layer)
        if path is None:
            return
        mean, variance = record.mean, record.variance
        if mean.ndim > 1:  # virtual batches: (G, C) -> the batch average
            mean, variance = mean.mean(axis=0), variance.mean(axis=0)
        # The step being run: on_train_batch_end has not counted it yet.
        self._add(path, "batch", mean, variance, step=self._step + 1)

    def _add(self, path, source, mean, variance, step=None):
        mean = np.asarray(mean, "float64").ravel()
        variance = np.asarray(variance, "float64").ravel()
        k = self.channels
        self.history.append(MonitorRecord(
            step=self._step if step is None else step,
            epoch=self._epoch,
            layer=path,
            source=source,
            mean=float(mean.mean()),
            variance=float(variance.mean()),
            mean_channels=tuple(float(v) for v in mean[:k]),
            variance_channels=tuple(float(v) for v in variance[:k]),
        ))


def _matplotlib():
    # Imported here: matplotlib is optional, and the Agg canvas draws files
    # without touching pyplot's global backend or opening windows.
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "StatsMonitor.plot() needs matplotlib: pip install matplotlib "
            "(or keras-bn-ext[plot])."
        ) from e
    return Figure, FigureCanvasAgg


def _channel(record, stat, i):
    values = getattr(record, f"{stat}_channels")
    return values[i] if i < len(values) else float("nan")


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _format_of(path):
    extension = os.path.splitext(str(path))[1].lower()
    if extension not in (".csv", ".json"):
        raise ValueError(
            "StatsMonitor saves to a .csv or .json file. "
            f"Received: path={str(path)!r}"
        )
    return extension[1:]


def _jsonable(row):
    row["mean_channels"] = list(row["mean_channels"])
    row["variance_channels"] = list(row["variance_channels"])
    return row

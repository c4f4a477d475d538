"""`keras_bn_ext.BatchNormalization`: Keras's layer, correct everywhere, and
able to say which statistics each call used and why."""

from collections.abc import Callable

import keras
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from keras_bn_ext import backend as backend_ops
from keras_bn_ext import statistics
from keras_bn_ext.branching import Branch
from keras_bn_ext.branching import decide_branch
from keras_bn_ext.debug import registry
from keras_bn_ext.debug.explain import explain as explain_layer
from keras_bn_ext.debug.freshness import NeverUpdatedCheck
from keras_bn_ext.debug.records import RecordBuilder
from keras_bn_ext.debug.records import StatsRecord
from keras_bn_ext.debug.registry import HookHandle
from keras_bn_ext.layers import ghost
from keras_bn_ext.layers import options
from keras_bn_ext.layers import tf_keras
from keras_bn_ext.layers.arguments import check_axis
from keras_bn_ext.layers.arguments import check_combinations
from keras_bn_ext.layers.arguments import check_epsilon
from keras_bn_ext.layers.arguments import check_momentum
from keras_bn_ext.layers.arguments import check_renorm_clipping
from keras_bn_ext.layers.arguments import resolve_axes
from keras_bn_ext.layers.arguments import standardize_mask


def _cast(value, dtype):
    """`value` (a tensor or a variable) as a `dtype` tensor. `call` runs
    every step: skipping a cast that changes nothing saves `keras.ops`'
    per-call Python work (about 10 us each on torch)."""
    dtype = keras.backend.standardize_dtype(dtype)  # e.g. torch.float32
    if isinstance(value, keras.Variable):
        if value.dtype == dtype:
            return value.value
    elif (
        ops.is_tensor(value)  # not NumPy: cast converts it
        and keras.backend.standardize_dtype(value.dtype) == dtype
    ):
        return value
    return ops.cast(value, dtype)


def _clone_initializer(initializer):
    # A fresh copy so a seeded random initializer gives the same values again.
    if isinstance(initializer, initializers.Initializer):
        return initializer.__class__.from_config(initializer.get_config())
    return initializer


@keras.saving.register_keras_serializable(package="keras_bn_ext")
class BatchNormalization(keras.layers.Layer):
    """Batch normalization that explains itself; a drop-in for Keras's layer.

    Same arguments, defaults, variables (names, shapes, order) and results as
    `keras.layers.BatchNormalization`, on TensorFlow, JAX and PyTorch, plus:
    a stable variance on every backend, exact masks on any axis, moving
    statistics that empty, fully masked or non-finite batches never corrupt,
    and debug records saying which statistics each call used and why.

    During training (`fit()`, or `training=True`) it normalizes with the
    batch's mean and variance and updates the moving statistics:
    `moving = moving * momentum + batch * (1 - momentum)`. During inference
    (`predict()`, `evaluate()`, `training=False` or the default
    `training=None`) it normalizes with the moving statistics. They start at
    mean 0 and variance 1, so an untrained layer returns
    `x / sqrt(1 + epsilon)`: the layer warns when that happens
    (`NeverUpdatedWarning`) and `layer.explain()` says so.

    Saved models: `import keras_bn_ext` before `keras.saving.load_model`.
    The import registers the layer with Keras; without it, loading fails with
    Keras's generic "Could not locate class 'BatchNormalization'" error
    followed by the model's whole config.

    Args:
        axis: Integer or list of integers, the channel axis (or axes) to keep.
            After a `Conv2D` with `data_format="channels_first"` use `axis=1`.
        momentum: Momentum of the moving averages, in [0, 1] (weight of the
            old value). `None`: a cumulative average over all training
            batches so far (PyTorch's `momentum=None`).
        epsilon: Small float > 0 added to the variance.
        center: If `True`, add the offset `beta`.
        scale: If `True`, multiply by `gamma`.
        beta_initializer: Initializer for `beta`.
        gamma_initializer: Initializer for `gamma`.
        moving_mean_initializer: Initializer for the moving mean.
        moving_variance_initializer: Initializer for the moving variance.
        beta_regularizer: Optional regularizer for `beta`.
        gamma_regularizer: Optional regularizer for `gamma`.
        beta_constraint: Optional constraint for `beta`.
        gamma_constraint: Optional constraint for `gamma`.
        renorm: Whether to use Batch Renormalization (adds `moving_stddev`,
            `renorm_mean`, `renorm_stddev`, as Keras does).
        renorm_clipping: Dict with optional keys `"rmax"`, `"rmin"`, `"dmax"`
            clipping the renorm correction `(r, d)`.
        renorm_momentum: Momentum of the renorm moving averages.
        synchronized: Compute the batch statistics over all replicas (a TF
            distribution strategy, `torch.distributed`; under JAX sharding
            reductions are global already).
        mode: `"auto"` (Keras's rule), `"moving"` (always the moving
            statistics and never update: frozen BN for fine-tuning) or
            `"batch"` (always this batch's statistics, in `predict()` too).
        skip_nonfinite_updates: If `True` (default), a batch whose statistics
            are not finite does not update the moving statistics (its output
            still carries the NaN, so you see it).
        unbiased_moving_variance: PyTorch's convention: normalize with the
            biased batch variance, store `n / (n - 1)` times it.
        debias: Debiased moving averages: exact after one training step, for
            any initial value.
        virtual_batch_size: Ghost batch normalization: statistics per virtual
            batch of this many samples. A batch it does not divide gets a
            smaller virtual batch for the samples left over (exact
            statistics: the padding is masked out).
        virtual_batch_grouping: Which samples form a virtual batch:
            `"contiguous"` (`k` consecutive samples) or `"strided"`
            (tf-keras's: with `G` virtual batches, samples `g, g + G,
            g + 2G, ...`). A tf-keras config selects `"strided"`.
        track_updates: Keep an update counter variable `num_batches_tracked`
            (created anyway when `momentum=None` or `debias=True`).
        debug: If `True`, log one line per call on the `"keras_bn_ext"`
            logger (and make records for hooks).
        **kwargs: Base layer keyword arguments (e.g. `name` and `dtype`),
            and tf-keras's `fused` (accepted, a no-op) and `adjustment`
            (None only). `from_config` also reads tf-keras's configs, so
            `keras.saving.load_model(path, custom_objects={
            "BatchNormalization": keras_bn_ext.BatchNormalization})` loads
            tf-keras `.h5` files (see docs/migrating.md).

    Call arguments:
        inputs: Input tensor of any rank (integers accepted).
        training: `True` (batch statistics, update), `False` or `None`
            (moving statistics).
        mask: Boolean tensor, `True` where an element counts for the
            statistics. Either the shape of `inputs` without the channel
            axis (the natural mask for any `axis`), Keras's convention
            `inputs.shape[:-1]`, or the full rank of `inputs`; broadcastable.

    Examples:
        >>> import numpy as np, keras, keras_bn_ext
        >>> layer = keras_bn_ext.BatchNormalization(axis=1)
        >>> x = np.arange(4, dtype="float32").reshape((2, 2))
        >>> np.round(keras.ops.convert_to_numpy(layer(x, training=True)), 4)
        array([[-0.9995, -0.9995],
               [ 0.9995,  0.9995]], dtype=float32)

    Reference:
        - [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167).
        - [Ioffe, 2017 (Batch Renormalization)](https://arxiv.org/abs/1702.03275).
        - [Hoffer et al., 2017 (ghost batches)](https://arxiv.org/abs/1705.08741).
    """

    def __init__(
        self,
        axis: int | list[int] = -1,
        momentum: float | None = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: str | initializers.Initializer = "zeros",
        gamma_initializer: str | initializers.Initializer = "ones",
        moving_mean_initializer: str | initializers.Initializer = "zeros",
        moving_variance_initializer: str | initializers.Initializer = "ones",
        beta_regularizer: str | regularizers.Regularizer | None = None,
        gamma_regularizer: str | regularizers.Regularizer | None = None,
        beta_constraint: str | constraints.Constraint | None = None,
        gamma_constraint: str | constraints.Constraint | None = None,
        renorm: bool = False,
        renorm_clipping: dict[str, float] | None = None,
        renorm_momentum: float = 0.99,
        synchronized: bool = False,
        mode: str = "auto",
        skip_nonfinite_updates: bool = True,
        unbiased_moving_variance: bool = False,
        debias: bool = False,
        virtual_batch_size: int | None = None,
        virtual_batch_grouping: str = "contiguous",
        track_updates: bool = False,
        debug: bool = False,
        **kwargs,
    ):
        super().__init__(**tf_keras.pop_arguments(kwargs))
        self.axis = check_axis(axis)
        self.momentum = options.check("momentum", momentum)
        self.epsilon = check_epsilon(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.renorm = options.check("renorm", renorm)
        self.renorm_clipping = check_renorm_clipping(renorm, renorm_clipping)
        self.renorm_momentum = check_momentum(renorm_momentum, "renorm_momentum")
        self.synchronized = options.check("synchronized", synchronized)
        # The extension options (mode, ..., debug), checked by their `options` rows.
        arguments = locals()
        for option in options.EXTENSIONS:
            setattr(self, option.name, option.check(arguments[option.name]))
        check_combinations(self)
        self.supports_masking = True
        self._init_private_state()

    # Layer.__init__ assigns `supports_jit`; a property lets TensorFlow's
    # `jit_compile="auto"` pick graph mode (host callbacks work) while
    # debugging is on, and XLA otherwise.
    @property
    def supports_jit(self):
        """Whether Keras may XLA-compile this layer now (not while it makes
        debug records on TensorFlow: XLA cannot call back to Python)."""
        return self._supports_jit and backend_ops.jit_compatible(self.debugging)

    @supports_jit.setter
    def supports_jit(self, value):
        self._supports_jit = value

    @property
    def debugging(self):
        """Whether calls traced now make debug records."""
        return bool(self.debug or self._hooks or registry.is_active())

    def build(self, input_shape):
        ndim = len(input_shape)
        channel_axes = resolve_axes(self.axis, ndim)
        for a in channel_axes:
            if input_shape[a] is None:
                raise ValueError(
                    "BatchNormalization needs a defined channel dimension. "
                    f"Received: input_shape={tuple(input_shape)}, axis={self.axis}"
                )
        if self.virtual_batch_size is not None and 0 in channel_axes:
            raise ValueError(
                "`virtual_batch_size` splits the batch axis, which cannot be a "
                f"channel axis. Received: axis={self.axis}, "
                f"virtual_batch_size={self.virtual_batch_size}"
            )
        shape = tuple(input_shape[a] for a in channel_axes)
        self._channel_axes = channel_axes
        # A tuple: Keras tracks a list attribute as a TrackedList, which
        # torch.compile cannot pass to torch.sum(dim=...): it broke the graph
        # inside Keras's name_scope, and dynamo ran the call in pieces.
        self._reduction_axes = tuple(i for i in range(ndim) if i not in channel_axes)
        self._param_shape = shape
        self._variable_shape = shape
        if self._from_tf_keras:
            self._build_as_tf_keras(input_shape)
        self._add_gamma_and_beta()
        self.moving_mean = self._statistic_weight(
            "moving_mean", self.moving_mean_initializer
        )
        self.moving_variance = self._statistic_weight(
            "moving_variance", self.moving_variance_initializer
        )
        if self.renorm:
            self._add_renorm_weights()
        if self.needs_update_counter:
            self.num_batches_tracked = self.add_weight(
                shape=(),
                name="num_batches_tracked",
                initializer="zeros",
                dtype="int32",
                trainable=False,
                autocast=False,
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=ndim, axes={a: input_shape[a] for a in channel_axes}
        )

    def _build_as_tf_keras(self, input_shape):
        # A layer made from a tf-keras config: its weights in tf-keras's
        # shapes (so the file's fit), and its fused kernel's moving variance.
        self._variable_shape = tf_keras.weight_shape(
            input_shape, self._channel_axes, self.virtual_batch_size
        )
        if tf_keras.uses_fused_kernel(self, len(input_shape), self._channel_axes):
            self.unbiased_moving_variance = True

    def _add_gamma_and_beta(self):
        if self.scale:
            self.gamma = self.add_weight(
                shape=self._variable_shape,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=self._variable_shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )

    @property
    def needs_update_counter(self):
        """Whether the layer keeps `num_batches_tracked` (asked for with
        `track_updates`, or needed by `momentum=None` or `debias=True`)."""
        return self.track_updates or self.momentum is None or self.debias

    def compute_output_shape(self, input_shape):
        resolve_axes(self.axis, len(input_shape))
        return input_shape

    def call(self, inputs, training=None, mask=None):
        # 1. Decide: batch or moving statistics, update or not, and why.
        decision = decide_branch(training, self.trainable, self.mode)
        x = _cast(inputs, self._statistics_dtype(inputs))
        mask = standardize_mask(mask, x, self.axis, self._channel_axes)
        self._warn_if_fresh_statistics(decision)

        # 2. Get the statistics. With the batch's, the training kernel
        # normalizes while it computes them (its gradient is hand-written).
        batch = None
        if decision.branch is Branch.BATCH:
            outputs, batch = self._batch_norm(x, mask)
            mean, variance = batch.mean, batch.variance
        else:
            mean = self._read(self.moving_mean, x.dtype)
            variance = self._read(self.moving_variance, x.dtype)

        # 3. Update the moving statistics.
        updated = None
        if decision.update:
            updated = self._update_moving_statistics(batch, x.dtype)
            if not self._checked_fresh_statistics:  # (a Keras setattr: 20 us)
                self._checked_fresh_statistics = True  # it trains: no seed warning

        # 4. Normalize with the moving statistics.
        if batch is None:
            outputs = self._normalize_moving(x, mean, variance)
        if self.debugging:
            self._records.emit(decision, training, mean, variance, batch, updated)
        return _cast(outputs, self.compute_dtype)

    def get_config(self):
        base_config = super().get_config()
        config = {
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": initializers.serialize(
                self.moving_mean_initializer
            ),
            "moving_variance_initializer": initializers.serialize(
                self.moving_variance_initializer
            ),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": constraints.serialize(self.beta_constraint),
            "gamma_constraint": constraints.serialize(self.gamma_constraint),
            "synchronized": self.synchronized,
            "renorm": self.renorm,
            "renorm_clipping": self.renorm_clipping,
            "renorm_momentum": self.renorm_momentum,
        }
        config.update(options.extension_config(self))
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config):
        """The layer for `config`: this layer's, or a tf-keras (Keras 2)
        BatchNormalization's (see `keras_bn_ext.layers.tf_keras`), so that
        `keras.saving.load_model(path, custom_objects={"BatchNormalization":
        keras_bn_ext.BatchNormalization})` loads tf-keras `.h5` files."""
        if not tf_keras.is_tf_keras_config(config):
            return super().from_config(config)
        layer = super().from_config(tf_keras.to_config(config))
        layer._from_tf_keras = True
        return layer

    def set_weights(self, weights):
        """As Keras's, and weights in tf-keras's shapes fit too."""
        super().set_weights([
            tf_keras.fit_shape(value, variable.shape)
            for value, variable in zip(weights, self.weights)
        ] + list(weights[len(self.weights):]))
        self._note_host_statistics()

    def load_own_variables(self, store):
        # Weights saved in tf-keras's shapes (a layer made from a tf-keras
        # config, then saved) load into this layer's, and back.
        variables = self._trainable_variables + self._non_trainable_variables
        store = {key: store[key] for key in store.keys()}
        for i, variable in enumerate(variables):
            if str(i) in store:
                store[str(i)] = tf_keras.fit_shape(store[str(i)], variable.shape)
        super().load_own_variables(store)
        self._note_host_statistics()

    def _note_host_statistics(self):
        """After weights are set on the host: if the moving statistics are
        not their initial values, no seed warning is due. Keras's JAX
        predict/evaluate hide the values from the trace, where the check
        would otherwise be compiled in (and a host callback costs JAX its
        fast dispatch path on every later call)."""
        if self._never_updated.now() is False:
            self._checked_fresh_statistics = True

    # Debugging API -----------------------------------------------------------

    def add_debug_hook(self, fn: Callable[[StatsRecord], object]) -> HookHandle:
        """Calls `fn(record)` with a `StatsRecord` after every real call.

        Hooks are compiled in when a function is traced: to get records from
        a model that `fit`/`predict` already compiled, call
        `keras_bn_ext.debug.retrace(model)` (or use `debug.capture(model)`).

        Returns:
            A handle whose `.remove()` detaches the hook.
        """
        return registry.add_hook_to(self._hooks, fn)

    @property
    def debug_hooks(self):
        """The functions `add_debug_hook` attached and not yet removed, in
        the order added (a tuple: attach and detach through
        `add_debug_hook` and its handle)."""
        return tuple(self._hooks.values())

    def explain(self) -> str:
        """A text saying what each kind of call would use now, and why."""
        notes = [
            option.explain(value)
            for option, value in options.used_options(self)
            if option.explain
        ]
        return explain_layer(self, notes)

    # Private helpers ---------------------------------------------------------

    def _init_private_state(self):
        # Weights, set by `build`.
        self.gamma = None
        self.beta = None
        self.moving_mean = None
        self.moving_variance = None
        self.num_batches_tracked = None
        # Made from a tf-keras config (see `_build_as_tf_keras`).
        self._from_tf_keras = False
        self._variable_shape = None
        # Set by `build`.
        self._channel_axes = None
        self._reduction_axes = None
        self._param_shape = None
        # Debugging: this layer's hooks, its never-updated check (one warning,
        # shared by the seed check below and the records) and record builder.
        self._hooks = {}
        self._checked_fresh_statistics = False
        self._never_updated = NeverUpdatedCheck(self)
        self._records = RecordBuilder(self, self._never_updated)

    def _add_renorm_weights(self):
        # As Keras: renorm tracks the inference moving stddev (initialized
        # as the sqrt of the variance initializer) and two renorm averages.
        def stddev_initializer(shape, dtype=None):
            cloned = _clone_initializer(self.moving_variance_initializer)
            return ops.sqrt(cloned(shape, dtype=dtype))

        self.moving_stddev = self._statistic_weight(
            "moving_stddev", stddev_initializer
        )
        self.renorm_mean = self._statistic_weight(
            "renorm_mean", _clone_initializer(self.moving_mean_initializer)
        )
        self.renorm_stddev = self._statistic_weight(
            "renorm_stddev", stddev_initializer
        )

    def _statistic_weight(self, name, initializer):
        return self.add_weight(
            shape=self._variable_shape,
            name=name,
            initializer=initializer,
            trainable=False,
            autocast=False,
        )

    def _read(self, variable, dtype):
        """A weight's value as `dtype`, in the parameter shape."""
        value = _cast(variable, dtype)
        if self._variable_shape != self._param_shape:  # tf-keras's shapes
            value = backend_ops.reshape(value, self._param_shape)
        return value

    def _assign(self, variable, value):
        if self._variable_shape != self._param_shape:
            value = backend_ops.reshape(value, self._variable_shape)
        variable.assign(value)

    def _statistics_dtype(self, inputs):
        # BN is prone to overflow with float16/bfloat16 inputs, so statistics
        # are computed in float32 (integer inputs too), and in float64 for
        # float64 inputs (Keras's result_type gives float32 there on torch).
        if keras.backend.standardize_dtype(inputs.dtype) == "float64":
            return "float64"
        return "float32"

    def _broadcast_shape(self, x):
        return [
            x.shape[i] if i in self._channel_axes else 1
            for i in range(len(x.shape))
        ]

    def _batch_norm(self, x, mask):
        """`(outputs, BatchStatistics)`: `x` normalized with its own
        statistics (per virtual batch of `virtual_batch_size` samples)."""
        axes, param_shape = self._reduction_axes, self._param_shape
        channel_axes = self._channel_axes
        groups = None
        if self.virtual_batch_size:
            groups = ghost.group(
                x, mask, self.virtual_batch_size, self.virtual_batch_grouping,
                axes, channel_axes,
            )
            x, mask, axes = groups.x, groups.mask, groups.axes
            channel_axes = groups.channel_axes
            param_shape = (-1,) + tuple(param_shape)  # (G, ...) statistics
        gamma, beta = self._gamma_and_beta(x, channel_axes)
        reduce = None
        if self.synchronized and backend_ops.is_distributed():
            reduce = backend_ops.all_reduce_sum
        # A fully masked channel gets mean 0 and variance 0, as in Keras: its
        # outputs stay finite and its moving statistics untouched.
        if self.renorm:
            # Renorm's correction needs the statistics before normalizing;
            # with virtual batches, those of the whole batch (as tf-keras).
            moments = statistics.moments(x, axes, mask, reduce)
            whole = (moments.mean, moments.variance)
            if groups is not None:
                whole = ghost.whole_batch(moments, groups)
            gamma, beta = self._renorm_gamma_and_beta(*whole, gamma, beta)
            outputs = statistics.normalize_batch(
                x, moments, gamma, beta, self.epsilon
            )
        else:
            outputs, moments = statistics.batch_norm(
                x, axes, gamma, beta, self.epsilon, mask, reduce
            )
        batch = statistics.batch_statistics(
            moments, param_shape, self.skip_nonfinite_updates
        )
        if groups is not None:
            outputs = ghost.ungroup(outputs, groups)
            batch = batch._replace(group_sizes=groups.sizes)
        return outputs, batch

    def _gamma_and_beta(self, x, channel_axes):
        """`gamma` and `beta` shaped to broadcast against `x` (ones and zeros
        when `scale`/`center` are off, which the kernels need)."""
        shape = [x.shape[i] if i in channel_axes else 1 for i in range(len(x.shape))]
        if self.scale:
            gamma = backend_ops.reshape(_cast(self.gamma, x.dtype), shape)
        else:
            gamma = ops.ones(shape, x.dtype)
        if self.center:
            beta = backend_ops.reshape(_cast(self.beta, x.dtype), shape)
        else:
            beta = ops.zeros(shape, x.dtype)
        return gamma, beta

    def _renorm_gamma_and_beta(self, mean, variance, gamma, beta):
        # (x_hat * r + d) * gamma + beta == x_hat * (r * gamma) + (d * gamma + beta)
        dtype = variance.dtype
        shape = ops.shape(variance)
        renorm_mean = _cast(self.renorm_mean, dtype)
        renorm_stddev = _cast(self.renorm_stddev, dtype)
        if backend_ops.is_compiling():
            # torch.compile's partitioner (AOTAutograd) would rather
            # recompute r and d in the backward from the renorm variables
            # themselves than save them, but the update below assigns those
            # variables in place before the backward runs: it then used the
            # new values (wrong gradients), or failed ("modified by an
            # inplace operation") where a graph break left the update out of
            # the graph. It does not recompute a stack (cat is not on its
            # list of recomputable ops), so the backward reads this copy of
            # the values before the update.
            snapshot = ops.stack([renorm_mean, renorm_stddev])
            renorm_mean, renorm_stddev = snapshot[0], snapshot[1]
        r, d = statistics.renorm_corrections(
            mean, variance,
            backend_ops.reshape(renorm_mean, shape),
            backend_ops.reshape(renorm_stddev, shape),
            self.epsilon, self.renorm_clipping,
        )
        return r * gamma, d * gamma + beta

    def _update_moving_statistics(self, batch, dtype):
        """Assigns the new moving statistics where the batch is valid.

        Returns the moving mean and variance after the update and whether any
        channel was updated, for the debug record.
        """
        if self.virtual_batch_size:
            # The moving statistics follow the average of the virtual batches.
            mean, variance, count, valid = ghost.for_update(batch)
        else:
            mean, variance, count, valid = batch[:4]
        if self.unbiased_moving_variance:
            # PyTorch stores n/(n-1) times the biased variance; n=1 skips.
            valid = ops.logical_and(valid, count > 1)
            variance = variance * count / ops.maximum(count - 1.0, 1.0)

        step = None
        if self.num_batches_tracked is not None:
            step = ops.cast(self.num_batches_tracked, dtype) + 1.0
        weight = statistics.update_weight(self.momentum, self.debias, step)
        if self.renorm:
            new_values = self._renorm_updates(mean, variance, dtype)
        else:
            new_values = {
                "moving_mean": statistics.moving_average(
                    self._read(self.moving_mean, dtype), mean, self.momentum, weight
                ),
                "moving_variance": statistics.moving_average(
                    self._read(self.moving_variance, dtype), variance,
                    self.momentum, weight,
                ),
            }
        after = {}
        for name, value in new_values.items():
            variable = getattr(self, name)
            value = ops.where(valid, value, self._read(variable, dtype))
            self._assign(variable, value)
            after[name] = value
        any_valid = ops.any(valid)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.assign(
                self.num_batches_tracked + ops.cast(any_valid, "int32")
            )
        return {
            "moving_mean": after["moving_mean"],
            "moving_variance": after["moving_variance"],
            "updated": any_valid,
        }

    def _renorm_updates(self, mean, variance, dtype):
        stddev = ops.sqrt(variance + self.epsilon)
        rm = self.renorm_momentum
        m = self.momentum
        new_moving_stddev = self._read(self.moving_stddev, dtype) * m + stddev * (1.0 - m)
        return {
            "renorm_mean": self._read(self.renorm_mean, dtype) * rm + mean * (1.0 - rm),
            "renorm_stddev": self._read(self.renorm_stddev, dtype) * rm
            + stddev * (1.0 - rm),
            "moving_mean": self._read(self.moving_mean, dtype) * m + mean * (1.0 - m),
            "moving_stddev": new_moving_stddev,
            # ReLU in case rounding makes it slightly negative.
            "moving_variance": ops.relu(
                new_moving_stddev * new_moving_stddev - self.epsilon
            ),
        }

    def _normalize_moving(self, x, mean, variance):
        gamma = self._read(self.gamma, x.dtype) if self.scale else None
        beta = self._read(self.beta, x.dtype) if self.center else None
        shape = self._broadcast_shape(x)
        if shape[-len(self._param_shape):] == list(self._param_shape):
            shape = None  # channels last: the vectors broadcast as they are
        reshape = lambda t: t if t is None or shape is None else backend_ops.reshape(t, shape)  # noqa: E731
        return statistics.normalize_moving(
            x, reshape(mean), reshape(variance), reshape(gamma), reshape(beta),
            self.epsilon,
        )

    def _warn_if_fresh_statistics(self, decision):
        """Once per layer, on the first call (or trace) that normalizes with
        the moving statistics: warn if they were never updated (the seed
        question). One host read, once, and nothing compiled in; only where
        Keras's JAX trainer has moved the variables' values into the compiled
        function (predict/evaluate), a tiny on-device check that calls back
        only while the statistics are still fresh. While debugging, the
        records check every real execution instead."""
        if self._checked_fresh_statistics or decision.branch is not Branch.MOVING:
            return
        if self.debugging or backend_ops.is_shape_inference():
            return
        if backend_ops.is_compiling():
            # A host read breaks torch.compile's graph, and the broken graph
            # stays in dynamo's cache; eager calls and the records check.
            return
        self._checked_fresh_statistics = True
        fresh = self._never_updated.now()
        if fresh:
            self._never_updated.warn()
        elif fresh is None and backend_ops.value_moved_to_trainer(self.moving_mean):
            if self._never_updated.stored() is False:
                return  # the stored values were updated: no check compiled in
            predicate = self._never_updated.on_device()
            if predicate is not None:
                backend_ops.call_on_host_if(predicate, self._never_updated.warn)

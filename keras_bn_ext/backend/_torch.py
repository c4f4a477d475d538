"""PyTorch: native batch-norm kernels, the custom gradient as an
`autograd.Function`, and direct host callbacks."""

import warnings

import torch
import torch.nn.functional as F

from keras_bn_ext.backend import _common
from keras_bn_ext.backend._common import to_numpy


class _CustomVJP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, forward, backward, *args):
        outputs, residuals = forward(*args)
        ctx.forward, ctx.backward = forward, backward
        ctx.num_args = len(args)
        ctx.save_for_backward(*args, *residuals)
        return outputs

    @staticmethod
    def backward(ctx, *cotangents):
        saved = ctx.saved_tensors
        args, residuals = saved[: ctx.num_args], saved[ctx.num_args :]
        if torch.is_grad_enabled():
            # create_graph=True (second order): the residuals were computed
            # without a graph, so differentiate the forward formula itself.
            grads = _autodiff(ctx.forward, args, cotangents)
        else:
            grads = ctx.backward(residuals, cotangents)
        return (None, None) + tuple(grads)


def _autodiff(forward, args, cotangents):
    differentiable = [a for a in args if a.requires_grad]
    with torch.enable_grad():
        outputs = forward(*args)[0]
        pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
        grads = iter(torch.autograd.grad(
            [o for o, _ in pairs], differentiable, [c for _, c in pairs],
            create_graph=True, allow_unused=True,
        ))
    return [next(grads) if a.requires_grad else None for a in args]


def custom_vjp(forward, backward):
    def f(*args):
        return _CustomVJP.apply(forward, backward, *args)

    return f


# Past this many values per channel, the 2-D and channels-last kernels' sums
# (plain float32, row after row) lose the variance even on shifted values:
# 1.2e-5 relative at 65,536 values with mean 1e6 and std 1, 1.5e-3 at 1M.
_CHANNELS_LAST_MAX_COUNT = 65536


def native_batch_norm(x, axes, gamma, beta, epsilon):
    """Outputs, batch mean and biased variance (keepdims) from torch's native
    training kernel (one call forward, one fused backward), for a single
    channel axis; None for fewer than 2 values per channel or other dtypes.

    torch.var_mean over non-innermost axes is a scalar Welford loop (13-16x
    a plain sum on CPU) and autograd through the portable formula adds
    several full-size passes.
    """
    kept = [i for i in range(x.ndim) if i not in axes]
    if len(kept) != 1 or x.dtype not in (torch.float32, torch.float64):
        return None
    (axis,) = kept
    channels = x.shape[axis]
    count = x.numel() // max(channels, 1)
    if count < 2:
        return None
    if axis == x.ndim - 1 and count > _CHANNELS_LAST_MAX_COUNT:
        return None  # the portable kernel's sums stay accurate (cascade sums)
    # The 2-D and channels-last kernels sum in plain float32 and fold the
    # normalization into x * a + b: for |mean| >> std that loses the
    # variance. One element per channel subtracted first makes the values
    # O(std); normalization and its gradient are shift-invariant.
    index = tuple(slice(0, 1) if i != axis else slice(None) for i in range(x.ndim))
    shift = x[index].detach()
    centered = x - shift
    if axis == x.ndim - 1 and x.ndim > 2:
        # (N, C, rows, 1) with channels-last strides, a free view: torch's
        # channels-last kernel, 1.3-1.4x faster than its 2-D one on (rows, C).
        view = centered.reshape(x.shape[0], -1, 1, channels).permute(0, 3, 1, 2)
    elif axis == x.ndim - 1:
        view = centered  # (N, C)
    else:
        view = centered.movedim(axis, 1)  # (N, C, ...): a view
    # Fresh buffers and momentum=1: the kernel writes this batch's mean and
    # unbiased variance into them.
    mean = torch.zeros(channels, dtype=x.dtype, device=x.device)
    unbiased = torch.ones(channels, dtype=x.dtype, device=x.device)
    out = F.batch_norm(
        view, mean, unbiased, gamma.reshape(-1), beta.reshape(-1), True, 1.0,
        epsilon,
    )
    if axis == x.ndim - 1:
        out = out.permute(0, 2, 3, 1).reshape(x.shape) if x.ndim > 2 else out
    else:
        out = out.movedim(1, axis)
    # The kernel writes the statistics into buffers, outside autograd: they
    # carry no gradient (the layer uses them only for the moving update).
    shape = shift.shape
    variance = unbiased * ((count - 1) / count)
    return out, mean.reshape(shape) + shift, variance.reshape(shape)


def multiply_add(x, scale, offset):
    # `x` is a temporary of the caller's: without autograd, scale and shift
    # it in place (no second full-size allocation).
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad
                                    or offset.requires_grad):
        return x * scale + offset
    if _varies_along_last_axis_only(scale, x) and offset.shape == scale.shape:
        # Channels last: one fused pass, 1.3x faster than mul_ then add_ on
        # CPU (but 1.6x slower when the vectors broadcast along inner axes).
        return torch.addcmul(offset, x, scale, out=x)
    return x.mul_(scale).add_(offset)


def _varies_along_last_axis_only(vector, x):
    shape = vector.shape
    return (
        vector.dtype == x.dtype
        and len(shape) >= 1
        and shape[-1] == x.shape[-1]
        and all(d == 1 for d in shape[:-1])
    )


def reshape(x, shape):
    # keras.ops.reshape costs ~30 us a call in eager torch (it validates the
    # shape and looks for symbolic tensors in it); `call` reshapes several
    # per-channel vectors every step.
    return torch.reshape(x, tuple(shape))


def host_callback(fn, payload):
    # Keras runs call() once on meta/dummy tensors to infer output shapes:
    # that is not a real execution, so it makes no record.
    if _common.is_shape_inference():
        return
    _run_on_host(fn, payload)


@torch.compiler.disable
def _run_on_host(fn, payload):
    # Under torch.compile (jit_compile=True) this is a graph break: the
    # callback runs eagerly at every real execution, as in eager mode.
    # A copy: a CPU tensor's .numpy() shares its memory, and a record of the
    # moving statistics must not change when the variables are next assigned.
    fn(**to_numpy(payload, lambda t: t.detach().cpu().numpy().copy()))


def host_value(variable):
    try:
        return variable._value.detach().cpu().numpy()
    except Exception:
        return None


def is_distributed():
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def replica_id():
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else None


def all_reduce_sum(tensors):
    """One collective for the whole list (the statistics are small vectors),
    differentiable where autograd needs it (renorm's statistics)."""
    if not is_distributed():
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if torch.is_grad_enabled() and flat.requires_grad:
        with warnings.catch_warnings():
            # Deprecated for a private successor; still the differentiable one.
            warnings.simplefilter("ignore", FutureWarning)
            from torch.distributed.nn.functional import all_reduce

            flat = all_reduce(flat)
    else:
        import torch.distributed as dist

        flat = flat.clone()
        dist.all_reduce(flat)
    sizes = [t.numel() for t in tensors]
    return [part.reshape(t.shape) for part, t in zip(flat.split(sizes), tensors)]


def no_grad():
    return torch.no_grad()


def is_compiling():
    return torch.compiler.is_compiling()

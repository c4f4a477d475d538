"""PyTorch: native batch-norm kernels and direct host callbacks."""

import torch

from keras_bn_ext.backend._common import is_shape_inference
from keras_bn_ext.backend._common import to_numpy


def host_callback(fn, payload):
    # Keras runs call() once on meta/dummy tensors to infer output shapes:
    # that is not a real execution, so it makes no record.
    if is_shape_inference():
        return
    _run_on_host(fn, payload)


@torch.compiler.disable
def _run_on_host(fn, payload):
    # Under torch.compile (jit_compile=True) this is a graph break: the
    # callback runs eagerly at every real execution, as in eager mode.
    fn(**to_numpy(payload, lambda t: t.detach().cpu().numpy()))


def host_value(variable):
    try:
        return variable._value.detach().cpu().numpy()
    except Exception:
        return None


def all_reduce_sum(tensors):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tensors
    from torch.distributed.nn.functional import all_reduce

    return [all_reduce(t) for t in tensors]


def fused_batch_norm_training(x, axis, gamma, beta, epsilon):
    """Outputs, batch mean and biased variance from torch's native training
    kernel (one call forward, one fused backward), for any single channel
    axis; None for fewer than 2 values per channel or other dtypes.

    torch.var_mean over non-innermost axes is a scalar Welford loop (13-16x
    a plain sum on CPU) and autograd through the portable formula adds
    several full-size passes.
    """
    import torch.nn.functional as F

    channels = x.shape[axis]
    count = x.numel() // max(channels, 1)
    if count < 2 or x.dtype not in (torch.float32, torch.float64):
        return None
    # The 2-D and channels-last kernels sum in plain float32 and fold the
    # normalization into x * a + b: for |mean| >> std that loses the
    # variance. One element per channel subtracted first makes the values
    # O(std); normalization and its gradient are shift-invariant.
    index = tuple(slice(0, 1) if i != axis else slice(None) for i in range(x.ndim))
    shift = x[index].detach()
    centered = x - shift
    if axis == x.ndim - 1:
        view = centered.reshape(-1, channels)  # (rows, C): free, contiguous
    else:
        view = centered.movedim(axis, 1)  # (N, C, ...): a view
    # Fresh buffers and momentum=1: the kernel writes this batch's mean and
    # unbiased variance into them.
    mean = torch.zeros(channels, dtype=x.dtype, device=x.device)
    unbiased = torch.ones(channels, dtype=x.dtype, device=x.device)
    out = F.batch_norm(view, mean, unbiased, gamma, beta, True, 1.0, epsilon)
    out = out.reshape(x.shape) if axis == x.ndim - 1 else out.movedim(1, axis)
    return out, mean + shift.reshape(-1), unbiased * ((count - 1) / count)


def fused_batch_norm_inference(x, channel_axes, mean, variance, gamma, beta,
                               epsilon):
    """PyTorch's native inference kernel (one fused pass) where the layout
    allows it without a copy; else None."""
    import torch.nn.functional as F

    if len(channel_axes) != 1 or x.ndim < 2:
        return None
    axis = channel_axes[0]
    if axis == 1:
        view = x
    elif axis == x.ndim - 1 and x.is_contiguous():
        view = x.reshape(-1, x.shape[-1])  # (rows, C): free for a contiguous x
    else:
        return None
    out = F.batch_norm(view, mean, variance, gamma, beta, False, 0.0, epsilon)
    return out.reshape(x.shape)


def is_compiling():
    return torch.compiler.is_compiling()


def multiply_add(x, scale, offset):
    # One fused kernel instead of a multiply and an add over the full tensor.
    return torch.addcmul(offset, x, scale)

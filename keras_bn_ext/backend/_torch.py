"""PyTorch: fused stable moments (`torch.var_mean`) and direct callbacks."""

import torch

from keras_bn_ext.backend._common import is_shape_inference
from keras_bn_ext.backend._common import to_numpy


def moments(x, axes):
    # Keras's torch backend computes E[x^2] - E[x]^2, which goes negative for
    # large-mean float32 inputs. torch.var_mean is one fused, stable pass.
    if x.numel() == 0:
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)]
        zeros = torch.zeros(shape, dtype=x.dtype, device=x.device)
        return zeros, zeros
    variance, mean = torch.var_mean(x, dim=axes, correction=0, keepdim=True)
    return mean, variance


def callbacks_supported():
    return True, ""


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


def flush():
    pass


def fused_batch_norm(x, channel_axes, mean, variance, gamma, beta, epsilon,
                     batch_statistics):
    """PyTorch's native batch-norm kernel (one fused pass, fused backward),
    where the layout lets it run without a copy; else None.

    batch_statistics=True: normalize with this batch's statistics, which the
    kernel recomputes (stably) and differentiates natively; `mean` and
    `variance` are then only used for the moving update and the records.
    Otherwise `mean`/`variance` are constants (the moving statistics).
    """
    import torch.nn.functional as F

    if len(channel_axes) != 1 or x.ndim < 2:
        return None
    axis = channel_axes[0]
    if batch_statistics:
        # Only the channels-first kernel for rank >= 3 normalizes as
        # (x - mean) * invstd; the 2-D and channels-last kernels fold it into
        # x * a + b, which loses ~5 ulp of the mean for |mean| >> std.
        if axis != 1 or x.ndim < 3:
            return None
        return F.batch_norm(x, None, None, gamma, beta, True, 0.0, epsilon)
    if axis == 1:
        view = x
    elif axis == x.ndim - 1 and x.is_contiguous():
        view = x.reshape(-1, x.shape[-1])  # (rows, C): free for a contiguous x
    else:
        return None
    out = F.batch_norm(view, mean, variance, gamma, beta, False, 0.0, epsilon)
    return out.reshape(x.shape)


def multiply_add(x, scale, offset):
    # One fused kernel instead of a multiply and an add over the full tensor.
    return torch.addcmul(offset, x, scale)

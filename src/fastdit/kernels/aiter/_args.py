"""Availability and argument predicates of the aiter provider (imports nothing heavy)."""

from __future__ import annotations

import numbers

import torch

from fastdit.ops._checks import FLOAT_DTYPES as ROPE_DTYPES

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _aiter_has(*names: str) -> bool:
    """ROCm, ``import aiter`` works (an ImportError reads as "no" in the registry) and this
    aiter has the functions (older releases lack ``rope_cached_2c_fwd_inplace``)."""
    from fastdit.platforms import current_platform

    if current_platform().name != "rocm":
        return False
    import aiter

    return all(callable(getattr(aiter, name, None)) for name in names)


def rms_norm_supported() -> bool:
    return _aiter_has("rmsnorm2d_fwd", "rmsnorm2d_fwd_with_add")


def rope_qk_supported() -> bool:
    return _aiter_has("rope_cached_2c_fwd_inplace")


def _on_gpu(*values) -> bool:
    # torch exposes HIP devices as "cuda"
    return all(v.device.type == "cuda" for v in values if isinstance(v, torch.Tensor))


def rms_norm_args(x, weight, eps=1e-6, *, residual=None, variance_size=None) -> bool:
    """fp16/bf16 x with a weight of the same dtype (aiter asserts it), no variance_size; a
    residual of x's dtype and shape."""
    if not (isinstance(x, torch.Tensor) and x.dtype in HALF_DTYPES and x.dim() >= 1
            and x.shape[-1] > 0 and x.numel() > 0):
        return False
    if variance_size is not None and variance_size != x.shape[-1]:
        return False
    if not (isinstance(weight, torch.Tensor) and weight.dtype == x.dtype
            and tuple(weight.shape) == (x.shape[-1],)):
        return False
    if not isinstance(eps, numbers.Real):
        return False
    if residual is not None and not (isinstance(residual, torch.Tensor)
                                     and residual.dtype == x.dtype and residual.shape == x.shape):
        return False
    return _on_gpu(x, weight, residual)


def rope_qk_args(q, k, cos, sin, *, positions=None, interleaved=True) -> bool:
    """q and k of one dtype, ``[..., T, H, D]`` with at most one leading dim that merges."""
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.dtype == k.dtype
            and q.dtype in ROPE_DTYPES and 3 <= q.dim() <= 4 and q.dim() == k.dim()
            and q.shape[:-2] == k.shape[:-2] and q.shape[-1] == k.shape[-1]
            and q.shape[-1] % 2 == 0 and q.numel() > 0 and k.numel() > 0):
        return False
    if not (isinstance(cos, torch.Tensor) and isinstance(sin, torch.Tensor)
            and cos.dtype in ROPE_DTYPES and sin.dtype == cos.dtype and cos.dim() == 2
            and cos.shape == sin.shape and cos.shape[1] == q.shape[-1] // 2):
        return False
    tokens = q.shape[-3]
    if positions is None:
        if cos.shape[0] != tokens:
            return False
    elif not (isinstance(positions, torch.Tensor) and positions.dtype in (torch.int32, torch.int64)
              and positions.shape == (tokens,)):
        return False
    return _on_gpu(q, k, cos, sin, positions)

"""``attention_lse`` on GPU kernels that return the log-sum-exp (see :mod:`fastdit.ops.attention_lse`).

torch's fused SDPA kernels (signatures as of torch 2.9-2.13, layout ``(B, H, L, D)``)::

    _scaled_dot_product_cudnn_attention(q, k, v, attn_bias, compute_log_sumexp, dropout_p=0.,
        is_causal=False, return_debug_mask=False, *, scale=None) -> (out, lse (B, H, Lq, 1), ...)
    _scaled_dot_product_flash_attention(q, k, v, dropout_p=0., is_causal=False,
        return_debug_mask=False, *, scale=None) -> (out, lse (B, H, Lq), ...)
    _scaled_dot_product_efficient_attention(q, k, v, attn_bias, compute_log_sumexp,
        dropout_p=0., is_causal=False, *, scale=None) -> (out, lse (B, H, ceil(Lq/32)*32), ...)

(cuDNN's log-sum-exp is ``(B, H, Lq)`` before torch 2.9; the efficient kernel pads it to a
multiple of 32 on CUDA, not on ROCm.) All are natural logarithms in fp32.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch

from fastdit.config import get_config
from fastdit.ops.attention_lse import attention_lse_native

log = logging.getLogger("fastdit.ops")
_HALF = (torch.float16, torch.bfloat16)


def lse_backend(q: torch.Tensor) -> str:
    """The SDPA kernel used for this call: cudnn, flash, efficient or native.

    ``FASTDIT_ATTENTION_BACKEND`` forces one (``math`` means native). Otherwise, on CUDA: cuDNN on
    sm90+ for fp16/bf16 with head dim <= 128 (what torch's own SDPA picks for Wan on Hopper),
    then flash (fp16/bf16, head dim <= 256 and a multiple of 8), then efficient; on ROCm flash,
    then efficient. On the CPU: native.
    """
    if q.device.type != "cuda":
        return "native"
    forced = get_config().kernel.attention_backend
    if forced != "auto":
        return "native" if forced == "math" else forced
    half, dim = q.dtype in _HALF, q.shape[-1]
    rocm = getattr(torch.version, "hip", None) is not None
    if (not rocm and half and dim <= 128 and torch.backends.cuda.cudnn_sdp_enabled()
            and torch.cuda.get_device_capability(q.device) >= (9, 0)):
        return "cudnn"
    if half and dim <= 256 and dim % 8 == 0 and torch.backends.cuda.flash_sdp_enabled():
        return "flash"
    if torch.backends.cuda.mem_efficient_sdp_enabled():
        return "efficient"
    return "native"


def attention_lse_sdpa(q, k, v, *, scale=None):
    """``(out [B, Lq, H, D], lse [B, H, Lq] fp32)`` through torch's fused SDPA kernels."""
    backend = lse_backend(q)
    _log_once(backend)
    if backend == "native":
        return attention_lse_native(q, k, v, scale=scale)
    batch, length, heads, _ = q.shape
    groups = heads // k.shape[2]
    if groups > 1:  # the aten kernels take equal head counts
        k, v = (t.repeat_interleave(groups, dim=2) for t in (k, v))
    q_, k_, v_ = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # (B, H, L, D)
    aten = torch.ops.aten
    if backend == "cudnn":
        out, lse = aten._scaled_dot_product_cudnn_attention(q_, k_, v_, None, True, 0.0, False, False,
                                                            scale=scale)[:2]
    elif backend == "flash":
        out, lse = aten._scaled_dot_product_flash_attention(q_, k_, v_, 0.0, False, False, scale=scale)[:2]
    elif backend == "efficient":
        out, lse = aten._scaled_dot_product_efficient_attention(q_, k_, v_, None, True, 0.0, False,
                                                                scale=scale)[:2]
    else:
        raise ValueError(f"attention_lse: unknown SDPA backend {backend!r}")
    lse = lse.reshape(batch, heads, -1)[..., :length].float()  # (B, H, Lq)
    return out.transpose(1, 2), lse  # (B, Lq, H, D)


@functools.cache
def _flash_takes_return_attn_probs(fn) -> bool:
    try:
        return "return_attn_probs" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def attention_lse_flash_attn(q, k, v, *, scale=None):
    """flash-attn (``[B, L, H, D]`` natively): FA2 with ``return_attn_probs=True`` returns
    ``(out, lse, S)``; FA3 returns ``(out, lse)``."""
    from fastdit.kernels.attention.libraries import _flash_module

    fn = _flash_module().flash_attn_func
    kwargs = {"softmax_scale": scale, "causal": False}
    if _flash_takes_return_attn_probs(fn):
        kwargs["return_attn_probs"] = True
    result = fn(q, k, v, **kwargs)
    if not isinstance(result, tuple) or len(result) < 2:
        raise RuntimeError("attention_lse: this flash-attn build returned no log-sum-exp")
    out, lse = result[0], result[1]
    return out, lse.float()


@functools.cache
def _log_once(backend: str) -> None:
    log.info("attention_lse: SDPA kernel %s", backend)

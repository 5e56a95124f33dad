"""``attention`` through ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastdit.config import EngineConfig

log = logging.getLogger("fastdit.ops")

_BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


@functools.lru_cache(maxsize=None)
def forced_backend(choice: str):
    """The one SDPA backend a forced choice allows (None for "auto")."""
    if choice == "auto":
        return None
    log.info("attention: SDPA backend forced to %s", choice)
    return _BACKENDS[choice]


def specialize(config: EngineConfig, q, *args, **kwargs):
    """The SDPA function for calls like this one under ``config``: the backend that
    ``attention_backend`` (``FASTDIT_ATTENTION_BACKEND``) forces is bound in once per dispatch
    plan, so no call reads the configuration. On the CPU torch's own choice always runs."""
    backend = forced_backend(config.kernel.attention_backend)
    if backend is None or q.device.type == "cpu":
        return attention_sdpa
    return functools.partial(attention_sdpa, backend=backend)


def attention_sdpa(q, k, v, *, causal=False, scale=None, attn_mask=None, backend=None):
    """SDPA on ``[B, L, H, D]`` tensors; ``backend`` (an ``SDPBackend``) forces one kernel.

    None lets torch choose: on an H100 with torch 2.11 its default order already picks cuDNN
    for Wan's shapes (581 TFLOP/s at L=32760 vs flash 368). No priority order is set per call:
    ``sdpa_kernel(..., set_priority=True)`` leaves torch's order changed after it exits (the
    Hopper preference for cuDNN is lost), which slowed every later SDPA call in the process
    (measured: diffusers' forward 0.65 s -> 0.88 s after one fastdit forward). A forced
    backend only toggles the enable flags, which ``sdpa_kernel`` restores exactly.
    """
    q_, k_, v_ = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    gqa = q_.shape[1] != k_.shape[1]
    lq, lk = q.shape[1], k.shape[1]
    is_causal = causal and lq > 1
    if is_causal and lq != lk:
        # the op's causal mask is aligned to the bottom right (key j <= i + Lk - Lq, as
        # flash-attn does); SDPA's is_causal aligns it to the top left: pass the mask instead
        attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        is_causal = False
    if backend is None:
        out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=attn_mask, is_causal=is_causal,
                                             scale=scale, enable_gqa=gqa)
    else:
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=attn_mask,
                                                 is_causal=is_causal, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)  # (B, L, H, D)

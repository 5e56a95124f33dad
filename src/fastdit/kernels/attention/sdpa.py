"""``attention`` through ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastdit.config import get_config

log = logging.getLogger("fastdit.ops")

_BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
# cuDNN measured fastest on an H100 (581 TFLOP/s at L=32760 vs flash 368, efficient 179).
_AUTO_ORDER = ("cudnn", "flash", "efficient", "math")


@functools.lru_cache(maxsize=None)
def backend_list(choice: str) -> tuple:
    """SDPA backends to allow for ``choice`` ("auto" or one name), in priority order."""
    if choice == "auto":
        return tuple(_BACKENDS[name] for name in _AUTO_ORDER)
    log.info("attention: SDPA backend forced to %s", choice)
    return (_BACKENDS[choice],)


def attention_sdpa(q, k, v, *, causal=False, scale=None):
    backends = backend_list(get_config().kernel.attention_backend)
    q_, k_, v_ = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    gqa = q_.shape[1] != k_.shape[1]
    if q.device.type == "cpu":  # the CPU has math and flash; let torch choose
        out = F.scaled_dot_product_attention(q_, k_, v_, is_causal=causal and q.shape[1] > 1,
                                             scale=scale, enable_gqa=gqa)
    else:
        with sdpa_kernel(list(backends), set_priority=True):
            out = F.scaled_dot_product_attention(q_, k_, v_, is_causal=causal and q.shape[1] > 1,
                                                 scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)  # (B, L, H, D)

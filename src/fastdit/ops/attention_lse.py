"""``attention_lse``: attention that also returns the log-sum-exp of its scores, the quantity
Ring attention needs to merge the partial results of key chunks (online softmax).

For each query ``i`` and head ``h``::

    s_ij = scale * q_i . k_j
    lse_i = log(sum_j exp(s_ij))
    out_i = sum_j exp(s_ij - lse_i) v_j

Two partial results over disjoint key sets A and B merge exactly:
``lse = logaddexp(lse_A, lse_B)``, ``out = exp(lse_A - lse) out_A + exp(lse_B - lse) out_B``
(:func:`merge_partial`).

The implementation follows the provider the :func:`fastdit.ops.attention` op picks for the same
call, so Ulysses and Ring use the kernel the user chose:

============  ==============================================================================
``native``    the plain-torch specification below (fp32)
``sdpa``      on CUDA/ROCm torch's fused kernels, which all return the log-sum-exp:
              ``_scaled_dot_product_cudnn_attention`` (cuDNN, NVIDIA sm80+; chosen first on
              Hopper), ``_scaled_dot_product_flash_attention`` (flash; fp16/bf16,
              head dim <= 256), ``_scaled_dot_product_efficient_attention`` (any float dtype);
              ``FASTDIT_ATTENTION_BACKEND`` forces one. On the CPU: the native specification.
``flash_attn`` the flash-attn library (FA2 ``return_attn_probs=True``; FA3 returns it)
``sage``      cannot: SageAttention returns no log-sum-exp (a :class:`ProviderError` says so;
              use Ulysses, which runs any provider, or pick sdpa/flash_attn for attention)
============  ==============================================================================
"""

from __future__ import annotations

import functools
import importlib
import logging

import torch

from fastdit.errors import ProviderError
from fastdit.ops import _checks as C
from fastdit.ops.attention import check_qkv, scores_fp32

log = logging.getLogger("fastdit.ops")

#: attention provider -> the implementation of attention_lse that goes with it
LSE_IMPLEMENTATIONS = {
    "native": "fastdit.ops.attention_lse:attention_lse_native",
    "sdpa": "fastdit.kernels.attention.lse:attention_lse_sdpa",
    "flash_attn": "fastdit.kernels.attention.lse:attention_lse_flash_attn",
}
_logged: set[str] = set()


def attention_lse_native(q, k, v, *, scale=None):
    """Specification: ``(softmax(q k^T * scale) v, logsumexp(q k^T * scale))`` in fp32.

    ``q [B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, Hk, D]`` (``H % Hk == 0``); returns
    ``out [B, Lq, H, D]`` in q's dtype and ``lse [B, H, Lq]`` fp32.
    """
    scores, v32 = scores_fp32(q, k, v, scale)  # (B, H, Lq, Lk), (B, H, Lk, D)
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, Lq)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v32)  # (B, H, Lq, D)
    return out.transpose(1, 2).to(q.dtype), lse


def attention_lse(q, k, v, *, scale=None):
    """Attention and its log-sum-exp: ``(out [B, Lq, H, D] in q's dtype, lse [B, H, Lq] fp32)``.

    Layout and checks as :func:`fastdit.ops.attention` (no mask, not causal; ``Lk >= 1``).
    The implementation is the one that matches the attention provider chosen for this call
    (table in the module docstring); a provider without a log-sum-exp raises
    :class:`fastdit.errors.ProviderError`.
    """
    from fastdit.ops.registry import resolve

    op = "attention_lse"
    check_qkv(op, q, k, v)
    if k.shape[1] < 1:
        raise C.fail(op, "need k, v [B, Lk >= 1, Hk, D]", k=k, v=v)
    name = resolve("attention", q, k, v, causal=False, scale=scale, attn_mask=None).name
    impl = LSE_IMPLEMENTATIONS.get(name)
    if impl is None:
        raise ProviderError(
            f"attention provider {name!r} does not return the log-sum-exp that Ring attention "
            f"merges partial results with, so it cannot be used with ring > 1; providers that "
            f"can: {', '.join(LSE_IMPLEMENTATIONS)} (FASTDIT_OP_PROVIDERS=attention=sdpa), or use "
            f"Ulysses only, which works with every provider")
    if name not in _logged:
        _logged.add(name)
        log.info("op attention_lse -> %s (follows the attention provider)", name)
    return _function(impl)(q, k, v, scale=scale)


@functools.cache
def _function(impl: str):
    module_name, _, attr = impl.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@torch.no_grad()
def merge_partial(out: torch.Tensor | None, lse: torch.Tensor | None, part: torch.Tensor,
                  part_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax merge of two partial attentions over disjoint keys, in fp32.

    ``out``/``part`` ``[B, L, H, D]``, ``lse``/``part_lse`` ``[B, H, L]``; ``out=None`` starts
    the accumulation. Returns ``(out fp32, lse fp32)``::

        lse' = logaddexp(lse, part_lse)
        out' = exp(lse - lse') * out + exp(part_lse - lse') * part
    """
    part, part_lse = part.float(), part_lse.float()
    if out is None:
        return part, part_lse
    merged = torch.logaddexp(lse, part_lse)  # (B, H, L)
    w_old = torch.exp(lse - merged).transpose(1, 2).unsqueeze(-1)  # (B, L, H, 1)
    w_new = torch.exp(part_lse - merged).transpose(1, 2).unsqueeze(-1)
    return out * w_old + part * w_new, merged

"""``attention``: the single choke point for every attention call in fastdit."""

from __future__ import annotations

import math

import torch

from fastdit.ops import _checks as C
from fastdit.ops.library import LibraryOp, compiling
from fastdit.ops.registry import define_op, new_plan, plans
from fastdit.ops.registry import signature as sig


def scores_fp32(q, k, v, scale):
    """``(q k^T * scale, v)`` in fp32, head-major: scores ``(B, Hq, Lq, Lk)``, v ``(B, Hq, Lk,
    D)`` (grouped k/v heads repeated); ``scale`` None is ``1/sqrt(D)``. Shared by the specs."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q32, k32, v32 = (t.float().transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    groups = q32.shape[1] // k32.shape[1]
    if groups > 1:
        k32 = k32.repeat_interleave(groups, dim=1)
        v32 = v32.repeat_interleave(groups, dim=1)
    return torch.matmul(q32, k32.transpose(-1, -2)) * scale, v32


def attention_native(q, k, v, *, causal=False, scale=None, attn_mask=None):
    """Specification: ``softmax(q k^T * scale [+ mask]) v`` in fp32, per head."""
    scores, v32 = scores_fp32(q, k, v, scale)  # (B, H, Lq, Lk), (B, H, Lk, D)
    if causal:
        lq, lk = scores.shape[-2:]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
        scores = scores.masked_fill(~mask, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    out = torch.matmul(scores.softmax(dim=-1), v32)  # (B, H, Lq, D)
    return out.transpose(1, 2).to(q.dtype)


def check_qkv(op, q, k, v) -> None:
    """The layout checks of the attention ops: ``[B, L, H, D]``, grouped heads, one dtype."""
    for name, value in (("q", q), ("k", k), ("v", v)):
        C.check_tensor(op, name, value, min_dim=4)
    C.check_same_device(op, q=q, k=k, v=v)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise C.fail(op, "q, k, v must be [B, L, H, D]", q=q, k=k, v=v)
    if k.shape[:3] != v.shape[:3]:
        raise C.fail(op, "k and v must agree in B, L and H", k=k, v=v)
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise C.fail(op, "q and k must agree in B and D", q=q, k=k)
    if q.shape[2] % k.shape[2]:
        raise C.fail(op, f"Hq={q.shape[2]} is not a multiple of Hk={k.shape[2]}", q=q, k=k)
    if not (q.dtype == k.dtype == v.dtype):
        raise C.fail(op, "q, k and v must share a dtype", q=q, k=k, v=v)


def _check_attention(q, k, v, *, causal=False, scale=None, attn_mask=None) -> None:
    op = "attention"
    check_qkv(op, q, k, v)
    if attn_mask is not None:
        C.check_tensor(op, "attn_mask", attn_mask, dtypes=(torch.bool,) + C.FLOAT_DTYPES)
        C.check_same_device(op, q=q, attn_mask=attn_mask)
        try:
            torch.broadcast_shapes(attn_mask.shape, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
        except RuntimeError:
            raise C.fail(op, "attn_mask does not broadcast to [B, Hq, Lq, Lk]", q=q, k=k,
                         attn_mask=attn_mask) from None
        if causal:
            raise C.fail(op, "give causal or attn_mask, not both")
    if scale is not None and not C.is_number(scale):
        raise C.fail(op, f"scale must be a number or None, got {C.describe(scale)}")


def attention(q, k, v, *, causal=False, scale=None, attn_mask=None):
    """Scaled dot-product attention: ``out = softmax(q k^T * scale) v``.

    Layout ``[B, L, H, D]``: ``q [B, Lq, Hq, D]``, ``k``/``v`` ``[B, Lk, Hk, D]`` with
    ``Hq % Hk == 0`` (grouped-query heads). ``scale`` defaults to ``1/sqrt(D)``; ``causal``
    masks key ``j > i + Lk - Lq``; ``attn_mask`` broadcasts to ``[B, Hq, Lq, Lk]`` (bool: True
    keeps a key; float: added to the scores). Returns ``[B, Lq, Hq, D]`` in q's dtype. The provider is
    chosen per platform (SDPA, whose own order picks cuDNN on an H100; flash-attn or
    SageAttention when configured); ``FASTDIT_ATTENTION_BACKEND`` forces an SDPA backend.
    """
    if compiling():
        return _LIB_ATTENTION(q, k, v, causal, scale, attn_mask)
    return _plan_attention(q, k, v, causal, scale, attn_mask).fn(
        q, k, v, causal=causal, scale=scale, attn_mask=attn_mask)


def _plan_attention(q, k, v, causal, scale, attn_mask):
    key = (sig(q), sig(k), sig(v), causal, sig(scale), sig(attn_mask))
    try:
        return plans("attention")[key]
    except (KeyError, TypeError):
        kwargs = {"causal": causal, "scale": scale, "attn_mask": attn_mask}
        _check_attention(q, k, v, **kwargs)
        return new_plan("attention", key, (q, k, v), kwargs)


define_op("attention", attention, _plan_attention)

_LIB_ATTENTION = LibraryOp(
    "attention", attention,
    (("q", "Tensor"), ("k", "Tensor"), ("v", "Tensor"), ("causal", "bool"), ("scale", "float?"),
     ("attn_mask", "Tensor?")),
    "Tensor", _check_attention, attention_native)

"""A block-by-block replay, in torch, of the 8-bit attention kernel's online softmax: the
kernel's logic (tail masking, running maximum, the 448 folded into the exponent, the rounding
of P against the running maximum, two-level accumulation, V's two terms and its mean added
back) made explicit, so
that the kernel can be checked to fp32 rounding rather than to the rounding of P."""

from __future__ import annotations

import math

import torch

from fastdit.ops.attention_int8 import quantize_qkv_native
from fastdit.quant.formulas import FP8_DTYPE

LOG2E = 1.4426950408889634


def replay(q, k, v, block_n: int, scale: float | None = None, v_split: bool = False):
    """``[B, Lq, Hq, D]`` in q's dtype: the kernel's computation with key blocks of ``block_n``."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q_i8, sq, k_i8, sk, v_hi, v_lo, sv, v_mean = quantize_qkv_native(q, k, v, v_split)
    v32 = v_hi.float() if v_lo is None else v_hi.float() + v_lo.float()
    batch, lq, heads, dim = q.shape
    groups, lk = heads // k.shape[2], k.shape[1]
    out = torch.empty((batch, lq, heads, dim))
    for b in range(batch):
        for h in range(heads):
            kh = h // groups
            qi, rs = q_i8[b, :, h].float(), sq[b, :, h] * (scale * LOG2E)  # (Lq, D), (Lq,)
            m = torch.full((lq,), float("-inf"))
            l_sum = torch.zeros(lq)
            acc = torch.zeros(lq, dim)
            for start in range(0, lk, block_n):
                cols = slice(start, min(start + block_n, lk))
                t = (qi @ k_i8[b, cols, kh].float().T) * sk[b, cols, kh]  # (Lq, n)
                m_new = torch.maximum(m, t.amax(dim=1) * rs)
                p = torch.exp2(t * rs[:, None] - (m_new - math.log2(448.0))[:, None])
                alpha = torch.exp2(m - m_new)
                l_sum = l_sum * alpha + p.sum(dim=1)
                pv = p.clamp(max=448.0).to(FP8_DTYPE).float() @ v32[b, cols, kh]  # (Lq, D)
                acc = acc * alpha[:, None] + pv
                m = m_new
            out[b, :, h] = acc * sv[b, kh] / l_sum[:, None] + v_mean[b, kh]
    return out.to(q.dtype)  # rounded like the kernel's output

"""8-bit attention (SageAttention2's recipe): the specification of the ``int8_*`` providers of
:func:`fastdit.ops.attention`.

Not exact: these providers run only when asked for by name or by the precision setting
(``PrecisionConfig(attention="int8")``). With ``q [B, Lq, Hq, D]``, ``k, v [B, Lk, Hk, D]``:

    mean, c   = key_smoothing(k): mean over tokens, c = sqrt(max_l |k - mean|) per channel
    q_i8, sq  = int8 per (token, head) of q * c                  (quantize_int8_rows over D)
    k_i8, sk  = int8 per (token, head) of (k - mean) / c         (softmax-invariant smoothing)
    m_v       = mean of v over the tokens, per (head, channel)   (value_smoothing)
    v_f8, sv  = e4m3 per (head, channel) of v - m_v, amax over tokens     (quantize_v_fp8)
                with V_SPLIT: v_f8 = v_hi + v_lo, two e4m3 terms     (quantize_v_fp8_split)
    S         = (q_i8 . k_i8) * sq[i] * sk[j] * scale            (exact integer products)
    P448      = 448 * exp(S - max_j S)                           (fp32; in [0, 448])
    O[i, d]   = sum_j e4m3(P448[i, j]) v_f8[j, d] * sv[d] / sum_j P448[i, j]  +  m_v[d]

then ``O`` stored in q's dtype. The kernel (``kernels/triton/attention_int8.py``) quantises
Q, K, V with these exact formulas (bit for bit) and accumulates ``P V`` over each key block
in the tensor cores, adding the block's result into an fp32 accumulator (the two-level
accumulation; a launch candidate accumulates in the MMA instead). It differs from this
specification in one respect: with online softmax it rounds ``P448`` relative to the running
row maximum, not the final one, so the two agree to the rounding of P (tests bound it), not
bit for bit.

Error budget (zero-mean Gaussian q, k, v; fp32 exact reference, L=2048): Q and K in INT8 per
token cost little (about 0.9% relative L1 on their own; on the outlier inputs the keys' share
dominates: cosine 0.9994); P in e4m3 costs about 2.5% relative L1 and V in one e4m3 term
another 2.7% (independent: 3.7% together, cosine 0.9993; on the H200 at L=32760: 3.8%, cosine
0.9993). V as two terms (``V_SPLIT``) brings V's share to about 0.2% (2.5% in all, cosine
0.9997) for one more fp8 product per key block: measured 19% slower on the H200, slower than
cuDNN, so one term is the default. The benchmark's inputs have zero-mean channels; a real
layer's V carries its projection's bias and other offsets shared by the tokens, which the
smoothing by ``m_v`` takes out of the quantised values (their error shrinks with them).
"""

from __future__ import annotations

import math

import torch

from fastdit.ops import _checks as C
from fastdit.ops.attention import check_qkv
from fastdit.ops.library import LibraryOp, compiling
from fastdit.ops.registry import define_op, new_plan, plans
from fastdit.ops.registry import signature as sig
from fastdit.quant.formulas import (FP8_DTYPE, FP8_MAX, key_smoothing, quantize_fp8_rows,
                                    quantize_int8_rows, quantize_v_fp8, quantize_v_fp8_split)

V_SPLIT = False  # V as value + residual (two e4m3 terms): see the error budget above
P_SCALE = FP8_MAX  # P in [0, 1] is stored as e4m3(448 * P)
ROWS_PER_CHUNK_ELEMENTS = 1 << 24  # the spec's score chunks stay under 64 MB (fp32)


def attention_int8_args(q, k, v, *, causal=False, scale=None, attn_mask=None) -> bool:
    """What the 8-bit recipe takes: no mask, not causal, float inputs, D <= 256."""
    return (attn_mask is None and not causal and q.dtype in C.FLOAT_DTYPES
            and 0 < q.shape[-1] <= 256 and q.shape[1] > 0 and k.shape[1] > 0)


def quantize_qkv_native(q, k, v, v_split: bool = V_SPLIT):
    """``(q_i8, sq, k_i8, sk, v_hi, v_lo, sv, v_mean)`` per the formulas above, in the input
    layout: ``q_i8 [B, Lq, Hq, D]``, ``sq [B, Lq, Hq]``, ``k_i8 [B, Lk, Hk, D]``, ``sk [B, Lk, Hk]``,
    ``v_hi``, ``v_lo [B, Lk, Hk, D]`` (``v_lo`` None without ``v_split``), ``sv`` and
    ``v_mean [B, Hk, D]``."""
    mean, c, inv_c = key_smoothing(k)  # (B, Hk, D) each
    c_q = c.repeat_interleave(q.shape[2] // k.shape[2], dim=1)  # (B, Hq, D): per query head
    q_i8, sq = quantize_int8_rows(q.float() * c_q[:, None])
    k_i8, sk = quantize_int8_rows((k.float() - mean[:, None]) * inv_c[:, None])
    if v_split:
        v_hi, v_lo, sv, v_mean = quantize_v_fp8_split(v, smooth=True)
    else:
        (v_hi, sv, v_mean), v_lo = quantize_v_fp8(v, smooth=True), None
    return q_i8, sq, k_i8, sk, v_hi, v_lo, sv, v_mean


def attention_int8_native(q, k, v, *, causal=False, scale=None, attn_mask=None,
                          v_split: bool = V_SPLIT):
    """The 8-bit attention specification (see the module docstring), in fp32; ``[B, Lq, Hq, D]``
    in q's dtype. Queries go through in chunks so the scores stay small."""
    if not attention_int8_args(q, k, v, causal=causal, scale=scale, attn_mask=attn_mask):
        raise C.fail("attention", "the int8 recipe takes no mask, no causal flag, float "
                     "inputs and head dims up to 256", q=q, k=k, v=v)
    return attention_int8_fp32(q, k, v, scale, v_split).to(q.dtype)


def attention_int8_fp32(q, k, v, scale=None, v_split: bool = V_SPLIT):
    """The specification's output before it is rounded to q's dtype: fp32 ``[B, Lq, Hq, D]``."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    q_i8, sq, k_i8, sk, v_hi, v_lo, sv, v_mean = quantize_qkv_native(q, k, v, v_split)
    groups = q.shape[2] // k.shape[2]
    kf = k_i8.float().transpose(1, 2).repeat_interleave(groups, dim=1)  # (B, Hq, Lk, D)
    skf = sk.transpose(1, 2).repeat_interleave(groups, dim=1)  # (B, Hq, Lk)
    v32 = v_hi.float() if v_lo is None else v_hi.float() + v_lo.float()  # exact: both e4m3
    vf = v32.transpose(1, 2).repeat_interleave(groups, dim=1)  # (B, Hq, Lk, D)
    svf = sv.repeat_interleave(groups, dim=1)  # (B, Hq, D)
    mvf = v_mean.repeat_interleave(groups, dim=1)  # (B, Hq, D)
    qf = q_i8.float().transpose(1, 2)  # (B, Hq, Lq, D)
    sqf = sq.transpose(1, 2)  # (B, Hq, Lq)
    batch, heads, lq, lk = qf.shape[0], qf.shape[1], qf.shape[2], kf.shape[2]
    chunk = max(1, ROWS_PER_CHUNK_ELEMENTS // max(1, batch * heads * lk))
    out = torch.empty(qf.shape, dtype=torch.float32, device=q.device)  # (B, Hq, Lq, D)
    for start in range(0, lq, chunk):
        rows = slice(start, start + chunk)
        dots = torch.matmul(qf[:, :, rows], kf.transpose(-1, -2))  # (B, Hq, c, Lk), exact
        s = dots * (sqf[:, :, rows, None] * skf[:, :, None, :]) * scale
        p448 = torch.exp(s - s.amax(dim=-1, keepdim=True)) * P_SCALE  # (B, Hq, c, Lk)
        p_f8 = p448.to(FP8_DTYPE).float()
        o = torch.matmul(p_f8, vf) * svf[:, :, None, :]  # (B, Hq, c, D)
        out[:, :, rows] = o / p448.sum(dim=-1, keepdim=True) + mvf[:, :, None, :]
    return out.transpose(1, 2)  # (B, Lq, Hq, D)


# ---------------------------------------------------------------------------------------
# the output in e4m3 for the fp8 output projection
# ---------------------------------------------------------------------------------------
def attention_fp8_out_native(q, k, v, *, scale=None):
    o32 = attention_int8_fp32(q, k, v, scale)
    return quantize_fp8_rows(o32, dim=-1)


def _check_attention_fp8_out(q, k, v, *, scale=None) -> None:
    op = "attention_fp8_out"
    check_qkv(op, q, k, v)
    if not attention_int8_args(q, k, v):
        raise C.fail(op, "float inputs and head dims up to 256", q=q, k=k, v=v)
    if scale is not None and not C.is_number(scale):
        raise C.fail(op, f"scale must be a number or None, got {C.describe(scale)}")


def attention_fp8_out(q, k, v, *, scale=None):
    """The 8-bit attention with its output quantised to e4m3 per (token, head) in the kernel's
    epilogue, for the fp8 output projection (no quantisation pass between them).

    ``O`` as in :func:`attention_int8_native` (fp32, before rounding), then
    ``o_q, o_scale = quantize_fp8_rows(O)`` over D: returns ``(o_q [B, Lq, Hq, D]
    float8_e4m3fn, o_scale [B, Lq, Hq] fp32)``. The projection takes
    ``ops.linear_fp8(o_q.flatten(2), W, sw, b, x_scale=o_scale)``: one scale per group of D
    input channels (per head). Shapes and checks as :func:`fastdit.ops.attention`.
    """
    if compiling():
        return _LIB_ATTENTION_FP8_OUT(q, k, v, scale)
    return _plan_attention_fp8_out(q, k, v, scale).fn(q, k, v, scale=scale)


def _plan_attention_fp8_out(q, k, v, scale):
    key = (sig(q), sig(k), sig(v), sig(scale))
    try:
        return plans("attention_fp8_out")[key]
    except (KeyError, TypeError):
        _check_attention_fp8_out(q, k, v, scale=scale)
        return new_plan("attention_fp8_out", key, (q, k, v), {"scale": scale})


define_op("attention_fp8_out", attention_fp8_out, _plan_attention_fp8_out)

_LIB_ATTENTION_FP8_OUT = LibraryOp(
    "attention_fp8_out", attention_fp8_out,
    (("q", "Tensor"), ("k", "Tensor"), ("v", "Tensor"), ("scale", "float?")),
    "(Tensor, Tensor)", _check_attention_fp8_out, attention_fp8_out_native)

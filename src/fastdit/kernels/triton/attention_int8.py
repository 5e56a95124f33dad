"""8-bit attention in Triton: INT8 Q/K, FP8 P/V (SageAttention2's recipe), ``[B, L, H, D]``.

Two steps, both counted in the op's time:

1. **Quantise** (``quantize_qkv``): q and k to INT8 per (token, head) (k smoothed by its mean
   over the tokens, its channels balanced against q's: ``quant.formulas.key_smoothing``), v to
   e4m3 per (head, channel) after subtracting its mean over the tokens; written head-major
   into buffers padded to a multiple of ``PAD`` tokens (padding rows are zeros), v transposed
   to ``[B, H, D, L]`` so that it is the K-major operand the fp8 tensor-core instructions want
   (with ``V_SPLIT`` also v's rounding residual as a second e4m3 term). The statistics over the
   tokens (k's and v's mean and min/max) are torch reductions (``quant.formulas``);
   the three quantisers are one Triton kernel launch each. Every bit equals
   ``ops.attention_int8.quantize_qkv_native``. A producer kernel (the fused q/k RMSNorm + RoPE)
   can later write the q buffer and its scales directly (see ``QuantizedQKV``).
2. **Attend** (``_attn_int8_kernel``): per program one ``BLOCK_M`` query tile of one head;
   ``S = (q_i8 k_i8^T)`` in int32 (exact), scaled by the query's and the key's scale; online
   softmax in base 2 with ``448`` folded into the exponent, so ``P448 = 448 exp(S - m)`` is
   cast to e4m3 directly; ``P448 V`` (``+ P448 V_lo``) per key block on the fp8 tensor cores, the block's fp32
   result added into the fp32 accumulator (two-level accumulation: on sm_90 the fp8
   instruction keeps about 22 bits over one block only; the ``pv_fused`` candidate lets the
   MMA accumulate across blocks instead). Keys in full blocks run unmasked; the one partial
   block at the end (L = 32760) runs a masked copy of the loop body. The epilogue divides by
   the row sums and adds V's mean back (V is quantised as ``v - mean``).

With ``out_fp8`` the epilogue writes the output in e4m3 per (token, head) with fp32 scales
(``ops.attention_fp8_out``), the input of the fp8 output projection.

Launch parameters per head dim: :data:`CONFIGS` (the first entry is the default; the GPU
benchmark ``benchmarks/quant.py`` times every entry).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from fastdit.kernels.triton import _quant_common as Q
from fastdit.kernels.triton._support import cdiv, interpreting
from fastdit.ops.attention_int8 import V_SPLIT
from fastdit.quant.formulas import key_smoothing, value_smoothing

PAD = 128  # token padding of the quantised buffers; every BLOCK_M and BLOCK_N divides it
BLOCK_T = 64  # tokens per program of the quantisers
LOG2E = 1.4426950408889634
LOG2_P_SCALE = tl.constexpr(math.log2(448.0))  # read inside the kernel: a constexpr


@dataclass(frozen=True)
class AttentionConfig:
    """Launch parameters and variants of the attention kernel (chosen per head dim by timing
    on the GPU, ``benchmarks/quant.py``).

    ``i2f_magic``: int32 -> fp32 of the scores by an integer add (see ``_quant_common``)
    instead of the conversion instruction. ``pv_fused``: ``P V`` accumulated in the MMA's own
    accumulator across key blocks (``acc = dot(P, V, acc * alpha)``; no second register tile,
    no separate add; on sm_90 the fp8 MMA then accumulates with its ~22-bit adder across all
    blocks instead of one) instead of per block into fp32. ``exp_fma``: ``2**x`` of the
    probabilities computed on the FMA and integer units (:func:`exp2_fma`, relative error
    7.7e-5, far below e4m3's 2**-4) instead of the MUFU unit, which also converts the scores.
    ``tma``: q, k and v tiles read through tensor descriptors (Hopper's bulk tensor copy engine,
    ``triton.tools.tensor_descriptor``) instead of pointer arithmetic: the copies leave the
    registers and the address math to the TMA unit. ``maxnreg``: a cap on the registers per
    thread (168 lets three 4-warp programs share an SM), None for the compiler's choice.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    i2f_magic: bool = False
    pv_fused: bool = False
    exp_fma: bool = False
    tma: bool = False
    maxnreg: int | None = None

    @property
    def name(self) -> str:
        return (f"m{self.block_m}n{self.block_n}w{self.num_warps}s{self.num_stages}"
                + ("-magic" if self.i2f_magic else "") + ("-fusedpv" if self.pv_fused else "")
                + ("-fmaexp" if self.exp_fma else "") + ("-tma" if self.tma else "")
                + (f"-r{self.maxnreg}" if self.maxnreg else ""))


# Candidates per head dim; the first is used. D=128 (every Wan model), H200, L=32760, V in one
# term (benchmarks/results/h200-run1): m128n128w8s3 with the conversion instruction 11.07 /
# 35.39 ms at 12 / 40 heads (cuDNN bf16 11.80 / 39.94); with the integer-add conversion 12.34 /
# 39.38; 128x64 tiles 14.05 / 45.0; 64x64 (4 warps) 12.12 / 41.07; 2 stages 13.08 / 41.52.
# Timed on the H200 (h200-run4, benchmarks/quant.py, L=32760, head dim 128, quantisation
# included): 64x128 tiles on one warpgroup with P V accumulated in the MMA (two programs per SM,
# each one's softmax overlapping the other's products) 9.85 / 32.51 ms at H=12 / 40, against
# 11.06 / 35.56 ms for 128x128 (8 warps, 3 stages) and cuDNN bf16's 11.72 / 39.19 ms; the same
# accuracy. 4 stages gain nothing; the FMA exponential is 20% slower. Compiled for sm_90 on a CPU
# (tests/kernels/_compile_check_quant.py), every candidate fits in 255 registers without spills,
# V in one or two terms; 256-row tiles (16 warps: 128 registers) spill 280-790 bytes.
# Dropped after h200-run4: 4 stages (no gain), the FMA exponential (20-30% slower; a D=64
# candidate keeps it).
# h200-run17 (same call, 12 / 40 heads, cuDNN bf16 11.69 / 38.14 ms): q, k, v through tensor
# descriptors (TMA copies, 213 registers against 251) on the 64x128 tile 9.55 / 31.90 ms
# (1.224x / 1.196x cuDNN; the pointer loads 10.10 / 32.85), the same accuracy: the default.
# Slower: its 4-stage copy 12.50 / 40.62; 128x128 tiles with descriptors 11.43-11.55 /
# 36.7-37.0; the integer-add conversion (the magic constant in the int8 MMA's accumulator, no
# I2FP left in the SASS: the conversions were not the bound) 10.01-10.37 / 33.5-33.9 at 64
# rows, 11.47-12.10 / 36.3-38.9 at 128. V in two terms (the accuracy the issue asks for on
# Gaussian inputs) 15.03 / 50.64 ms. h200-run18: 64x64 tiles with descriptors (166 registers,
# three programs per SM) 10.31-10.37 / 34.25-34.86 against the default's 9.26 / 31.91: dropped.
# h200-run19: Nsight Compute on the default (ncu-attention.txt): issue slots 53% busy, the XU
# (MUFU, conversions) pipe 42%, the tensor pipe 40%, 0.80 eligible of 1.98 resident warps per
# scheduler: latency-bound (one warpgroup's softmax waits on its own Q K^T and P V), not bound by
# any unit. Three programs per SM (registers capped at 168, no spills, 2 stages: 74 KB of shared
# memory each) 9.48 / 30.91 ms against the default's 9.35 / 31.52 (2 stages alone 10.28 / 33.16,
# the cap alone 10.19 / 33.75; with pointer loads, on GPUs without TMA, the cap spills 64
# bytes): kept as a candidate; with V in two terms it is the fastest
# (13.34 / 44.41 against 14.5 / 48.4). Rejected there: the running maximum moved only when it
# grows by more than 4 or 8 (log2) for the whole tile (FlashAttention-4's conditional
# rescaling, 56 fewer instructions per block, but a cross-warp reduction and barrier) 9.72 /
# 32.51 and 10.15 / 32.62; the row sums by the tensor cores (P8 @ ones) not faster and wrong on
# Gaussian inputs (cosine 0.976: the fp8 MMA's accumulator); issuing the next block's Q K^T
# before this block's softmax is not expressible (Triton waits on the product at once).
CONFIGS: dict[int, tuple[AttentionConfig, ...]] = {
    128: (AttentionConfig(64, 128, 4, 3, pv_fused=True, tma=True),
          AttentionConfig(64, 128, 4, 3, pv_fused=True), AttentionConfig(128, 128, 8, 3),
          AttentionConfig(128, 128, 8, 3, pv_fused=True),
          AttentionConfig(128, 128, 8, 2, pv_fused=True, tma=True),
          AttentionConfig(64, 128, 4, 3, i2f_magic=True, pv_fused=True, tma=True),
          AttentionConfig(64, 128, 4, 2, pv_fused=True, tma=True, maxnreg=168)),
    64: (AttentionConfig(128, 128, 8, 3), AttentionConfig(128, 64, 8, 3),
         AttentionConfig(128, 64, 4, 4), AttentionConfig(64, 64, 4, 4),
         AttentionConfig(128, 128, 8, 3, pv_fused=True, exp_fma=True)),
}


# ---------------------------------------------------------------------------------------
# quantisers
# ---------------------------------------------------------------------------------------
@triton.jit
def _quant_int8_rows_kernel(x_ptr, sxb, sxl, sxh, sxd, mean_ptr, mul_ptr, out_ptr, scale_ptr,
                            L, L_PAD, H, GROUPS,
                            D: tl.constexpr, HAS_MEAN: tl.constexpr, BLOCK: tl.constexpr):
    # x [B, L, H, D] (any strides) -> out [B, H, L_PAD, D] int8, scale [B, H, L_PAD] fp32;
    # per row (token, head): u = (x - mean) * mul (mean only when HAS_MEAN; mean, mul
    # [B, H / GROUPS, D]: per kv head), scale = max(amax, floor) / 127,
    # out = round(u * (127 / amax)); rows l >= L are zeros
    pid_t = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    stats = (b * (H // GROUPS) + h // GROUPS) * D
    rows = pid_t * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, D)
    valid = rows < L
    offs = b * sxb + h * sxh + (rows.to(tl.int64) * sxl)[:, None] + (cols * sxd)[None, :]
    x = tl.load(x_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)
    if HAS_MEAN:
        mean = tl.load(mean_ptr + stats + cols)
        x = tl.where(valid[:, None], x - mean[None, :], 0.0)
    x = x * tl.load(mul_ptr + stats + cols)[None, :]
    scale, inv = Q.row_scales(tl.max(tl.abs(x), axis=1), Q.INT8_MAX)
    out_rows = bh.to(tl.int64) * L_PAD + rows
    tl.store(out_ptr + (out_rows * D)[:, None] + cols[None, :], Q.to_int8(x * inv[:, None]))
    tl.store(scale_ptr + out_rows, scale)


@triton.jit
def _quant_v_fp8_kernel(v_ptr, svb, svl, svh, svd, mean_ptr, inv_ptr, out_ptr, lo_ptr, L, L_PAD,
                        H, D: tl.constexpr, BLOCK: tl.constexpr, SPLIT: tl.constexpr,
                        INTERPRET: tl.constexpr):
    # v [B, L, H, D] -> out [B, H, D, L_PAD] e4m3 (tokens contiguous), out = e4m3(y),
    # y = clamp((v - mean[b, h, d]) * inv[b, h, d], +-448) (inv = 448 / amax of v - mean over
    # the tokens); with SPLIT also lo = e4m3(y - out), the residual, in the same layout; rows
    # l >= L are zeros
    pid_t = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = pid_t * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, D)
    offs = b * svb + h * svh + (rows.to(tl.int64) * svl)[:, None] + (cols * svd)[None, :]
    valid = (rows < L)[:, None]
    v = tl.load(v_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    v = tl.where(valid, v - tl.load(mean_ptr + bh * D + cols)[None, :], 0.0)
    inv = tl.load(inv_ptr + bh * D + cols)
    y = tl.minimum(tl.maximum(v * inv[None, :], -Q.E4M3_MAX), Q.E4M3_MAX)
    v8 = Q.to_e4m3(y, INTERPRET)
    offs_out = ((bh.to(tl.int64) * D + cols) * L_PAD)[None, :] + rows[:, None]
    tl.store(out_ptr + offs_out, v8)
    if SPLIT:
        tl.store(lo_ptr + offs_out, Q.to_e4m3(y - v8.to(tl.float32), INTERPRET))


# ---------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------
@triton.jit
def exp2_fma(x):
    """``2**x`` in fp32 without the MUFU unit: ``x = j + f`` with ``j`` the nearest integer (the
    1.5 * 2**23 rounding trick, whose bits also hold ``j``), ``2**f`` on ``[-1/2, 1/2]`` by a
    degree-3 polynomial (relative error <= 7.7e-5), ``j`` added to the exponent bits. Values
    below 2**-126 come out as (near) zero; ``x = -inf`` gives 2**-126 * 2**f, not 0."""
    x = tl.maximum(x, -126.0)
    t = x + 12582912.0  # 1.5 * 2**23: the low bits of t hold round(x)
    f = x - (t - 12582912.0)  # in [-1/2, 1/2]
    p = 0.05508886 * f + 0.24260466
    p = p * f + 0.6932763
    p = p * f + 0.9999289
    j = t.to(tl.int32, bitcast=True) - 0x4B400000  # round(x) as an integer
    return (p.to(tl.int32, bitcast=True) + (j << 23)).to(tl.float32, bitcast=True)


@triton.jit
def _attn_block(acc, l_i, m_i, q, rs, k_base, ks_base, v_base, vlo_base, start, Lk, LK_PAD,
                offs_n, offs_d, k_desc, v_desc, vlo_desc, k_row, v_row,
                D: tl.constexpr, MASK: tl.constexpr, I2F_MAGIC: tl.constexpr,
                V_SPLIT: tl.constexpr, PV_IMPRECISE: tl.constexpr, PV_FUSED: tl.constexpr,
                EXP_FMA: tl.constexpr, TMA: tl.constexpr, INTERPRET: tl.constexpr):
    """One key block: scores, online-softmax update, ``acc = acc * alpha + P448 V``. With
    ``TMA`` the k and v tiles come through the descriptors (rows ``k_row + start`` of k's
    ``[B*Hk*LK_PAD, D]`` view, columns ``start`` of v's ``[B*Hk*D, LK_PAD]`` view)."""
    cols = start + offs_n
    if TMA:
        k_t = tl.trans(k_desc.load([k_row + start, 0]))  # (D, BLOCK_N) int8
    else:
        k_t = tl.load(k_base + (cols * D)[None, :] + offs_d[:, None])  # (D, BLOCK_N) int8
    qk = tl.dot(q, k_t)  # (BLOCK_M, BLOCK_N) int32, exact
    ks = tl.load(ks_base + cols)
    if I2F_MAGIC:  # t = S / rs: one FMA per score with the offset of the integer trick
        t = Q.int32_plus_magic_as_f32(qk) * ks[None, :] - (ks * Q.I2F_OFFSET)[None, :]
    else:
        t = qk.to(tl.float32) * ks[None, :]
    if MASK:
        t = tl.where((cols < Lk)[None, :], t, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(t, 1) * rs)  # rs > 0: max(t * rs) = max(t) * rs
    x = t * rs[:, None] - (m_new - LOG2_P_SCALE)[:, None]  # log2 of 448 exp(S - m)
    if EXP_FMA:
        p = exp2_fma(x)
        if MASK:  # exp2_fma(-inf) is 2**-126-ish, not 0: keep the tail's sum exact
            p = tl.where((cols < Lk)[None, :], p, 0.0)
    else:
        p = tl.math.exp2(x)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v_offs = (offs_d * LK_PAD)[:, None] + cols[None, :]
    if TMA:
        v_t = v_desc.load([v_row, start])  # (D, BLOCK_N) e4m3
    else:
        v_t = tl.load(v_base + v_offs)  # (D, BLOCK_N) e4m3
    if INTERPRET:
        p8 = Q.to_e4m3(p, INTERPRET)
    else:
        p8 = p.to(tl.float8e4nv)  # p <= 448 (1 + eps): the cast rounds and saturates
    if PV_FUSED:
        # one-level: the MMA accumulates into acc across all key blocks (max_num_imprecise_acc
        # left at Triton's default, 2**30 on sm_90: no promotion to a separate fp32 tile)
        acc = tl.dot(p8, tl.trans(v_t), acc * alpha[:, None])
        if V_SPLIT:
            acc = tl.dot(p8, tl.trans(_v_lo(vlo_base, v_offs, vlo_desc, v_row, start, TMA)), acc)
        return acc, l_i, m_new
    # P V over this block in the fp8 MMA (about 22 bits of accumulation on sm_89/sm_90: fine
    # over one block), then added into the fp32 accumulator. Triton folds "acc + dot" into the
    # MMA's accumulator only when the dot's max_num_imprecise_acc is 0: on sm_90 its default
    # (2**30) already prevents it (PV_IMPRECISE = 0: the default, no partial-sum registers);
    # elsewhere PV_IMPRECISE = BLOCK_N (the dot's K) does.
    if PV_IMPRECISE == 0:
        pv = tl.dot(p8, tl.trans(v_t))
        if V_SPLIT:  # + P v_lo, in the same MMA chain (one block)
            pv = tl.dot(p8, tl.trans(_v_lo(vlo_base, v_offs, vlo_desc, v_row, start, TMA)), pv)
    else:
        pv = tl.dot(p8, tl.trans(v_t), max_num_imprecise_acc=PV_IMPRECISE)
        if V_SPLIT:
            pv = tl.dot(p8, tl.trans(_v_lo(vlo_base, v_offs, vlo_desc, v_row, start, TMA)), pv,
                        max_num_imprecise_acc=PV_IMPRECISE)
    acc = acc * alpha[:, None] + pv
    return acc, l_i, m_new


@triton.jit
def _v_lo(vlo_base, v_offs, vlo_desc, v_row, start, TMA: tl.constexpr):
    """V's second e4m3 term for this key block, ``(D, BLOCK_N)``."""
    if TMA:
        return vlo_desc.load([v_row, start])
    return tl.load(vlo_base + v_offs)


@triton.jit
def _attn_int8_kernel(q_ptr, qs_ptr, k_ptr, ks_ptr, v_ptr, vlo_ptr, vs_ptr, vm_ptr, o_ptr,
                      os_ptr, q_desc, k_desc, v_desc, vlo_desc,
                      sob, sol, soh, sod, Lq, Lk, LQ_PAD, LK_PAD, HQ, HK, qk_scale,
                      D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      I2F_MAGIC: tl.constexpr, V_SPLIT: tl.constexpr, OUT_FP8: tl.constexpr,
                      PV_IMPRECISE: tl.constexpr, PV_FUSED: tl.constexpr, EXP_FMA: tl.constexpr,
                      TMA: tl.constexpr, INTERPRET: tl.constexpr):
    # q [B, HQ, LQ_PAD, D] int8 + qs [B, HQ, LQ_PAD]; k [B, HK, LK_PAD, D] int8 + ks;
    # v (and v_lo with V_SPLIT) [B, HK, D, LK_PAD] e4m3 + vs, vm (V's mean) [B, HK, D];
    # o [B, Lq, HQ, D];
    # with OUT_FP8, o is e4m3 per (token, head) and its scales os [B, Lq, HQ] fp32
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    kvh = (b * HK + h // (HQ // HK)).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q_rows = bh.to(tl.int64) * LQ_PAD + offs_m
    if TMA:  # descriptors: q [B*HQ*LQ_PAD, D], k [B*HK*LK_PAD, D], v [B*HK*D, LK_PAD] (int32 offsets)
        q = q_desc.load([(bh * LQ_PAD + pid_m * BLOCK_M).to(tl.int32), 0])  # (BLOCK_M, D) int8
    else:
        q = tl.load(q_ptr + (q_rows * D)[:, None] + offs_d[None, :])  # (BLOCK_M, D) int8
    rs = tl.load(qs_ptr + q_rows) * qk_scale  # query scale * softmax scale * log2(e)
    k_base = k_ptr + kvh * LK_PAD * D
    ks_base = ks_ptr + kvh * LK_PAD
    v_base = v_ptr + kvh * D * LK_PAD
    vlo_base = vlo_ptr + kvh * D * LK_PAD
    k_row = (kvh * LK_PAD).to(tl.int32)
    v_row = (kvh * D).to(tl.int32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    n_full = Lk // BLOCK_N
    for j in range(0, n_full):  # full key blocks: no masks
        acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, rs, k_base, ks_base, v_base, vlo_base,
                                    j * BLOCK_N, Lk, LK_PAD, offs_n, offs_d, k_desc, v_desc,
                                    vlo_desc, k_row, v_row, D, False, I2F_MAGIC, V_SPLIT,
                                    PV_IMPRECISE, PV_FUSED, EXP_FMA, TMA, INTERPRET)
    if n_full * BLOCK_N < Lk:  # the partial block at the end
        acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, rs, k_base, ks_base, v_base, vlo_base,
                                    n_full * BLOCK_N, Lk, LK_PAD, offs_n, offs_d, k_desc, v_desc,
                                    vlo_desc, k_row, v_row, D, True, I2F_MAGIC, V_SPLIT,
                                    PV_IMPRECISE, PV_FUSED, EXP_FMA, TMA, INTERPRET)
    vs = tl.load(vs_ptr + kvh * D + offs_d)
    vm = tl.load(vm_ptr + kvh * D + offs_d)
    o = acc * vs[None, :] / l_i[:, None] + vm[None, :]  # + V's mean: the weights sum to one
    o_offs = (b.to(tl.int64) * sob + h.to(tl.int64) * soh + (offs_m.to(tl.int64) * sol)[:, None]
              + (offs_d * sod)[None, :])
    rmask = offs_m < Lq
    if OUT_FP8:  # the output projection's input: e4m3 rows (per token and head) + scales
        o_scale, o_inv = Q.row_scales(tl.max(tl.abs(o), axis=1), Q.E4M3_MAX)
        tl.store(o_ptr + o_offs, Q.to_e4m3(o * o_inv[:, None], INTERPRET), mask=rmask[:, None])
        tl.store(os_ptr + (b.to(tl.int64) * Lq + offs_m) * HQ + h, o_scale, mask=rmask)
    else:
        tl.store(o_ptr + o_offs, o.to(o_ptr.dtype.element_ty), mask=rmask[:, None])


# ---------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------
@dataclass
class QuantizedQKV:
    """Quantised attention inputs in the kernel's layout (token dims padded to ``PAD``).

    ``q [B, Hq, Lq_pad, D]`` int8 and ``q_scale [B, Hq, Lq_pad]`` fp32; ``k`` and ``k_scale``
    alike with Hk, Lk_pad (k smoothed); ``v [B, Hk, D, Lk_pad]`` e4m3 of ``v - v_mean`` (and
    its residual term ``v_lo`` alike, or None), ``v_scale`` and ``v_mean [B, Hk, D]`` fp32.
    Padding rows are zeros. A
    producer kernel may fill any of these directly; q's and k's quantisation need the key
    statistics of the layer first (``quant.formulas.key_smoothing``: q is scaled by ``c``).
    """

    q: torch.Tensor
    q_scale: torch.Tensor
    k: torch.Tensor
    k_scale: torch.Tensor
    v: torch.Tensor
    v_scale: torch.Tensor
    v_lo: torch.Tensor | None
    lq: int
    lk: int
    v_mean: torch.Tensor | None = None  # None: zeros (no smoothing)


def pv_imprecise_acc(block_n: int) -> int:
    """``max_num_imprecise_acc`` of the P V dots: 0 (Triton's default, 2**30 on sm_90, which
    keeps "acc + dot" unfused) on Hopper; ``block_n`` elsewhere (the default there is 0, which
    would let Triton fuse the add into the MMA and accumulate across blocks in ~22 bits)."""
    from fastdit.platforms import current_platform

    return block_n if interpreting() or not _is_sm90(current_platform()) else 0


@functools.lru_cache(maxsize=8)
def _is_sm90(platform) -> bool:
    return platform.name == "cuda" and platform.compute_capability() == (9, 0)


@functools.lru_cache(maxsize=8)
def _has_tma(platform) -> bool:
    """Tensor descriptors (the TMA unit) exist from sm_90 on; elsewhere a ``tma`` candidate
    reads the same tiles through pointers."""
    return platform.name == "cuda" and platform.compute_capability() >= (9, 0)


def _launched(config: AttentionConfig) -> AttentionConfig:
    """``config`` as launched on this platform: a ``tma`` candidate without the TMA unit reads
    the same tiles through pointers."""
    if not config.tma or interpreting():
        return config
    from fastdit.platforms import current_platform

    return config if _has_tma(current_platform()) else replace(config, tma=False)


def _padded(length: int) -> int:
    return cdiv(length, PAD) * PAD


def _quantize_rows(x: torch.Tensor, mean: torch.Tensor | None, mul: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows of ``(x - mean) * mul`` (``mean``, ``mul``: ``[B, Hk, D]`` per kv head)."""
    batch, length, heads, dim = x.shape
    l_pad = _padded(length)
    out = torch.empty((batch, heads, l_pad, dim), dtype=torch.int8, device=x.device)
    scale = torch.empty((batch, heads, l_pad), dtype=torch.float32, device=x.device)
    _quant_int8_rows_kernel[(l_pad // BLOCK_T, batch * heads)](
        x, *x.stride(), mul if mean is None else mean, mul, out, scale, length, l_pad, heads,
        heads // mul.shape[1], D=dim, HAS_MEAN=mean is not None, BLOCK=BLOCK_T, num_warps=4,
        enable_fp_fusion=False)
    return out, scale


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 v_split: bool = V_SPLIT) -> QuantizedQKV:
    """Quantise ``q [B, Lq, Hq, D]``, ``k, v [B, Lk, Hk, D]`` (any strides) for the kernel."""
    batch, lk, heads_k, dim = k.shape
    mean, c, inv_c = (t.contiguous() for t in key_smoothing(k))  # (B, Hk, D) each
    q_i8, q_scale = _quantize_rows(q, None, c)  # q * c
    k_i8, k_scale = _quantize_rows(k, mean, inv_c)  # (k - mean) / c
    v_mean, v_scale, v_inv = (t.contiguous() for t in value_smoothing(v))  # (B, Hk, D) each
    lk_pad = _padded(lk)
    v_f8 = torch.empty((batch, heads_k, dim, lk_pad), dtype=torch.float8_e4m3fn, device=v.device)
    v_lo = torch.empty_like(v_f8) if v_split else None
    _quant_v_fp8_kernel[(lk_pad // BLOCK_T, batch * heads_k)](
        v, *v.stride(), v_mean, v_inv, v_f8, v_f8 if v_lo is None else v_lo, lk, lk_pad,
        heads_k, D=dim, BLOCK=BLOCK_T, SPLIT=v_split, INTERPRET=interpreting(), num_warps=4,
        enable_fp_fusion=False)
    return QuantizedQKV(q_i8, q_scale, k_i8, k_scale, v_f8, v_scale, v_lo, q.shape[1], lk,
                        v_mean)


def attention_quantized(qkv: QuantizedQKV, out_dtype: torch.dtype, scale: float,
                        config: AttentionConfig | None = None, out_fp8: bool = False):
    """The attention kernel on quantised inputs; returns ``[B, Lq, Hq, D]`` in ``out_dtype``,
    or with ``out_fp8`` ``(o_q [B, Lq, Hq, D] e4m3, o_scale [B, Lq, Hq] fp32)``."""
    batch, heads_q, lq_pad, dim = qkv.q.shape
    heads_k, lk_pad = qkv.k.shape[1], qkv.k.shape[2]
    config = _launched(config or CONFIGS[dim][0])
    device = qkv.q.device
    out = torch.empty((batch, qkv.lq, heads_q, dim), dtype=torch.float8_e4m3fn if out_fp8
                      else out_dtype, device=device)
    out_scale = (torch.empty((batch, qkv.lq, heads_q), dtype=torch.float32, device=device)
                 if out_fp8 else None)
    grid = (cdiv(qkv.lq, config.block_m), batch * heads_q)
    v_mean = qkv.v_mean if qkv.v_mean is not None else torch.zeros_like(qkv.v_scale)
    descs = _descriptors(qkv, config) if config.tma else (None, None, None, None)
    _attn_int8_kernel[grid](
        qkv.q, qkv.q_scale, qkv.k, qkv.k_scale, qkv.v, qkv.v if qkv.v_lo is None else qkv.v_lo,
        qkv.v_scale, v_mean, out, qkv.q_scale if out_scale is None else out_scale, *descs,
        *out.stride(), qkv.lq, qkv.lk, lq_pad, lk_pad, heads_q, heads_k, float(scale) * LOG2E,
        D=dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n, I2F_MAGIC=config.i2f_magic,
        V_SPLIT=qkv.v_lo is not None, OUT_FP8=out_fp8,
        PV_IMPRECISE=pv_imprecise_acc(config.block_n), PV_FUSED=config.pv_fused,
        EXP_FMA=config.exp_fma, TMA=config.tma, INTERPRET=interpreting(),
        num_warps=config.num_warps, num_stages=config.num_stages,
        **({"maxnreg": config.maxnreg} if config.maxnreg else {}))
    return (out, out_scale) if out_fp8 else out


def _descriptors(qkv: QuantizedQKV, config: AttentionConfig) -> tuple:
    """Tensor descriptors of q, k, v (and v_lo) as 2-D views, one tile per load: q
    ``[B*Hq*Lq_pad, D]`` by ``(BLOCK_M, D)``, k ``[B*Hk*Lk_pad, D]`` by ``(BLOCK_N, D)``, v
    ``[B*Hk*D, Lk_pad]`` by ``(D, BLOCK_N)`` (every tile inside one head: the paddings are
    multiples of both blocks)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    dim = qkv.q.shape[-1]
    q = TensorDescriptor.from_tensor(qkv.q.view(-1, dim), block_shape=[config.block_m, dim])
    k = TensorDescriptor.from_tensor(qkv.k.view(-1, dim), block_shape=[config.block_n, dim])
    v_rows = qkv.v.shape[0] * qkv.v.shape[1] * dim
    v = TensorDescriptor.from_tensor(qkv.v.view(v_rows, -1), block_shape=[dim, config.block_n])
    v_lo = v if qkv.v_lo is None else TensorDescriptor.from_tensor(qkv.v_lo.view(v_rows, -1),
                                                                   block_shape=[dim, config.block_n])
    return q, k, v, v_lo


def attention_int8(q, k, v, *, causal=False, scale=None, attn_mask=None,
                   config: AttentionConfig | None = None, v_split: bool = V_SPLIT):
    """``attention`` (8-bit recipe; see ``ops.attention_int8``): quantise, then attend."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return attention_quantized(quantize_qkv(q, k, v, v_split), q.dtype, scale, config)


def attention_fp8_out(q, k, v, *, scale=None, config: AttentionConfig | None = None):
    """``ops.attention_fp8_out``: the same kernel with the e4m3 epilogue."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return attention_quantized(quantize_qkv(q, k, v), q.dtype, scale, config, out_fp8=True)

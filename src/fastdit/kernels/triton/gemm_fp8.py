"""An fp8 matrix product in Triton for activations with one scale per group of K channels
(``linear_fp8`` with ``x_scale [..., G]``: e.g. the attention output, one scale per head).

    y[t, n] = sw[n] * sum_g sx[t, g] * sum_{k in group g} x_q[t, k] W_q[n, k]  (+ b[n])

A program computes a ``BLOCK_M x BLOCK_N`` tile; per ``BLOCK_K`` slice of K (inside one group)
the fp8 MMA's partial sum is scaled by the rows' group scale and added into an fp32
accumulator (two-level accumulation, as DeepSeek-V3's block-scaled products); the weight's
per-channel scale and the bias are applied once at the end. Tiles are grouped along M
(``GROUP_M``) so the programs running together share weight tiles in L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdit.kernels.triton._support import cdiv
from fastdit.kernels.triton._support_quant import grouped_block_k

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); the first is used. Not yet
# measured on a GPU: the usual Hopper fp8 choice of 128x128x128 tiles, 8 warps.
CONFIGS = ((128, 128, 128, 8, 8, 3), (128, 256, 128, 8, 8, 3), (64, 128, 128, 8, 4, 4))


@triton.jit
def _fp8_group_gemm_kernel(a_ptr, sa_ptr, w_ptr, sw_ptr, bias_ptr, c_ptr,
                           M, N, K, GROUP_K, s_am, s_ak, s_sm, s_sg, s_cm, s_cn,
                           HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # a [M, K] e4m3 (strides s_am, s_ak), sa [M, G] fp32 (group g: channels g*GROUP_K ...),
    # w [N, K] e4m3 contiguous, sw [N] fp32, bias [N], c [M, N]; K % BLOCK_K == 0 and
    # GROUP_K % BLOCK_K == 0 (host-checked)
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    rmask = rows < M
    cmask = cols < N
    a_rows = a_ptr + (rows.to(tl.int64) * s_am)[:, None]
    w_rows = w_ptr + (cols.to(tl.int64) * K)[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for kb in range(0, K // BLOCK_K):
        k0 = kb * BLOCK_K
        a = tl.load(a_rows + ((k0 + ks) * s_ak)[None, :], mask=rmask[:, None], other=0.0)
        w = tl.load(w_rows + (k0 + ks)[None, :], mask=cmask[:, None], other=0.0)
        part = tl.dot(a, tl.trans(w))  # this slice only (scaled below: never fused into acc)
        scale = tl.load(sa_ptr + rows.to(tl.int64) * s_sm + (k0 // GROUP_K) * s_sg, mask=rmask,
                        other=0.0)
        acc += part * scale[:, None]
    acc = acc * tl.load(sw_ptr + cols, mask=cmask, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    c = c_ptr + (rows.to(tl.int64) * s_cm)[:, None] + (cols * s_cn)[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


def linear_fp8_grouped(x_q, x_scale, weight, weight_scale, bias, out_dtype, config=None):
    """``[..., N]`` in ``out_dtype``: x_q ``[..., K]`` e4m3 with ``x_scale [..., G]``."""
    k, n = x_q.shape[-1], weight.shape[0]
    groups = x_scale.shape[-1]
    a = x_q.reshape(-1, k)  # (M, K)
    sa = x_scale.reshape(-1, groups)  # (M, G)
    m = a.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    block_m, block_n, block_k, group_m, warps, stages = config or CONFIGS[0]
    block_k = min(block_k, grouped_block_k(k, k // groups))
    if m:
        grid = (cdiv(m, block_m) * cdiv(n, block_n),)
        _fp8_group_gemm_kernel[grid](
            a, sa, weight, weight_scale, weight_scale if bias is None else bias, out,
            m, n, k, k // groups, a.stride(0), a.stride(1), sa.stride(0), sa.stride(1),
            out.stride(0), out.stride(1), HAS_BIAS=bias is not None, BLOCK_M=block_m,
            BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, num_warps=warps,
            num_stages=stages)
    return out.view(*x_q.shape[:-1], n)

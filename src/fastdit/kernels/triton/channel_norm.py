"""Triton kernel of ``channel_rms_norm``: the Wan VAE's RMS norm over channels (+ SiLU).

``x [B, C, *rest]`` (contiguous) is seen as ``[B, C, S]``, ``S = prod(rest)``: the norm runs
over C, whose elements lie ``S`` apart. A program (grid ``(cdiv(S, BLOCK_S), B)``) takes
``BLOCK_S`` consecutive positions of one batch row (loads coalesced along s) and loops over C
in chunks of ``BLOCK_C`` twice: the first loop accumulates the fp32 sum of squares, the second
loads the tile again and applies the spec's chain, rounding to x's dtype between the steps
exactly as diffusers' ``WanRMS_norm`` (see :mod:`fastdit.ops.channel_norm`). x is read twice
and y written once. Launch parameters: :func:`channel_norm_launch` (``_support.py``), README.md.

A channels-last dense ``x`` (NHWC / NDHWC, ``vae_decoder="fastdit-channels-last"``) is a
``[B * S, C]`` row-major matrix instead: the rows kernel holds whole rows (C <= 4096) in
registers, reads x once and writes y in the same layout (:func:`channel_rows_launch`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdit.kernels.triton._support import (
    cdiv,
    channel_norm_launch,
    channel_rows_launch,
    channels_last_rows,
    interpreting,
)


@triton.jit
def _round_bf16_rne(v):
    """fp32 ``v`` rounded to nearest-even on the bf16 grid, still fp32 (NaN kept).

    Used only under the Triton interpreter, whose fp32 -> bf16 cast truncates; after this the
    cast is exact. On a GPU the hardware cast (RTNE) is used directly."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    r = ((bits >> 16) << 16).to(tl.float32, bitcast=True)
    return tl.where(v != v, v, r)


@triton.jit
def _round(v, DT: tl.constexpr, SOFT_BF16: tl.constexpr):
    """fp32 ``v`` rounded to the dtype ``DT`` and back to fp32 (a no-op for fp32)."""
    if SOFT_BF16:
        v = _round_bf16_rne(v)
    return v.to(DT).to(tl.float32)


@triton.jit
def _chain(v, denom, g_ptr, b_ptr, c, cmask, scale,
           HAS_BIAS: tl.constexpr, SILU: tl.constexpr, SOFT_BF16: tl.constexpr, DT: tl.constexpr,
           CHANNEL_AXIS: tl.constexpr):
    """The spec's steps on fp32 ``v`` (norm ``denom`` broadcast), channels along CHANNEL_AXIS."""
    n = _round(tl.div_rn(v, denom), DT, SOFT_BF16)  # IEEE division, as F.normalize
    y = _round(n * scale, DT, SOFT_BF16)
    gamma = tl.load(g_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    gamma = gamma[:, None] if CHANNEL_AXIS == 0 else gamma[None, :]
    y = _round(y * gamma, DT, SOFT_BF16)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        bias = bias[:, None] if CHANNEL_AXIS == 0 else bias[None, :]
        y = _round(y + bias, DT, SOFT_BF16)
    if SILU:
        y = _round(tl.div_rn(y, 1.0 + tl.exp(-y)), DT, SOFT_BF16)  # torch's y / (1 + exp(-y))
    return y


@triton.jit
def _channel_rms_norm_kernel(
    x_ptr, y_ptr, g_ptr, b_ptr,
    C, S, scale, eps,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, SOFT_BF16: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # program (block of s, b): y[b, :, s] = chain(x[b, :, s] / max(||x[b, :, s]||_2, eps))
    DT: tl.constexpr = x_ptr.dtype.element_ty
    s = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    pid_b = tl.program_id(1).to(tl.int64)
    smask = s < S
    base = pid_b * C * S
    chans = tl.arange(0, BLOCK_C)

    # pass 1: sum of squares over C, fp32 (a [BLOCK_C, BLOCK_S] accumulator, reduced at the end)
    acc = tl.zeros((BLOCK_C, BLOCK_S), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + chans
        mask = (c < C)[:, None] & smask[None, :]
        offs = base + (c.to(tl.int64) * S)[:, None] + s[None, :]
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc += v * v
    denom = tl.maximum(tl.sqrt_rn(tl.sum(acc, axis=0)), eps)[None, :]  # F.normalize's clamp_min

    # pass 2: the spec's chain with its roundings to x's dtype
    for c0 in range(0, C, BLOCK_C):
        c = c0 + chans
        cmask = c < C
        mask = cmask[:, None] & smask[None, :]
        offs = base + (c.to(tl.int64) * S)[:, None] + s[None, :]
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = _chain(v, denom, g_ptr, b_ptr, c, cmask, scale, HAS_BIAS, SILU, SOFT_BF16, DT, 0)
        tl.store(y_ptr + offs, y.to(DT), mask=mask)


@triton.jit
def _channel_rms_norm_rows_kernel(
    x_ptr, y_ptr, g_ptr, b_ptr, N, C, scale, eps,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, SOFT_BF16: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # channels-last x as [N, C] rows (N = B * S): ROWS whole rows a program, one read of x
    DT: tl.constexpr = x_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = (rows < N)[:, None] & cmask[None, :]
    offs = rows[:, None] * C + c[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    denom = tl.maximum(tl.sqrt_rn(tl.sum(v * v, axis=1)), eps)[:, None]
    y = _chain(v, denom, g_ptr, b_ptr, c, cmask, scale, HAS_BIAS, SILU, SOFT_BF16, DT, 1)
    tl.store(y_ptr + offs, y.to(DT), mask=mask)


def _rows(x, y, g, b, scale, eps, silu, has_bias, soft_bf16):
    """x (and y, made like it) channels-last dense: the rows kernel over ``[B * S, C]``."""
    channels = x.shape[1]
    n_rows = x.numel() // channels
    block_c, rows, warps = channel_rows_launch(channels, n_rows)
    _channel_rms_norm_rows_kernel[(cdiv(n_rows, rows),)](
        x, y, g, b, n_rows, channels, float(scale), float(eps),
        HAS_BIAS=has_bias, SILU=silu, SOFT_BF16=soft_bf16, ROWS=rows, BLOCK_C=block_c, num_warps=warps,
    )


def _columns(x, y, g, b, scale, eps, silu, has_bias, soft_bf16):
    """x (and y) contiguous ``[B, C, S]``: the two-pass kernel over position blocks."""
    batch, channels = x.shape[0], x.shape[1]
    positions = x.numel() // (batch * channels)
    block_c, block_s, warps = channel_norm_launch(channels, positions, x.element_size())
    # position blocks on grid axis 0 (up to 2**31 - 1 programs; axis 1 stops at 65535)
    _channel_rms_norm_kernel[(cdiv(positions, block_s), batch)](
        x, y, g, b, channels, positions, float(scale), float(eps),
        HAS_BIAS=has_bias, SILU=silu, SOFT_BF16=soft_bf16, BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=warps,
    )


def channel_rms_norm(x, gamma, bias=None, *, scale, eps=1e-12, silu=False):
    rows = not x.is_contiguous() and channels_last_rows(x)  # NHWC / NDHWC
    # rows: the same layout (empty_like preserves a dense format); else contiguous
    y = torch.empty_like(x) if rows else torch.empty_like(x, memory_format=torch.contiguous_format)
    if y.numel() == 0:
        return y
    g = gamma.reshape(-1).contiguous()
    b = g if bias is None else bias.reshape(-1).contiguous()
    launch = _rows if rows else _columns
    launch(x, y, g, b, scale, eps, bool(silu), bias is not None, interpreting() and x.dtype == torch.bfloat16)
    return y

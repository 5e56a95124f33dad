"""Triton kernels of the norm family: ``rms_norm`` (also fused with RoPE) and the adaLN ops.

One launch per op, a single pass over memory: each program keeps a tile of ``ROWS`` whole
rows in registers (fp32 math) and loads a per-batch/per-frame modulation row and the norm
weight/bias once for all of them. See README.md for the launch parameters.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdit.kernels.triton import _common as K
from fastdit.kernels.triton._support import cdiv, norm_launch
from fastdit.ops import _checks as C


# ---------------------------------------------------------------------------------------
# kernels: a program normalises a [ROWS, BLOCK_D] tile (ROWS consecutive rows, whole rows)
# ---------------------------------------------------------------------------------------
@triton.jit
def _rms_norm_kernel(
    x_ptr, sx_row, sx_d, res_ptr, sr_row, sr_d, y_ptr, s_ptr, w_ptr,
    n_rows, D, N_VAR, eps,
    HAS_WEIGHT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # y = s * rsqrt(mean(s[:N_VAR]^2) + eps) * w, s = x (+ residual, rounded to its dtype)
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < n_rows)[:, None] & (cols < D)[None, :]
    s = tl.load(x_ptr + (rows * sx_row)[:, None] + (cols * sx_d)[None, :], mask=mask, other=0.0)
    s = s.to(tl.float32)
    out_offs = (rows * D)[:, None] + cols[None, :]
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + (rows * sr_row)[:, None] + (cols * sr_d)[None, :], mask=mask,
                      other=0.0)
        s_out = (s + res.to(tl.float32)).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + out_offs, s_out, mask=mask)
        s = s_out.to(tl.float32)
    sq = tl.where((cols < N_VAR)[None, :], s * s, 0.0)
    y = s * tl.rsqrt(tl.sum(sq, axis=1) / N_VAR + eps)[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + out_offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_rope_kernel(
    x_ptr, w_ptr, cos_ptr, sc_t, sc_d, sin_ptr, ss_t, ss_d,
    n_rows, L, D, HALF, eps,
    HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # in place, per row of H*D: y = round(x * rsqrt(mean(x^2) + eps) * w) to x's dtype, then
    # every interleaved pair (2j, 2j+1) rotated by the row's cos/sin at j mod (D_head / 2)
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < n_rows
    mask = rmask[:, None] & (cols < D)[None, :]
    offs = (rows * D)[:, None] + cols[None, :]
    s = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = s * tl.rsqrt(tl.sum(s * s, axis=1) / D + eps)[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    y = y.to(x_ptr.dtype.element_ty).to(tl.float32)  # the normed tensor as rms_norm stores it
    y1, y2 = tl.split(tl.reshape(y, [ROWS, BLOCK_D // 2, 2]))
    pair = tl.arange(0, BLOCK_D // 2)
    pos = rows % L
    pmask = rmask[:, None] & (pair < D // 2)[None, :]
    i = pair % HALF
    cos = tl.load(cos_ptr + (pos * sc_t)[:, None] + (i * sc_d)[None, :], mask=pmask, other=0.0)
    sin = tl.load(sin_ptr + (pos * ss_t)[:, None] + (i * ss_d)[None, :], mask=pmask, other=0.0)
    cos, sin = cos.to(tl.float32), sin.to(tl.float32)
    o1, o2 = K.rotate_pairs(y1, y2, cos, sin)
    out = tl.reshape(tl.join(o1, o2), [ROWS, BLOCK_D])
    tl.store(x_ptr + offs, out.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def modulated_norm_tile(
    x_ptr, sxb, sxl, sxd,
    res_ptr, srb, srl, srd,
    r_ptr, w_ptr, bias_ptr,
    g_ptr, g_sb, g_sg, g_sd, g_tpg, g_val,
    sc_ptr, sc_sb, sc_sg, sc_sd, sc_tpg, sc_val,
    sh_ptr, sh_sb, sh_sg, sh_sd, sh_tpg, sh_val,
    n_rows, L, D, eps,
    IS_RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, TANH_SCALE: tl.constexpr,
    GATE_MODE: tl.constexpr, SCALE_MODE: tl.constexpr, SHIFT_MODE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """This program's ``[ROWS, BLOCK_D]`` tile of ``y`` (fp32), shared by the bf16 and the
    e4m3-emitting kernels; writes ``r`` when there is a residual. Returns ``(y, mask, rows,
    out_offs)``.

    [r = residual + gate * x (rounded to residual's dtype); h = r] else h = x;
    y = norm(h) * weight + bias;  y = y * factor + shift, factor = 1 + scale or tanh(scale).
    Modes: 0 = number (sc_val holds the factor itself), 1 = one row for the whole tile
    (loaded once, [1, BLOCK_D]), 2 = a row per row ([ROWS, BLOCK_D]).
    """
    row0 = tl.program_id(0) * ROWS
    rows = row0 + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    mask = (rows < n_rows)[:, None] & cmask[None, :]
    b = (rows // L).to(tl.int64)
    l = (rows % L).to(tl.int64)
    h = tl.load(x_ptr + (b * sxb + l * sxl)[:, None] + (cols * sxd)[None, :], mask=mask,
                other=0.0).to(tl.float32)
    out_offs = (rows.to(tl.int64) * D)[:, None] + cols[None, :]
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + (b * srb + l * srl)[:, None] + (cols * srd)[None, :], mask=mask,
                      other=0.0)
        if GATE_MODE == 0:
            gate = g_val
        else:
            gate = K.load_mod_tile(g_ptr, g_sb, g_sg, g_sd, g_tpg, row0, rows, L, cols, cmask,
                                   mask, GATE_MODE)
        r = (res.to(tl.float32) + h * gate).to(r_ptr.dtype.element_ty)
        tl.store(r_ptr + out_offs, r, mask=mask)
        h = r.to(tl.float32)
    if IS_RMS:
        y = h * tl.rsqrt(tl.sum(h * h, axis=1) / D + eps)[:, None]
    else:
        mean = tl.sum(h, axis=1) / D
        centered = tl.where(mask, h - mean[:, None], 0.0)
        y = centered * tl.rsqrt(tl.sum(centered * centered, axis=1) / D + eps)[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if SCALE_MODE == 0:
        factor = sc_val
    else:
        sc = K.load_mod_tile(sc_ptr, sc_sb, sc_sg, sc_sd, sc_tpg, row0, rows, L, cols, cmask,
                             mask, SCALE_MODE)
        if TANH_SCALE:
            factor = K.tanh_f32(sc)
        else:
            factor = 1.0 + sc
    if SHIFT_MODE == 0:
        shift = sh_val
    else:
        shift = K.load_mod_tile(sh_ptr, sh_sb, sh_sg, sh_sd, sh_tpg, row0, rows, L, cols, cmask,
                                mask, SHIFT_MODE)
    return y * factor + shift, mask, rows, out_offs


@triton.jit
def _norm_modulate_kernel(
    x_ptr, sxb, sxl, sxd,
    res_ptr, srb, srl, srd,
    y_ptr, r_ptr, w_ptr, bias_ptr,
    g_ptr, g_sb, g_sg, g_sd, g_tpg, g_val,
    sc_ptr, sc_sb, sc_sg, sc_sd, sc_tpg, sc_val,
    sh_ptr, sh_sb, sh_sg, sh_sd, sh_tpg, sh_val,
    n_rows, L, D, eps,
    IS_RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, TANH_SCALE: tl.constexpr,
    GATE_MODE: tl.constexpr, SCALE_MODE: tl.constexpr, SHIFT_MODE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # y = modulated norm of the tile (see modulated_norm_tile), stored in y's dtype
    y, mask, rows, out_offs = modulated_norm_tile(
        x_ptr, sxb, sxl, sxd, res_ptr, srb, srl, srd, r_ptr, w_ptr, bias_ptr,
        g_ptr, g_sb, g_sg, g_sd, g_tpg, g_val, sc_ptr, sc_sb, sc_sg, sc_sd, sc_tpg, sc_val,
        sh_ptr, sh_sb, sh_sg, sh_sd, sh_tpg, sh_val, n_rows, L, D, eps,
        IS_RMS, HAS_WEIGHT, HAS_BIAS, HAS_RESIDUAL, TANH_SCALE,
        GATE_MODE, SCALE_MODE, SHIFT_MODE, ROWS, BLOCK_D)
    tl.store(y_ptr + out_offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------
def _rows_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[rows, D]`` (a view when the leading dims merge, else a copy)."""
    return t.reshape(-1, t.shape[-1])


def rms_norm(x, weight, eps=1e-6, *, residual=None, variance_size=None):
    dim = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    s = None if residual is None else torch.empty(x.shape, dtype=residual.dtype, device=x.device)
    x2 = _rows_view(x)
    n_rows = x2.shape[0]
    if n_rows:
        r2 = x2 if residual is None else _rows_view(residual)
        w = x2 if weight is None else weight.contiguous()
        block, warps, rows = norm_launch(dim, n_rows, kind="rms")
        _rms_norm_kernel[(cdiv(n_rows, rows),)](
            x2, x2.stride(0), x2.stride(1), r2, r2.stride(0), r2.stride(1),
            y, y if s is None else s, w,
            n_rows, dim, int(variance_size or dim), float(eps),
            HAS_WEIGHT=weight is not None, HAS_RESIDUAL=residual is not None,
            ROWS=rows, BLOCK_D=block, num_warps=warps,
        )
    return y if residual is None else (y, s)


def rms_norm_rope_(x, weight, cos, sin, *, eps=1e-6, interleaved=True):
    tokens, heads, head_dim = x.shape[-3:]
    dim = heads * head_dim
    n_rows = x.numel() // dim
    if n_rows:
        block, warps, rows = norm_launch(dim, n_rows, kind="rms")
        w = x if weight is None else weight.contiguous()
        _rms_norm_rope_kernel[(cdiv(n_rows, rows),)](
            x, w, cos, cos.stride(0), cos.stride(1), sin, sin.stride(0), sin.stride(1),
            n_rows, tokens, dim, head_dim // 2, float(eps),
            HAS_WEIGHT=weight is not None, ROWS=rows, BLOCK_D=block, num_warps=warps,
        )
    return x


def _one_plus(value: float) -> float:
    return 1.0 + value


def modulated_norm_inputs(x, residual, gate, shift, scale, tanh_scale, bld):
    """What the kernels built on :func:`modulated_norm_tile` (bf16 and e4m3 outputs) take for
    ``x`` seen as ``bld = (B, L, D)`` (``B * L > 0``): ``(x3, r3, g, sc, sh, (block, warps,
    rows))``, x and residual as ``[B, L, D]`` views when possible, the packed gate, scale (as
    its factor: ``1 + scale``, or ``tanh(scale)`` with ``tanh_scale``) and shift, the launch."""
    x3 = x.reshape(bld)
    r3 = x3 if residual is None else residual.reshape(bld)
    g = K.pack_modulation(1.0 if gate is None else gate, x.shape, x3)
    sc = K.pack_modulation(scale, x.shape, x3, number=C.tanh_number if tanh_scale else _one_plus)
    sh = K.pack_modulation(shift, x.shape, x3)
    launch = norm_launch(bld[2], bld[0] * bld[1])
    K.mark_hoisted(launch[2], bld[1], [sc, sh] + ([g] if residual is not None else []))
    return x3, r3, g, sc, sh, launch


def _norm_modulate(x, residual, gate, shift, scale, weight, bias, eps, norm, tanh_scale):
    batch, length, dim = bld = C.canonical_shape(x.shape)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    r = None if residual is None else torch.empty(x.shape, dtype=residual.dtype, device=x.device)
    n_rows = batch * length
    if n_rows == 0:
        return y, r
    x3, r3, g, sc, sh, (block, warps, rows) = modulated_norm_inputs(
        x, residual, gate, shift, scale, tanh_scale, bld)
    _norm_modulate_kernel[(cdiv(n_rows, rows),)](
        x3, *x3.stride(), r3, *r3.stride(),
        y, y if r is None else r,
        x3 if weight is None else weight.contiguous(), x3 if bias is None else bias.contiguous(),
        *g.args(), *sc.args(), *sh.args(),
        n_rows, length, dim, float(eps),
        IS_RMS=norm == "rms", HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None, TANH_SCALE=tanh_scale,
        GATE_MODE=g.mode, SCALE_MODE=sc.mode, SHIFT_MODE=sh.mode,
        ROWS=rows, BLOCK_D=block, num_warps=warps,
    )
    return y, r


def layer_norm_scale_shift(x, *, shift, scale, weight=None, bias=None, eps=1e-6, norm="layer"):
    return _norm_modulate(x, None, None, shift, scale, weight, bias, eps, norm, False)[0]


def scale_residual_norm_scale_shift(residual, x, *, shift, scale, gate, weight=None, bias=None,
                                    eps=1e-6, norm="layer"):
    return _norm_modulate(x, residual, gate, shift, scale, weight, bias, eps, norm, False)


def norm_tanh_mul_add(x, *, shift, scale, weight=None, bias=None, eps=1e-6, norm="layer"):
    return _norm_modulate(x, None, None, shift, scale, weight, bias, eps, norm, True)[0]

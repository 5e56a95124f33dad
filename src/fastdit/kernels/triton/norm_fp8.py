"""Triton kernels of the fp8-emitting adaLN norms (``ops.norm_fp8``): the modulated norm of
``norm.py``'s ``_norm_modulate_kernel`` with a per-row e4m3 quantisation as its epilogue.

A program normalises a ``[ROWS, BLOCK_D]`` tile of whole rows in registers (the same tiles,
modulation modes and hoisting as the bf16 kernel), then takes each row's amax of the fp32
result and writes ``e4m3(y * 448 / amax)`` and ``amax / 448``: one read of x (and residual),
one byte per value written. The norm body is ``norm.py``'s ``modulated_norm_tile``, shared with
the bf16 kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdit.kernels.triton import _quant_common as Q
from fastdit.kernels.triton._support import cdiv, interpreting
from fastdit.kernels.triton.norm import modulated_norm_inputs, modulated_norm_tile
from fastdit.ops import _checks as C


@triton.jit
def _norm_modulate_fp8_kernel(
    x_ptr, sxb, sxl, sxd,
    res_ptr, srb, srl, srd,
    yq_ptr, ys_ptr, r_ptr, w_ptr, bias_ptr,
    g_ptr, g_sb, g_sg, g_sd, g_tpg, g_val,
    sc_ptr, sc_sb, sc_sg, sc_sd, sc_tpg, sc_val,
    sh_ptr, sh_sb, sh_sg, sh_sd, sh_tpg, sh_val,
    n_rows, L, D, eps,
    IS_RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    GATE_MODE: tl.constexpr, SCALE_MODE: tl.constexpr, SHIFT_MODE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr,
):
    # y = (norm(h) * weight + bias) * (1 + scale) + shift  (fp32, norm.modulated_norm_tile)
    # yq = e4m3(y * 448 / amax_row), ys = amax_row / 448
    y, mask, rows, out_offs = modulated_norm_tile(
        x_ptr, sxb, sxl, sxd, res_ptr, srb, srl, srd, r_ptr, w_ptr, bias_ptr,
        g_ptr, g_sb, g_sg, g_sd, g_tpg, g_val, sc_ptr, sc_sb, sc_sg, sc_sd, sc_tpg, sc_val,
        sh_ptr, sh_sb, sh_sg, sh_sd, sh_tpg, sh_val, n_rows, L, D, eps,
        IS_RMS, HAS_WEIGHT, HAS_BIAS, HAS_RESIDUAL, False,
        GATE_MODE, SCALE_MODE, SHIFT_MODE, ROWS, BLOCK_D)
    y = tl.where(mask, y, 0.0)
    scale, inv = Q.row_scales(tl.max(tl.abs(y), axis=1), Q.E4M3_MAX)
    tl.store(yq_ptr + out_offs, Q.to_e4m3(y * inv[:, None], INTERPRET), mask=mask)
    tl.store(ys_ptr + rows, scale, mask=rows < n_rows)


def _norm_modulate_fp8(x, residual, gate, shift, scale, weight, bias, eps, norm):
    batch, length, dim = bld = C.canonical_shape(x.shape)
    y_q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    y_scale = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    r = None if residual is None else torch.empty(x.shape, dtype=residual.dtype, device=x.device)
    n_rows = batch * length
    if n_rows == 0:
        return y_q, y_scale, r
    x3, r3, g, sc, sh, (block, warps, rows) = modulated_norm_inputs(
        x, residual, gate, shift, scale, False, bld)
    _norm_modulate_fp8_kernel[(cdiv(n_rows, rows),)](
        x3, *x3.stride(), r3, *r3.stride(), y_q, y_scale, y_q if r is None else r,
        x3 if weight is None else weight.contiguous(), x3 if bias is None else bias.contiguous(),
        *g.args(), *sc.args(), *sh.args(),
        n_rows, length, dim, float(eps),
        IS_RMS=norm == "rms", HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None,
        GATE_MODE=g.mode, SCALE_MODE=sc.mode, SHIFT_MODE=sh.mode,
        ROWS=rows, BLOCK_D=block, INTERPRET=interpreting(), num_warps=warps,
    )
    return y_q, y_scale, r


def layer_norm_scale_shift_fp8(x, *, shift, scale, weight=None, bias=None, eps=1e-6,
                               norm="layer"):
    return _norm_modulate_fp8(x, None, None, shift, scale, weight, bias, eps, norm)[:2]


def scale_residual_norm_scale_shift_fp8(residual, x, *, shift, scale, gate, weight=None,
                                        bias=None, eps=1e-6, norm="layer"):
    return _norm_modulate_fp8(x, residual, gate, shift, scale, weight, bias, eps, norm)

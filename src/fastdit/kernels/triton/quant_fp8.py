"""Per-token e4m3 quantisation in Triton (``quantize_fp8``, ``gelu_tanh_fp8``) and the
``triton`` provider of ``linear_fp8``: this quantiser, then ``torch._scaled_mm``; inputs with
per-group scales go to the Triton product of ``gemm_fp8.py``.

A program quantises a tile of ``ROWS`` whole rows held in registers (one read of x, one
write of the e4m3 values and one fp32 scale per row): ``amax`` along the row, then
``scale = amax / 448`` and ``inv = 448 / amax`` correctly rounded, ``e4m3(x * inv)``. Bits
equal ``quant.formulas.quantize_fp8_rows``. Tiles come from ``norm_launch`` under the kinds
``"quant"`` and ``"quant_gelu"`` (whole rows, BLOCK_D the next power of two; the H200 entries
of ``TUNED`` at the Wan widths, ``benchmarks/tune_triton.py --only quant``). A tuned launch
with ``BLOCK_D < D`` runs the chunked kernel instead: the row in ``BLOCK_D``-wide chunks, read twice (the amax, then the quantisation; the
second read mostly from L2), the same bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdit.kernels.scaled_mm.ops import linear_fp8_scaled_mm_quantized
from fastdit.kernels.triton import _quant_common as Q
from fastdit.kernels.triton._support import cdiv, interpreting, norm_launch

@triton.jit
def gelu_tanh_f32(x, INTERPRET: tl.constexpr):
    """``x/2 (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``, in fp32.

    On the GPU tanh is the hardware's ``tanh.approx.f32`` (one MUFU operation, relative error
    below 2^-10.9, far under e4m3's rounding step of 2^-4 that follows). The interpreter
    computes the same function as ``x * sigmoid(2u) = x / (1 + exp(-2u))`` (``(1 + tanh(u)) /
    2 = sigmoid(2u)``; the exponent clamped so that it stays finite). The earlier tanh from
    exp and a division (with a series near 0) made the GELU quantiser compute-bound: 1.2-1.9
    TB/s against 3.5-4.3 without GELU (h200-run23)."""
    inner = (x + 0.044715 * x * x * x) * 0.7978845608028654  # sqrt(2 / pi)
    if INTERPRET:
        return x / (1.0 + tl.exp(tl.minimum(-2.0 * inner, 80.0)))
    half = 0.5 * x
    tanh = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [inner],
                                     dtype=tl.float32, is_pure=True, pack=1)
    return half + half * tanh


@triton.jit
def _quant_fp8_rows_kernel(x_ptr, sx_row, sx_col, out_ptr, scale_ptr, n_rows, D,
                           GELU: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                           INTERPRET: tl.constexpr):
    # x [n_rows, D] (strided) -> out [n_rows, D] e4m3, scale [n_rows] fp32 (per row);
    # with GELU the row is gelu_tanh(x) first
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    rmask = rows < n_rows
    x, cols, mask = _load_chunk(x_ptr, sx_row, sx_col, rows, rmask, 0, D, GELU, BLOCK_D,
                                INTERPRET)
    scale, inv = Q.row_scales(tl.max(tl.abs(x), axis=1), Q.E4M3_MAX)
    y = Q.to_e4m3(x * inv[:, None], INTERPRET)
    tl.store(out_ptr + (rows * D)[:, None] + cols[None, :], y, mask=mask)
    tl.store(scale_ptr + rows, scale, mask=rmask)


@triton.jit
def _quant_fp8_chunked_kernel(x_ptr, sx_row, sx_col, out_ptr, scale_ptr, n_rows, D,
                              GELU: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                              INTERPRET: tl.constexpr):
    # as _quant_fp8_rows_kernel, the row in BLOCK_D-wide chunks: pass 1 the amax, pass 2 the
    # e4m3 values (x read twice; the same bits: max is exact, the values recomputed alike)
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    rmask = rows < n_rows
    amax = tl.zeros([ROWS], tl.float32)
    for c0 in range(0, D, BLOCK_D):
        x, _, _ = _load_chunk(x_ptr, sx_row, sx_col, rows, rmask, c0, D, GELU, BLOCK_D,
                              INTERPRET)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
    scale, inv = Q.row_scales(amax, Q.E4M3_MAX)
    for c0 in range(0, D, BLOCK_D):
        x, cols, mask = _load_chunk(x_ptr, sx_row, sx_col, rows, rmask, c0, D, GELU, BLOCK_D,
                                    INTERPRET)
        tl.store(out_ptr + (rows * D)[:, None] + cols[None, :],
                 Q.to_e4m3(x * inv[:, None], INTERPRET), mask=mask)
    tl.store(scale_ptr + rows, scale, mask=rmask)


@triton.jit
def _load_chunk(x_ptr, sx_row, sx_col, rows, rmask, c0, D, GELU: tl.constexpr,
                BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr):
    """``(x, cols, mask)``: columns ``[c0, c0 + BLOCK_D)`` of the rows in fp32 (zeros past D),
    GELU applied, with their column indices and in-bounds mask."""
    cols = c0 + tl.arange(0, BLOCK_D)
    mask = rmask[:, None] & (cols < D)[None, :]
    x = tl.load(x_ptr + (rows * sx_row)[:, None] + (cols * sx_col)[None, :], mask=mask,
                other=0.0).to(tl.float32)
    if GELU:
        x = gelu_tanh_f32(x, INTERPRET)
    return x, cols, mask


def quant_launch(dim: int, n_rows: int, gelu: bool) -> tuple[int, int, int]:
    """``(BLOCK_D, num_warps, ROWS)`` of the row quantiser: :func:`norm_launch` with the kind
    ``"quant_gelu"`` or ``"quant"`` (a tuned entry for large inputs, ``BLOCK_D < D``: the
    chunked kernel; else the rule's whole rows)."""
    return norm_launch(dim, n_rows, kind="quant_gelu" if gelu else "quant")


def _quantize_rows(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dim = x.shape[-1]
    x2 = x.reshape(-1, dim)  # (T, D): a view when the leading dims merge
    out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    n_rows = x2.shape[0]
    if n_rows and dim:
        block, warps, rows = quant_launch(dim, n_rows, gelu)
        kernel = _quant_fp8_chunked_kernel if block < dim else _quant_fp8_rows_kernel
        kernel[(cdiv(n_rows, rows),)](
            x2, x2.stride(0), x2.stride(1), out, scale, n_rows, dim, GELU=gelu, ROWS=rows,
            BLOCK_D=block, INTERPRET=interpreting(), num_warps=warps)
    return out, scale


def quantize_fp8(x):
    return _quantize_rows(x, gelu=False)


def gelu_tanh_fp8(h):
    return _quantize_rows(h, gelu=True)


def linear_fp8(x, weight, weight_scale, bias=None, *, x_scale=None, out_dtype=None):
    if x_scale is not None and x_scale.dim() == x.dim():  # per-group scales: Triton product
        from fastdit.kernels.triton.gemm_fp8 import linear_fp8_grouped

        return linear_fp8_grouped(x, x_scale, weight, weight_scale, bias,
                                  out_dtype or torch.bfloat16)
    if x_scale is None:
        out_dtype = x.dtype
        x, x_scale = _quantize_rows(x, gelu=False)
    return linear_fp8_scaled_mm_quantized(x, x_scale, weight, weight_scale, bias,
                                          out_dtype or torch.bfloat16)

"""Per-token e4m3 quantisation in Triton (``quantize_fp8``, ``gelu_tanh_fp8``) and the
``triton`` provider of ``linear_fp8``: this quantiser, then ``torch._scaled_mm``; inputs with
per-group scales go to the Triton product of ``gemm_fp8.py``.

A program quantises ``ROWS`` whole rows held in registers (one read of x, one write of the
e4m3 values and one fp32 scale per row): ``amax`` along the row, then ``scale = amax / 448``
and ``inv = 448 / amax`` correctly rounded, ``e4m3(x * inv)``. Bits equal
``quant.formulas.quantize_fp8_rows``. A row is held in up to three power-of-two tiles
(``row_tiles``: 8960 as 8192 + 512 + 256) rather than one tile of the next power of two (which
left 45% of the lanes of the FFN's hidden state masked, and the GELU variant is
compute-bound). The launch (ROWS, warps) is ``norm_launch``'s rule or a tuned entry
(``TUNED[("quant" | "quant_gelu", D)]``, ``benchmarks/tune_triton.py --only quant``); a tuned
``BLOCK_D < D`` runs the chunked kernel instead: the row in ``BLOCK_D``-wide chunks, read
twice (the amax, then the quantisation; the second read mostly from L2), the same bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdit.kernels.scaled_mm.ops import linear_fp8_scaled_mm_quantized
from fastdit.kernels.triton import _quant_common as Q
from fastdit.kernels.triton._support import (cdiv, interpreting, next_pow2, norm_launch, prev_pow2,
                                             tuned_launch)

@triton.jit
def gelu_tanh_f32(x):
    """``x/2 (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``, in fp32, computed as
    ``x * sigmoid(2u) = x / (1 + exp(-2u))`` (the same function: ``(1 + tanh(u)) / 2 =
    sigmoid(2u)``): one exp and one division a value, no cancellation near 0 (so no series),
    and for very negative x ``x / (1 + e^80) ~= 0`` (the exponent clamped so that it stays
    finite). About half the instructions of the tanh form,
    which made the GELU quantiser compute-bound (1.2-1.9 TB/s against 3.5-4.3 without GELU,
    h200 tune sweep)."""
    inner = (x + 0.044715 * x * x * x) * 0.7978845608028654  # sqrt(2 / pi)
    return x / (1.0 + tl.exp(tl.minimum(-2.0 * inner, 80.0)))


@triton.jit
def _quant_fp8_rows_kernel(x_ptr, sx_row, sx_col, out_ptr, scale_ptr, n_rows, D,
                           GELU: tl.constexpr, ROWS: tl.constexpr, T0: tl.constexpr,
                           T1: tl.constexpr, T2: tl.constexpr, INTERPRET: tl.constexpr):
    # x [n_rows, D] (strided) -> out [n_rows, D] e4m3, scale [n_rows] fp32 (per row);
    # with GELU the row is gelu_tanh(x) first. A row is held whole in up to three
    # power-of-two tiles: columns [0, T0), [T0, T0 + T1), [T0 + T1, T0 + T1 + T2) (T1, T2
    # zero when unused; row_tiles)
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    rmask = rows < n_rows
    x0, cols0, mask0 = _load_chunk(x_ptr, sx_row, sx_col, rows, rmask, 0, D, GELU, T0)
    amax = tl.max(tl.abs(x0), axis=1)
    if T1 > 0:
        x1, cols1, mask1 = _load_chunk(x_ptr, sx_row, sx_col, rows, rmask, T0, D, GELU, T1)
        amax = tl.maximum(amax, tl.max(tl.abs(x1), axis=1))
    if T2 > 0:
        x2, cols2, mask2 = _load_chunk(x_ptr, sx_row, sx_col, rows, rmask, T0 + T1, D, GELU, T2)
        amax = tl.maximum(amax, tl.max(tl.abs(x2), axis=1))
    scale, inv = Q.row_scales(amax, Q.E4M3_MAX)
    tl.store(out_ptr + (rows * D)[:, None] + cols0[None, :],
             Q.to_e4m3(x0 * inv[:, None], INTERPRET), mask=mask0)
    if T1 > 0:
        tl.store(out_ptr + (rows * D)[:, None] + cols1[None, :],
                 Q.to_e4m3(x1 * inv[:, None], INTERPRET), mask=mask1)
    if T2 > 0:
        tl.store(out_ptr + (rows * D)[:, None] + cols2[None, :],
                 Q.to_e4m3(x2 * inv[:, None], INTERPRET), mask=mask2)
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
        x, _, _ = _load_chunk(x_ptr, sx_row, sx_col, rows, rmask, c0, D, GELU, BLOCK_D)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
    scale, inv = Q.row_scales(amax, Q.E4M3_MAX)
    for c0 in range(0, D, BLOCK_D):
        x, cols, mask = _load_chunk(x_ptr, sx_row, sx_col, rows, rmask, c0, D, GELU, BLOCK_D)
        tl.store(out_ptr + (rows * D)[:, None] + cols[None, :],
                 Q.to_e4m3(x * inv[:, None], INTERPRET), mask=mask)
    tl.store(scale_ptr + rows, scale, mask=rmask)


@triton.jit
def _load_chunk(x_ptr, sx_row, sx_col, rows, rmask, c0, D, GELU: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """``(x, cols, mask)``: columns ``[c0, c0 + BLOCK_D)`` of the rows in fp32 (zeros past D),
    GELU applied, with their column indices and in-bounds mask."""
    cols = c0 + tl.arange(0, BLOCK_D)
    mask = rmask[:, None] & (cols < D)[None, :]
    x = tl.load(x_ptr + (rows * sx_row)[:, None] + (cols * sx_col)[None, :], mask=mask,
                other=0.0).to(tl.float32)
    if GELU:
        x = gelu_tanh_f32(x)
    return x, cols, mask


def quant_launch(dim: int, n_rows: int, gelu: bool) -> tuple[int, int, int]:
    """``(BLOCK_D, num_warps, ROWS)`` of the row quantiser: a tuned entry
    ``TUNED[("quant_gelu" if gelu else "quant", D)]`` for large inputs (``BLOCK_D < D``: the
    chunked kernel), else :func:`norm_launch`'s whole rows."""
    return tuned_launch("quant_gelu" if gelu else "quant", dim, n_rows) or norm_launch(dim, n_rows)


def row_tiles(dim: int, min_tile: int = 256) -> tuple[int, int, int]:
    """Up to three power-of-two tiles ``(T0, T1, T2)`` (zeros unused) that cover a row of
    ``dim`` values with few masked lanes, largest first: 1536 -> (1024, 512, 0), 5120 ->
    (4096, 1024, 0), 8960 -> (8192, 512, 256), 13824 -> (8192, 4096, 2048) (3.6% masked;
    one tile of next_pow2(dim) masks 25%, 37.5%, 45% and 16% of these)."""
    min_tile = min(min_tile, next_pow2(dim))
    tiles, rest = [], dim
    while rest > 0 and len(tiles) < 2:
        tile = max(prev_pow2(rest), min_tile)
        tiles.append(tile)
        rest -= tile
    if rest > 0:
        tiles.append(max(next_pow2(rest), min_tile))
    tiles += [0] * (3 - len(tiles))
    return tiles[0], tiles[1], tiles[2]


def _quantize_rows(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dim = x.shape[-1]
    x2 = x.reshape(-1, dim)  # (T, D): a view when the leading dims merge
    out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    n_rows = x2.shape[0]
    if n_rows and dim:
        block, warps, rows = quant_launch(dim, n_rows, gelu)
        grid = (cdiv(n_rows, rows),)
        args = (x2, x2.stride(0), x2.stride(1), out, scale, n_rows, dim)
        if block < dim:
            _quant_fp8_chunked_kernel[grid](*args, GELU=gelu, ROWS=rows, BLOCK_D=block,
                                            INTERPRET=interpreting(), num_warps=warps)
        else:
            t0, t1, t2 = row_tiles(dim)
            _quant_fp8_rows_kernel[grid](*args, GELU=gelu, ROWS=rows, T0=t0, T1=t1, T2=t2,
                                         INTERPRET=interpreting(), num_warps=warps)
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

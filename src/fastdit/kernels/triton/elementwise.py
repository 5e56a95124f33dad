"""Triton kernel of the elementwise modulation ops: ``mul_add`` and ``scale_shift``.

Both are ``out = add + x * (k + mul)`` over x seen as ``[B*L, D]``:

* ``mul_add(a, c, gate=, k=)``: x = a, mul = gate (a modulation), add = c (a full tensor, which is a
  per-token modulation layout), out in c's dtype;
* ``scale_shift(x, shift=, scale=, scale_constant=)``: mul = scale, add = shift, k = scale_constant, out in x's dtype.

2-D tiles of ``ROWS x BLOCK_D`` values (about 4096); modulation rows shared by all rows of a
tile are loaded once as a ``[1, BLOCK_D]`` vector.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdit.kernels.triton import _common as K
from fastdit.kernels.triton._support import cdiv, elementwise_launch, next_pow2
from fastdit.ops import _checks as C


@triton.jit
def _fma_kernel(
    x_ptr, sxb, sxl, sxd,
    a_ptr, a_sb, a_sg, a_sd, a_tpg, a_val,
    m_ptr, m_sb, m_sg, m_sd, m_tpg, m_val,
    out_ptr, n_rows, L, D, k,
    ADD_MODE: tl.constexpr, MUL_MODE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # out = add + x * (k + mul); mode 0: a number (k already includes a numeric mul)
    row0 = tl.program_id(0) * ROWS
    rows = row0 + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    mask = (rows < n_rows)[:, None] & cmask[None, :]
    b = (rows // L).to(tl.int64)
    l = (rows % L).to(tl.int64)
    x = tl.load(x_ptr + (b * sxb + l * sxl)[:, None] + (cols * sxd)[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    if MUL_MODE == 0:
        y = x * k
    else:
        y = x * (k + K.load_mod_tile(m_ptr, m_sb, m_sg, m_sd, m_tpg, row0, rows, L, cols, cmask, mask,
                               MUL_MODE))
    if ADD_MODE == 0:
        y = a_val + y
    else:
        y = K.load_mod_tile(a_ptr, a_sb, a_sg, a_sd, a_tpg, row0, rows, L, cols, cmask, mask,
                      ADD_MODE) + y
    out = out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


def _fma(x, mul, add, k, out_dtype, add_is_full=False):
    batch, length, dim = C.canonical_shape(x.shape)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    n_rows = batch * length
    if n_rows == 0 or dim == 0:
        return out
    x3 = x.reshape(batch, length, dim)
    m = K.pack_modulation(mul, x.shape, x3)
    if add_is_full:  # a full tensor like x: its [B, L, D] view is a per-token layout
        a = K.pack_modulation(add.reshape(batch, length, dim), (batch, length, dim), x3)
    else:
        a = K.pack_modulation(add, x.shape, x3)
    block, rows, warps = elementwise_launch(dim)
    rows = min(rows, next_pow2(n_rows))
    K.mark_hoisted(rows, length, (m, a))
    k_total = float(k) + (m.value if m.mode == K.MOD_NUMBER else 0.0)
    grid = (cdiv(n_rows, rows), cdiv(dim, block))
    _fma_kernel[grid](
        x3, *x3.stride(), *a.args(), *m.args(), out, n_rows, length, dim, k_total,
        ADD_MODE=a.mode, MUL_MODE=m.mode, ROWS=rows, BLOCK_D=block, num_warps=warps,
    )
    return out


def mul_add(a, c, *, gate, k=0):
    return _fma(a, gate, c, k, c.dtype, add_is_full=True)


def scale_shift(x, *, shift, scale, scale_constant=1.0):
    return _fma(x, scale, shift, scale_constant, x.dtype)

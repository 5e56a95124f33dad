"""Triton helpers shared by the kernels: modulation loading, RoPE pairs, tanh, fp8 rounding,
host packing.

Imported only by the kernel modules (it imports Triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdit.ops import _checks as C

# Modulation modes (constexpr): how a kernel gets the scale/shift/gate value of a row.
MOD_NUMBER = 0  # a Python number, passed as a scalar
MOD_HOISTED = 1  # a tensor whose row is the same for all rows of a tile: loaded once
MOD_PER_ROW = 2  # a tensor loaded row by row (per-token modulation, or unaligned groups)


@triton.jit
def load_mod_tile(ptr, sb, sg, sd, tpg, row0, rows, L, cols, cmask, mask, MODE: tl.constexpr):
    """A modulation laid out as ``[Bm, G, D]`` (see ``_checks.modulation_layout``) over a tile of
    rows ``rows`` (of x seen as ``[B*L, D]``) and columns ``cols``, as fp32.

    MODE 1: every row of the tile uses the row of ``row0``: loaded once, ``[1, BLOCK_D]``.
    MODE 2: a row per row, ``[ROWS, BLOCK_D]``.
    """
    if MODE == 1:
        b0 = (row0 // L).to(tl.int64)
        g0 = ((row0 % L) // tpg).to(tl.int64)
        v = tl.load(ptr + b0 * sb + g0 * sg + cols * sd, mask=cmask, other=0.0)
        return v.to(tl.float32)[None, :]
    else:
        b = (rows // L).to(tl.int64)
        g = ((rows % L) // tpg).to(tl.int64)
        v = tl.load(ptr + (b * sb + g * sg)[:, None] + (cols * sd)[None, :], mask=mask, other=0.0)
        return v.to(tl.float32)


@triton.jit
def rotate_pairs(x1, x2, cos, sin):
    """RoPE on pairs (fp32): ``(x1 cos - x2 sin, x1 sin + x2 cos)``."""
    return x1 * cos - x2 * sin, x1 * sin + x2 * cos


@triton.jit
def tanh_f32(x):
    """tanh in fp32 from exp (portable: CUDA, ROCm and the interpreter); a series near 0."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    x2 = ax * ax
    small = ax * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
    t = tl.where(ax < 0.125, small, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def round_to_fp8_grid(x, MANT: tl.constexpr, EMIN: tl.constexpr):
    """``x`` (fp32) rounded to nearest-even on the grid of an fp8 format with ``MANT`` mantissa
    bits and smallest normal exponent ``EMIN`` (subnormals included), still as fp32.

    Used only under the Triton interpreter, whose fp32 -> fp8 cast truncates and drops the
    mantissa carry; after this rounding the cast is exact. On a GPU the hardware cast (RTNE)
    is used directly.
    """
    bits = x.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127
    e = tl.maximum(e, EMIN)
    quantum = ((e - MANT + 127) << 23).to(tl.float32, bitcast=True)
    z = tl.abs(x) / quantum
    z = (z + 12582912.0) - 12582912.0  # 1.5 * 2**23: round to nearest even for |z| < 2**22
    z = z * quantum
    return tl.where(bits < 0, -z, z)  # the sign bit: -0 and values rounding to zero keep it


FP8_GRID = {  # cache dtype -> (mantissa bits, smallest normal exponent)
    torch.float8_e4m3fn: (3, -6),
    torch.float8_e5m2: (2, -14),
}


class ModArgs:
    """A modulation packed for a kernel: pointer, strides of its ``[Bm, G, D]`` layout, tokens
    per group, scalar value and mode."""

    __slots__ = ("ptr", "sb", "sg", "sd", "tpg", "value", "mode")

    def __init__(self, ptr, sb, sg, sd, tpg, value, mode):
        self.ptr, self.sb, self.sg, self.sd = ptr, sb, sg, sd
        self.tpg, self.value, self.mode = tpg, value, mode

    def args(self) -> tuple:
        return (self.ptr, self.sb, self.sg, self.sd, self.tpg, self.value)


def pack_modulation(value, x_shape, dummy: torch.Tensor, number=None) -> ModArgs:
    """Pack ``value`` (number or tensor) for a kernel; ``number(v)`` maps a Python number to the
    scalar the kernel uses (e.g. ``1 + v``). The mode is MOD_NUMBER or MOD_PER_ROW here;
    :func:`mark_hoisted` upgrades aligned modulations to MOD_HOISTED."""
    layout, per_group = C.modulation_layout(value, x_shape)
    if not isinstance(layout, torch.Tensor):
        scalar = float(layout) if number is None else float(number(float(layout)))
        return ModArgs(dummy, 0, 0, 0, 1, scalar, MOD_NUMBER)
    sb, sg, sd = layout.stride()
    return ModArgs(layout, sb, sg, sd, max(int(per_group), 1), 0.0, MOD_PER_ROW)


def mark_hoisted(rows: int, length: int, mods) -> None:
    """Mark the tensor modulations whose row is the same for every row of every tile as
    hoisted (loaded once per tile). Tiles are ``[p*rows, (p+1)*rows)``: when ``rows`` divides
    L and the modulation's group size (tokens per frame, or L), no tile straddles a batch row
    or a group. Per-token modulations (1 token per group) stay per-row unless rows == 1."""
    for m in mods:
        if m.mode != MOD_NUMBER and m.tpg % rows == 0 and length % rows == 0:
            m.mode = MOD_HOISTED

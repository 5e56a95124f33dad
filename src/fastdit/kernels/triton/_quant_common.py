"""Triton helpers of the quantising kernels: rounding, fp8 casts, row scales.

They reproduce :mod:`fastdit.quant.formulas` bit for bit provided the kernel is launched with
``enable_fp_fusion=False`` where it rounds ``x * inv`` (a fused ``x * inv + c`` would round
the exact product, not the fp32 one). Imported only by kernel modules (it imports Triton).
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastdit.kernels.triton import _common as K

E4M3_MAX = tl.constexpr(448.0)
INT8_MAX = tl.constexpr(127.0)
SCALE_FLOOR = tl.constexpr(1e-12)
_ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23
_I2F_MAGIC_INT = tl.constexpr(0x4B400000)  # the bits of 12582912.0
I2F_OFFSET = tl.constexpr(12582912.0)


@triton.jit
def round_half_even(x):
    """Round fp32 ``x`` (``|x| < 2**22``) to the nearest integer, ties to even (as torch.round)."""
    return (x + _ROUND_MAGIC) - _ROUND_MAGIC


@triton.jit
def row_scales(amax, QMAX: tl.constexpr):
    """``(scale, inv)`` = ``(a / QMAX, QMAX / a)`` with ``a = max(amax, 1e-12)``, both
    correctly rounded (``/`` in Triton is an approximate division on NVIDIA GPUs)."""
    a = tl.maximum(amax, SCALE_FLOOR)
    qmax = tl.full(a.shape, QMAX, tl.float32)
    return tl.math.div_rn(a, qmax), tl.math.div_rn(qmax, a)


@triton.jit
def to_int8(y):
    """``clamp(round_half_even(y), -127, 127)`` as int8."""
    r = round_half_even(y)
    return tl.minimum(tl.maximum(r, -INT8_MAX), INT8_MAX).to(tl.int8)


@triton.jit
def to_e4m3(y, INTERPRET: tl.constexpr):
    """``clamp(y, +-448)`` cast to float8_e4m3fn, rounding to nearest even.

    The GPU cast rounds to nearest even; the interpreter's truncates, so there the value is
    first rounded onto the e4m3 grid (after which its cast is exact)."""
    y = tl.minimum(tl.maximum(y, -E4M3_MAX), E4M3_MAX)
    if INTERPRET:
        y = K.round_to_fp8_grid(y, 3, -6)
    return y.to(tl.float8e4nv)


@triton.jit
def int32_plus_magic_as_f32(x):
    """int32 ``x`` (``|x| < 2**22``) as the fp32 value ``x + 12582912`` (:data:`I2F_OFFSET`),
    by an integer add and a bitcast: full-rate ALU work where a conversion instruction runs at
    quarter rate on recent NVIDIA GPUs. The caller subtracts the offset, fused into its next
    multiply: ``(x + c) * s - c * s``."""
    return (x + _I2F_MAGIC_INT).to(tl.float32, bitcast=True)

"""Elementwise modulation ops: ``mul_add`` (gated residual) and ``scale_shift``."""

from __future__ import annotations

from fastdit.ops import _checks as C
from fastdit.ops.registry import dispatch


def mul_add_native(a, b, c, k=0):
    return (c.float() + a.float() * (float(k) + C.modulation_fp32(b, a.shape))).to(c.dtype)


def scale_shift_native(x, scale, shift, scale_constant=1.0):
    y = x.float() * (float(scale_constant) + C.modulation_fp32(scale, x.shape)) + C.modulation_fp32(shift, x.shape)
    return y.to(x.dtype)


def mul_add(a, b, c, k=0):
    """Gated residual: ``out = c + a * (k + b)``.

    Shapes: ``a`` and ``c`` ``[B, L, D]`` (or ``[..., D]``, same shape); ``b`` in any
    modulation mode (number, ``[D]``, ``[B, D]``, ``[B, 1, D]``, ``[B, L, D]``,
    ``[B, F, 1, D]``); ``k`` a number. Math in fp32; ``out`` in ``c.dtype``.
    """
    op = "mul_add"
    C.check_tensor(op, "a", a)
    C.check_tensor(op, "c", c)
    C.check_same_device(op, a=a, c=c)
    if a.shape != c.shape:
        raise C.fail(op, "a and c must have the same shape", a=a, c=c)
    C.check_modulation(op, "b", b, a)
    return dispatch(op, a, b, c, k)


def scale_shift(x, scale, shift, scale_constant=1.0):
    """``y = x * (scale_constant + scale) + shift``.

    Shapes: ``x [B, L, D]`` (or ``[..., D]``); ``scale``/``shift`` in any modulation mode.
    Math in fp32; ``y`` in ``x.dtype``.
    """
    op = "scale_shift"
    C.check_tensor(op, "x", x)
    C.check_modulation(op, "scale", scale, x)
    C.check_modulation(op, "shift", shift, x)
    return dispatch(op, x, scale, shift, scale_constant)

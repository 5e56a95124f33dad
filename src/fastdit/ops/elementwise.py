"""Elementwise modulation ops: ``mul_add`` (gated residual) and ``scale_shift``.

Dispatch as in :mod:`fastdit.ops.norm` (a plan per argument signature; custom ops under
``torch.compile``); modulations are keyword-only, ordered ``shift, scale, gate``.
"""

from __future__ import annotations

from fastdit.ops import _checks as C
from fastdit.ops.library import LibraryOp, compiling
from fastdit.ops.registry import define_op, new_plan, plans
from fastdit.ops.registry import signature as sig


# ---------------------------------------------------------------------------------------
# specification (native provider)
# ---------------------------------------------------------------------------------------
def mul_add_native(a, c, *, gate, k=0):
    return (c.float() + a.float() * (float(k) + C.modulation_fp32(gate, a.shape))).to(c.dtype)


def scale_shift_native(x, *, shift, scale, scale_constant=1.0):
    y = x.float() * (float(scale_constant) + C.modulation_fp32(scale, x.shape)) + C.modulation_fp32(shift, x.shape)
    return y.to(x.dtype)


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
def _check_mul_add(a, c, *, gate, k=0) -> None:
    op = "mul_add"
    C.check_tensor(op, "a", a)
    C.check_tensor(op, "c", c)
    C.check_same_device(op, a=a, c=c)
    if a.shape != c.shape:
        raise C.fail(op, "a and c must have the same shape", a=a, c=c)
    C.check_modulation(op, "gate", gate, a)
    if not C.is_number(k):
        raise C.fail(op, f"k must be a number, got {C.describe(k)}")


def _check_scale_shift(x, *, shift, scale, scale_constant=1.0) -> None:
    op = "scale_shift"
    C.check_tensor(op, "x", x)
    C.check_modulation(op, "shift", shift, x)
    C.check_modulation(op, "scale", scale, x)
    if not C.is_number(scale_constant):
        raise C.fail(op, f"scale_constant must be a number, got {C.describe(scale_constant)}")


# ---------------------------------------------------------------------------------------
# public ops
# ---------------------------------------------------------------------------------------
def mul_add(a, c, *, gate, k=0):
    """Gated residual: ``out = c + a * (k + gate)``.

    Shapes: ``a`` and ``c`` ``[B, L, D]`` (or ``[..., D]``, same shape); ``gate`` in any
    modulation mode (number, ``[D]``, ``[B, D]``, ``[B, 1, D]``, ``[B, L, D]``,
    ``[B, F, 1, D]``); ``k`` a number. Math in fp32; ``out`` in ``c.dtype``.
    """
    if compiling():
        return _LIB_MUL_ADD(a, c, gate, k)
    return _plan_mul_add(a, c, gate, k).fn(a, c, gate=gate, k=k)


def _plan_mul_add(a, c, gate, k):
    key = (sig(a), sig(c), sig(gate), sig(k))
    try:
        return plans("mul_add")[key]
    except (KeyError, TypeError):
        _check_mul_add(a, c, gate=gate, k=k)
        return new_plan("mul_add", key, (a, c), {"gate": gate, "k": k})


def scale_shift(x, *, shift, scale, scale_constant=1.0):
    """``y = x * (scale_constant + scale) + shift``.

    Shapes: ``x [B, L, D]`` (or ``[..., D]``); ``shift``/``scale`` in any modulation mode;
    ``scale_constant`` a number. Math in fp32; ``y`` in ``x.dtype``.
    """
    if compiling():
        return _LIB_SCALE_SHIFT(x, shift, scale, scale_constant)
    return _plan_scale_shift(x, shift, scale, scale_constant).fn(
        x, shift=shift, scale=scale, scale_constant=scale_constant)


def _plan_scale_shift(x, shift, scale, scale_constant):
    key = (sig(x), sig(shift), sig(scale), sig(scale_constant))
    try:
        return plans("scale_shift")[key]
    except (KeyError, TypeError):
        kwargs = {"shift": shift, "scale": scale, "scale_constant": scale_constant}
        _check_scale_shift(x, **kwargs)
        return new_plan("scale_shift", key, (x,), kwargs)


define_op("mul_add", mul_add, _plan_mul_add)
define_op("scale_shift", scale_shift, _plan_scale_shift)

_LIB_MUL_ADD = LibraryOp(
    "mul_add", mul_add, (("a", "Tensor"), ("c", "Tensor"), ("gate", "mod"), ("k", "float")),
    "Tensor", _check_mul_add, mul_add_native)
_LIB_SCALE_SHIFT = LibraryOp(
    "scale_shift", scale_shift,
    (("x", "Tensor"), ("shift", "mod"), ("scale", "mod"), ("scale_constant", "float")),
    "Tensor", _check_scale_shift, scale_shift_native)

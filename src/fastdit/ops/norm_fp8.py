"""The adaLN norm ops with an fp8 output: the modulated norm and its per-token e4m3
quantisation in one pass, so the fp8 product that follows (``ops.linear_fp8`` with
``x_scale``) reads one byte per value and needs no quantisation pass of its own.

    y        = norm(h) * (1 + scale) + shift        (fp32, as layer_norm_scale_shift; not rounded)
    y_q, sy  = quantize_fp8_rows(y)                  per token: sy = max(amax, 1e-12) / 448

``layer_norm_scale_shift_fp8`` takes ``h = x``; ``scale_residual_norm_scale_shift_fp8`` takes
``h = r = residual + gate * x`` (rounded to residual's dtype, and returned, as in
``scale_residual_norm_scale_shift``). Modulations are keyword-only, in the family's order
``shift, scale, gate``; dispatch (a plan per argument signature, a custom op under
``torch.compile``) as in :mod:`fastdit.ops.norm`.
"""

from __future__ import annotations

from fastdit.ops.library import LibraryOp, compiling
from fastdit.ops.norm import (_NORM_PARAMS, _check_norm_family, _check_residual_family,
                              _gated_residual, _modulated)
from fastdit.ops.registry import define_op, new_plan, plans
from fastdit.ops.registry import signature as sig
from fastdit.quant.formulas import quantize_fp8_rows


# ---------------------------------------------------------------------------------------
# specification (native provider)
# ---------------------------------------------------------------------------------------
def layer_norm_scale_shift_fp8_native(x, *, shift, scale, weight=None, bias=None, eps=1e-6,
                                      norm="layer"):
    return quantize_fp8_rows(_modulated(x, shift, scale, weight, bias, eps, norm))


def scale_residual_norm_scale_shift_fp8_native(residual, x, *, shift, scale, gate, weight=None,
                                               bias=None, eps=1e-6, norm="layer"):
    r = _gated_residual(residual, x, gate)
    y_q, y_scale = quantize_fp8_rows(_modulated(r, shift, scale, weight, bias, eps, norm))
    return y_q, y_scale, r


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
def _check_layer_norm_fp8(x, *, shift, scale, weight=None, bias=None, eps=1e-6,
                          norm="layer") -> None:
    _check_norm_family("layer_norm_scale_shift_fp8", x, {"shift": shift, "scale": scale}, weight,
                       bias, eps, norm)


def _check_scale_residual_fp8(residual, x, *, shift, scale, gate, weight=None, bias=None,
                              eps=1e-6, norm="layer") -> None:
    _check_residual_family("scale_residual_norm_scale_shift_fp8", residual, x,
                           {"shift": shift, "scale": scale, "gate": gate}, weight, bias, eps, norm)


# ---------------------------------------------------------------------------------------
# public ops
# ---------------------------------------------------------------------------------------
def layer_norm_scale_shift_fp8(x, *, shift, scale, weight=None, bias=None, eps=1e-6,
                               norm="layer"):
    """:func:`~fastdit.ops.layer_norm_scale_shift` quantised per token to e4m3 in the same pass.

    Shapes and modulation modes as ``layer_norm_scale_shift``. Returns
    ``(y_q [..., D] float8_e4m3fn, y_scale [...] fp32)``, ``y ~= y_q * y_scale[..., None]``,
    quantised from the fp32 ``y`` (not from ``y`` rounded to x's dtype).
    """
    if compiling():
        return _LIB_LAYER_NORM_FP8(x, shift, scale, weight, bias, eps, norm)
    return _plan_layer_norm_fp8(x, shift, scale, weight, bias, eps, norm).fn(
        x, shift=shift, scale=scale, weight=weight, bias=bias, eps=eps, norm=norm)


def _plan_layer_norm_fp8(x, shift, scale, weight, bias, eps, norm):
    key = (sig(x), sig(shift), sig(scale), sig(weight), sig(bias), eps, norm)
    try:
        return plans("layer_norm_scale_shift_fp8")[key]
    except (KeyError, TypeError):
        kwargs = dict(shift=shift, scale=scale, weight=weight, bias=bias, eps=eps, norm=norm)
        _check_layer_norm_fp8(x, **kwargs)
        return new_plan("layer_norm_scale_shift_fp8", key, (x,), kwargs)


def scale_residual_norm_scale_shift_fp8(residual, x, *, shift, scale, gate, weight=None,
                                        bias=None, eps=1e-6, norm="layer"):
    """:func:`~fastdit.ops.scale_residual_norm_scale_shift` with ``y`` quantised per token.

    ``r = residual + gate * x`` (rounded to residual's dtype), ``y = norm(r) * (1 + scale) +
    shift`` in fp32, quantised per token. Returns ``(y_q float8_e4m3fn, y_scale [...] fp32,
    r in residual.dtype)``.
    """
    if compiling():
        return _LIB_SCALE_RESIDUAL_FP8(residual, x, shift, scale, gate, weight, bias, eps, norm)
    return _plan_scale_residual_fp8(residual, x, shift, scale, gate, weight, bias, eps, norm).fn(
        residual, x, shift=shift, scale=scale, gate=gate, weight=weight, bias=bias, eps=eps,
        norm=norm)


def _plan_scale_residual_fp8(residual, x, shift, scale, gate, weight, bias, eps, norm):
    key = (sig(residual), sig(x), sig(shift), sig(scale), sig(gate), sig(weight), sig(bias), eps,
           norm)
    try:
        return plans("scale_residual_norm_scale_shift_fp8")[key]
    except (KeyError, TypeError):
        kwargs = dict(shift=shift, scale=scale, gate=gate, weight=weight, bias=bias, eps=eps,
                      norm=norm)
        _check_scale_residual_fp8(residual, x, **kwargs)
        return new_plan("scale_residual_norm_scale_shift_fp8", key, (residual, x), kwargs)


# ---------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------
define_op("layer_norm_scale_shift_fp8", layer_norm_scale_shift_fp8, _plan_layer_norm_fp8)
define_op("scale_residual_norm_scale_shift_fp8", scale_residual_norm_scale_shift_fp8,
          _plan_scale_residual_fp8)

_LIB_LAYER_NORM_FP8 = LibraryOp(
    "layer_norm_scale_shift_fp8", layer_norm_scale_shift_fp8,
    (("x", "Tensor"), ("shift", "mod"), ("scale", "mod")) + _NORM_PARAMS,
    "(Tensor, Tensor)", _check_layer_norm_fp8, layer_norm_scale_shift_fp8_native)
_LIB_SCALE_RESIDUAL_FP8 = LibraryOp(
    "scale_residual_norm_scale_shift_fp8", scale_residual_norm_scale_shift_fp8,
    (("residual", "Tensor"), ("x", "Tensor"), ("shift", "mod"), ("scale", "mod"), ("gate", "mod"))
    + _NORM_PARAMS,
    "(Tensor, Tensor, Tensor)", _check_scale_residual_fp8, scale_residual_norm_scale_shift_fp8_native)

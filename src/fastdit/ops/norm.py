"""Normalisation ops: ``rms_norm`` and the fused norm + modulation family used by DiT blocks.

Each public op dispatches through its plan (:mod:`fastdit.ops.registry`): on the first call
with a given argument signature it validates the arguments (``ValueError`` naming the op and
the shapes) and chooses the provider; later calls with that signature go straight to it.
Under ``torch.compile`` it calls its custom op (:mod:`fastdit.ops.library`) instead. The
``*_native`` functions below are the specification: plain torch, math in fp32, results stored
in the input dtype. Modulations (``shift``, ``scale``, ``gate``) are keyword-only, in that
order, in every op of the family.
"""

from __future__ import annotations

import torch

from fastdit.ops import _checks as C
from fastdit.ops.library import LibraryOp, compiling
from fastdit.ops.registry import define_op, new_plan, plans
from fastdit.ops.registry import signature as sig


# ---------------------------------------------------------------------------------------
# specification (native provider)
# ---------------------------------------------------------------------------------------
def _normalize(x32: torch.Tensor, weight, bias, eps: float, norm: str) -> torch.Tensor:
    """``norm(x) * weight + bias`` in fp32; ``norm`` is "layer" (mean, variance) or "rms"."""
    if norm == "layer":
        mean = x32.mean(dim=-1, keepdim=True)
        centered = x32 - mean
        y = centered * torch.rsqrt(centered.square().mean(dim=-1, keepdim=True) + eps)
    else:
        y = x32 * torch.rsqrt(x32.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y


def rms_norm_native(x, weight, eps=1e-6, *, residual=None, variance_size=None):
    s = x if residual is None else (x.float() + residual.float()).to(residual.dtype)
    s32 = s.float()
    head = s32 if variance_size is None else s32[..., :variance_size]
    y = s32 * torch.rsqrt(head.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    y = y.to(x.dtype)
    return y if residual is None else (y, s)


def _modulated(h, shift, scale, weight, bias, eps, norm) -> torch.Tensor:
    """``norm(h) * (1 + scale) + shift`` in fp32 (not rounded)."""
    y = _normalize(h.float(), weight, bias, eps, norm)
    return y * (1.0 + C.modulation_fp32(scale, h.shape)) + C.modulation_fp32(shift, h.shape)


def _gated_residual(residual, x, gate) -> torch.Tensor:
    """``residual + gate * x`` in fp32, rounded to residual's dtype."""
    return (residual.float() + x.float() * C.modulation_fp32(gate, x.shape)).to(residual.dtype)


def layer_norm_scale_shift_native(x, *, shift, scale, weight=None, bias=None, eps=1e-6,
                                  norm="layer"):
    return _modulated(x, shift, scale, weight, bias, eps, norm).to(x.dtype)


def scale_residual_norm_scale_shift_native(residual, x, *, shift, scale, gate, weight=None,
                                           bias=None, eps=1e-6, norm="layer"):
    r = _gated_residual(residual, x, gate)
    return _modulated(r, shift, scale, weight, bias, eps, norm).to(x.dtype), r


def norm_tanh_mul_add_native(x, *, shift, scale, weight=None, bias=None, eps=1e-6, norm="layer"):
    y = _normalize(x.float(), weight, bias, eps, norm)
    scale32 = C.modulation_fp32(scale, x.shape)
    tanh_scale = (torch.tanh(scale32) if isinstance(scale32, torch.Tensor)
                  else C.tanh_number(scale32))
    return (y * tanh_scale + C.modulation_fp32(shift, x.shape)).to(x.dtype)


# ---------------------------------------------------------------------------------------
# validation (run on the first call of each argument signature, and while tracing)
# ---------------------------------------------------------------------------------------
def _check_norm_family(op, x, mods: dict, weight, bias, eps, norm) -> None:
    C.check_tensor(op, "x", x)
    C.check_norm_kind(op, norm)
    C.check_eps(op, eps)
    C.check_affine(op, x, weight, bias)
    for name, value in mods.items():
        C.check_modulation(op, name, value, x)


def _check_rms_norm(x, weight, eps=1e-6, *, residual=None, variance_size=None) -> None:
    op = "rms_norm"
    C.check_tensor(op, "x", x)
    C.check_eps(op, eps)
    C.check_affine(op, x, weight, None)
    if residual is not None:
        C.check_tensor(op, "residual", residual)
        C.check_same_device(op, x=x, residual=residual)
        if residual.shape != x.shape:
            raise C.fail(op, "residual must have the shape of x", x=x, residual=residual)
    if variance_size is not None and not (C.is_number(variance_size)
                                          and 0 < int(variance_size) <= x.shape[-1]):
        raise C.fail(op, f"variance_size must be in [1, D={x.shape[-1]}], got {variance_size}", x=x)


def _check_layer_norm_scale_shift(x, *, shift, scale, weight=None, bias=None, eps=1e-6,
                                  norm="layer") -> None:
    _check_norm_family("layer_norm_scale_shift", x, {"shift": shift, "scale": scale},
                       weight, bias, eps, norm)


def _check_residual_family(op, residual, x, mods: dict, weight, bias, eps, norm) -> None:
    """:func:`_check_norm_family` for the ops that add a gated ``x`` to ``residual`` first."""
    C.check_tensor(op, "residual", residual)
    _check_norm_family(op, x, mods, weight, bias, eps, norm)
    C.check_same_device(op, residual=residual, x=x)
    if residual.shape != x.shape:
        raise C.fail(op, "residual must have the shape of x", residual=residual, x=x)


def _check_scale_residual(residual, x, *, shift, scale, gate, weight=None, bias=None, eps=1e-6,
                          norm="layer") -> None:
    _check_residual_family("scale_residual_norm_scale_shift", residual, x,
                           {"shift": shift, "scale": scale, "gate": gate}, weight, bias, eps, norm)


def _check_norm_tanh_mul_add(x, *, shift, scale, weight=None, bias=None, eps=1e-6,
                             norm="layer") -> None:
    _check_norm_family("norm_tanh_mul_add", x, {"shift": shift, "scale": scale}, weight, bias,
                       eps, norm)


# ---------------------------------------------------------------------------------------
# public ops
# ---------------------------------------------------------------------------------------
def rms_norm(x, weight, eps=1e-6, *, residual=None, variance_size=None):
    """Root-mean-square norm, optionally fused with a residual add.

    ``y = s / sqrt(mean(s[..., :N]**2) + eps) * weight`` with ``s = x + residual`` when a
    residual is given (else ``s = x``) and ``N = variance_size or D``.

    Shapes: ``x [..., D]``, ``weight [D]`` or None, ``residual`` like ``x``.
    Dtypes: fp32/fp16/bf16; math in fp32; ``y`` in ``x.dtype``, ``s`` in ``residual.dtype``.
    Returns ``y``, or ``(y, s)`` with a residual.
    """
    if compiling():
        if residual is None:
            return _LIB_RMS_NORM(x, weight, eps, variance_size)
        return _LIB_RMS_NORM_RESIDUAL(x, weight, eps, residual, variance_size)
    return _plan_rms_norm(x, weight, eps, residual, variance_size).fn(
        x, weight, eps, residual=residual, variance_size=variance_size)


def _plan_rms_norm(x, weight, eps, residual, variance_size):
    key = (sig(x), sig(weight), eps, sig(residual), variance_size)
    try:
        return plans("rms_norm")[key]
    except (KeyError, TypeError):
        _check_rms_norm(x, weight, eps, residual=residual, variance_size=variance_size)
        return new_plan("rms_norm", key, (x, weight, eps),
                        {"residual": residual, "variance_size": variance_size})


def layer_norm_scale_shift(x, *, shift, scale, weight=None, bias=None, eps=1e-6, norm="layer"):
    """adaLN modulation: ``y = norm(x) * (1 + scale) + shift``.

    ``norm(x) = (x - mean) / sqrt(var + eps) * weight + bias`` for ``norm="layer"``, or
    ``x / sqrt(mean(x**2) + eps) * weight + bias`` for ``"rms"`` (weight/bias optional, [D]).
    Shapes: ``x [B, L, D]`` (or ``[..., D]``); ``shift``/``scale`` in any modulation mode
    (number, ``[D]``, ``[B, D]``, ``[B, 1, D]``, ``[B, L, D]``, ``[B, F, 1, D]``).
    Math in fp32; ``y`` in ``x.dtype``.
    """
    if compiling():
        return _LIB_LAYER_NORM_SCALE_SHIFT(x, shift, scale, weight, bias, eps, norm)
    return _plan_layer_norm_scale_shift(x, shift, scale, weight, bias, eps, norm).fn(
        x, shift=shift, scale=scale, weight=weight, bias=bias, eps=eps, norm=norm)


def _plan_layer_norm_scale_shift(x, shift, scale, weight, bias, eps, norm):
    key = (sig(x), sig(shift), sig(scale), sig(weight), sig(bias), eps, norm)
    try:
        return plans("layer_norm_scale_shift")[key]
    except (KeyError, TypeError):
        kwargs = dict(shift=shift, scale=scale, weight=weight, bias=bias, eps=eps, norm=norm)
        _check_layer_norm_scale_shift(x, **kwargs)
        return new_plan("layer_norm_scale_shift", key, (x,), kwargs)


def scale_residual_norm_scale_shift(residual, x, *, shift, scale, gate, weight=None, bias=None,
                                    eps=1e-6, norm="layer"):
    """Gated residual add, then adaLN: ``r = residual + gate * x``; ``y = norm(r) * (1 + scale) + shift``.

    ``r`` is rounded to ``residual.dtype`` before the norm, so the fused result equals the
    two-step one. ``gate`` may be the integer 1. Shapes: ``residual`` and ``x`` ``[B, L, D]``;
    shift/scale/gate in any modulation mode. Returns ``(y in x.dtype, r in residual.dtype)``.
    """
    if compiling():
        return _LIB_SCALE_RESIDUAL(residual, x, shift, scale, gate, weight, bias, eps, norm)
    return _plan_scale_residual(residual, x, shift, scale, gate, weight, bias, eps, norm).fn(
        residual, x, shift=shift, scale=scale, gate=gate, weight=weight, bias=bias, eps=eps,
        norm=norm)


def _plan_scale_residual(residual, x, shift, scale, gate, weight, bias, eps, norm):
    key = (sig(residual), sig(x), sig(shift), sig(scale), sig(gate), sig(weight), sig(bias), eps,
           norm)
    try:
        return plans("scale_residual_norm_scale_shift")[key]
    except (KeyError, TypeError):
        kwargs = dict(shift=shift, scale=scale, gate=gate, weight=weight, bias=bias, eps=eps,
                      norm=norm)
        _check_scale_residual(residual, x, **kwargs)
        return new_plan("scale_residual_norm_scale_shift", key, (residual, x), kwargs)


def norm_tanh_mul_add(x, *, shift, scale, weight=None, bias=None, eps=1e-6, norm="layer"):
    """``y = norm(x) * tanh(scale) + shift``; norm, shapes and dtypes as in
    :func:`layer_norm_scale_shift`."""
    if compiling():
        return _LIB_NORM_TANH_MUL_ADD(x, shift, scale, weight, bias, eps, norm)
    return _plan_norm_tanh_mul_add(x, shift, scale, weight, bias, eps, norm).fn(
        x, shift=shift, scale=scale, weight=weight, bias=bias, eps=eps, norm=norm)


def _plan_norm_tanh_mul_add(x, shift, scale, weight, bias, eps, norm):
    key = (sig(x), sig(shift), sig(scale), sig(weight), sig(bias), eps, norm)
    try:
        return plans("norm_tanh_mul_add")[key]
    except (KeyError, TypeError):
        kwargs = dict(shift=shift, scale=scale, weight=weight, bias=bias, eps=eps, norm=norm)
        _check_norm_tanh_mul_add(x, **kwargs)
        return new_plan("norm_tanh_mul_add", key, (x,), kwargs)


# ---------------------------------------------------------------------------------------
# registration: the plan functions (for registry.plan_for) and the custom ops
# ---------------------------------------------------------------------------------------
define_op("rms_norm", rms_norm, _plan_rms_norm)
define_op("layer_norm_scale_shift", layer_norm_scale_shift, _plan_layer_norm_scale_shift)
define_op("scale_residual_norm_scale_shift", scale_residual_norm_scale_shift, _plan_scale_residual)
define_op("norm_tanh_mul_add", norm_tanh_mul_add, _plan_norm_tanh_mul_add)

_NORM_PARAMS = (("weight", "Tensor?"), ("bias", "Tensor?"), ("eps", "float"), ("norm", "str"))
_LIB_RMS_NORM = LibraryOp(
    "rms_norm", rms_norm,
    (("x", "Tensor"), ("weight", "Tensor?"), ("eps", "float"), ("variance_size", "int?")),
    "Tensor", _check_rms_norm, rms_norm_native)
_LIB_RMS_NORM_RESIDUAL = LibraryOp(
    "rms_norm_residual", rms_norm,
    (("x", "Tensor"), ("weight", "Tensor?"), ("eps", "float"), ("residual", "Tensor"),
     ("variance_size", "int?")),
    "(Tensor, Tensor)", _check_rms_norm, rms_norm_native)
_LIB_LAYER_NORM_SCALE_SHIFT = LibraryOp(
    "layer_norm_scale_shift", layer_norm_scale_shift,
    (("x", "Tensor"), ("shift", "mod"), ("scale", "mod")) + _NORM_PARAMS,
    "Tensor", _check_layer_norm_scale_shift, layer_norm_scale_shift_native)
_LIB_SCALE_RESIDUAL = LibraryOp(
    "scale_residual_norm_scale_shift", scale_residual_norm_scale_shift,
    (("residual", "Tensor"), ("x", "Tensor"), ("shift", "mod"), ("scale", "mod"), ("gate", "mod"))
    + _NORM_PARAMS,
    "(Tensor, Tensor)", _check_scale_residual, scale_residual_norm_scale_shift_native)
_LIB_NORM_TANH_MUL_ADD = LibraryOp(
    "norm_tanh_mul_add", norm_tanh_mul_add,
    (("x", "Tensor"), ("shift", "mod"), ("scale", "mod")) + _NORM_PARAMS,
    "Tensor", _check_norm_tanh_mul_add, norm_tanh_mul_add_native)

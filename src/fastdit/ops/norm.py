"""Normalisation ops: ``rms_norm`` and the fused norm + modulation family used by DiT blocks.

Each public op validates its arguments (``ValueError`` naming the op and the shapes) and
dispatches to a provider. The ``*_native`` functions below are the specification: plain torch,
math in fp32, results stored in the input dtype.
"""

from __future__ import annotations

import torch

from fastdit.ops import _checks as C
from fastdit.ops.registry import dispatch


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


def layer_norm_scale_shift_native(x, shift, scale, *, weight=None, bias=None, eps=1e-6,
                                  norm="layer"):
    y = _normalize(x.float(), weight, bias, eps, norm)
    return (y * (1.0 + C.modulation_fp32(scale, x.shape)) + C.modulation_fp32(shift, x.shape)).to(x.dtype)


def scale_residual_norm_scale_shift_native(residual, x, gate, shift, scale, *, weight=None,
                                           bias=None, eps=1e-6, norm="layer"):
    gate32 = C.modulation_fp32(gate, x.shape)
    r = (residual.float() + x.float() * gate32).to(residual.dtype)
    y = _normalize(r.float(), weight, bias, eps, norm)
    y = y * (1.0 + C.modulation_fp32(scale, x.shape)) + C.modulation_fp32(shift, x.shape)
    return y.to(x.dtype), r


def norm_tanh_mul_add_native(x, scale, shift, *, weight=None, bias=None, eps=1e-6, norm="layer"):
    y = _normalize(x.float(), weight, bias, eps, norm)
    scale32 = C.modulation_fp32(scale, x.shape)
    tanh_scale = (torch.tanh(scale32) if isinstance(scale32, torch.Tensor)
                  else C.tanh_number(scale32))
    return (y * tanh_scale + C.modulation_fp32(shift, x.shape)).to(x.dtype)


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
def _check_norm_family(op, x, mods: dict, weight, bias, eps, norm) -> None:
    C.check_tensor(op, "x", x)
    C.check_norm_kind(op, norm)
    C.check_eps(op, eps)
    C.check_affine(op, x, weight, bias)
    for name, value in mods.items():
        C.check_modulation(op, name, value, x)


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
    op = "rms_norm"
    C.check_tensor(op, "x", x)
    C.check_eps(op, eps)
    C.check_affine(op, x, weight, None)
    if residual is not None:
        C.check_tensor(op, "residual", residual)
        C.check_same_device(op, x=x, residual=residual)
        if residual.shape != x.shape:
            raise C.fail(op, "residual must have the shape of x", x=x, residual=residual)
    if variance_size is not None and not 0 < int(variance_size) <= x.shape[-1]:
        raise C.fail(op, f"variance_size must be in [1, D={x.shape[-1]}], got {variance_size}", x=x)
    return dispatch(op, x, weight, eps, residual=residual, variance_size=variance_size)


def layer_norm_scale_shift(x, shift, scale, *, weight=None, bias=None, eps=1e-6, norm="layer"):
    """adaLN modulation: ``y = norm(x) * (1 + scale) + shift``.

    ``norm(x) = (x - mean) / sqrt(var + eps) * weight + bias`` for ``norm="layer"``, or
    ``x / sqrt(mean(x**2) + eps) * weight + bias`` for ``"rms"`` (weight/bias optional, [D]).
    Shapes: ``x [B, L, D]`` (or ``[..., D]``); ``scale``/``shift`` in any modulation mode
    (number, ``[D]``, ``[B, D]``, ``[B, 1, D]``, ``[B, L, D]``, ``[B, F, 1, D]``).
    Math in fp32; ``y`` in ``x.dtype``.
    """
    _check_norm_family("layer_norm_scale_shift", x, {"shift": shift, "scale": scale},
                       weight, bias, eps, norm)
    return dispatch("layer_norm_scale_shift", x, shift, scale, weight=weight, bias=bias, eps=eps,
                    norm=norm)


def scale_residual_norm_scale_shift(residual, x, gate, shift, scale, *, weight=None, bias=None,
                                    eps=1e-6, norm="layer"):
    """Gated residual add, then adaLN: ``r = residual + gate * x``; ``y = norm(r) * (1 + scale) + shift``.

    ``r`` is rounded to ``residual.dtype`` before the norm, so the fused result equals the
    two-step one. ``gate`` may be the integer 1. Shapes: ``residual`` and ``x`` ``[B, L, D]``;
    gate/shift/scale in any modulation mode. Returns ``(y in x.dtype, r in residual.dtype)``.
    """
    op = "scale_residual_norm_scale_shift"
    C.check_tensor(op, "residual", residual)
    _check_norm_family(op, x, {"gate": gate, "shift": shift, "scale": scale}, weight, bias, eps, norm)
    C.check_same_device(op, residual=residual, x=x)
    if residual.shape != x.shape:
        raise C.fail(op, "residual must have the shape of x", residual=residual, x=x)
    return dispatch(op, residual, x, gate, shift, scale, weight=weight, bias=bias, eps=eps, norm=norm)


def norm_tanh_mul_add(x, scale, shift, *, weight=None, bias=None, eps=1e-6, norm="layer"):
    """``y = norm(x) * tanh(scale) + shift``; norm, shapes and dtypes as in
    :func:`layer_norm_scale_shift`."""
    _check_norm_family("norm_tanh_mul_add", x, {"scale": scale, "shift": shift}, weight, bias, eps, norm)
    return dispatch("norm_tanh_mul_add", x, scale, shift, weight=weight, bias=bias, eps=eps, norm=norm)

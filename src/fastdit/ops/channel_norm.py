"""``channel_rms_norm``: the Wan VAE's RMS norm over channels, optionally with the SiLU after it.

diffusers' ``WanRMS_norm`` (channel first) computes, in this order and with these roundings
(``x`` in fp16/bf16; in fp32 every rounding is exact)::

    n = round(x32 / max(||x32||_2 over C, eps))      F.normalize in fp32, stored in x.dtype
    y = round(n * scale)                              scale = sqrt(C), a Python number
    y = round(y * gamma)                              gamma [C, 1, 1(, 1)] in x.dtype
    y = round(y + bias)                               when there is a bias tensor
    y = round(silu(y))                                with silu=True (the block's activation)

Dispatch as in :mod:`fastdit.ops.norm` (a plan per argument signature; a custom op under
``torch.compile``). The native function is the specification: those steps, in plain torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdit.ops import _checks as C
from fastdit.ops.library import LibraryOp, compiling
from fastdit.ops.registry import define_op, new_plan, plans
from fastdit.ops.registry import signature as sig


# ---------------------------------------------------------------------------------------
# specification (native provider)
# ---------------------------------------------------------------------------------------
def channel_rms_norm_native(x, gamma, bias=None, *, scale, eps=1e-12, silu=False):
    x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    n = F.normalize(x32, dim=1, eps=eps).to(x.dtype)  # (B, C, ...) in x.dtype
    y = n * scale * gamma.view(1, -1, *([1] * (x.dim() - 2)))
    if bias is not None:
        y = y + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return F.silu(y) if silu else y


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
def _check_channel_rms_norm(x, gamma, bias=None, *, scale, eps=1e-12, silu=False) -> None:
    op = "channel_rms_norm"
    C.check_tensor(op, "x", x)
    if x.dim() < 3:
        raise C.fail(op, "x must be [B, C, ...] with at least one position dimension", x=x)
    channels = x.shape[1]
    for name, value in (("gamma", gamma), ("bias", bias)):
        if value is None and name == "bias":
            continue
        C.check_tensor(op, name, value)
        C.check_same_device(op, x=x, **{name: value})
        if value.numel() != channels:
            raise C.fail(op, f"{name} must hold one value per channel ({channels})", x=x, **{name: value})
        if value.dtype != x.dtype:
            raise C.fail(op, f"{name} must have x's dtype", x=x, **{name: value})
    if not C.is_number(scale):
        raise C.fail(op, f"scale must be a number, got {C.describe(scale)}")
    C.check_eps(op, eps)
    if not isinstance(silu, bool):
        raise C.fail(op, f"silu must be a bool, got {C.describe(silu)}")


# ---------------------------------------------------------------------------------------
# public op
# ---------------------------------------------------------------------------------------
def channel_rms_norm(x, gamma, bias=None, *, scale, eps=1e-12, silu=False):
    """RMS norm over the channel dimension (diffusers' ``WanRMS_norm``), then SiLU if asked.

    ``y = silu?(x / max(||x||_2 over C, eps) * scale * gamma + bias)`` with the roundings of
    the module docstring. Shapes: ``x [B, C, T, H, W]`` (or ``[B, C, H, W]``, any
    ``[B, C, ...]``); ``gamma``, ``bias`` one value per channel (``[C]`` or diffusers'
    ``[C, 1, 1, 1]``), in ``x.dtype``; ``scale`` a number (``sqrt(C)`` in the VAE). Returns
    ``y`` like ``x``.
    """
    if compiling():
        return _LIB_CHANNEL_RMS_NORM(x, gamma, bias, scale, eps, silu)
    return _plan_channel_rms_norm(x, gamma, bias, scale, eps, silu).fn(
        x, gamma, bias, scale=scale, eps=eps, silu=silu)


def _plan_channel_rms_norm(x, gamma, bias, scale, eps, silu):
    key = (sig(x), sig(gamma), sig(bias), scale, eps, silu)
    try:
        return plans("channel_rms_norm")[key]
    except (KeyError, TypeError):
        kwargs = {"scale": scale, "eps": eps, "silu": silu}
        _check_channel_rms_norm(x, gamma, bias, **kwargs)
        return new_plan("channel_rms_norm", key, (x, gamma, bias), kwargs)


define_op("channel_rms_norm", channel_rms_norm, _plan_channel_rms_norm)

_LIB_CHANNEL_RMS_NORM = LibraryOp(
    "channel_rms_norm", channel_rms_norm,
    (("x", "Tensor"), ("gamma", "Tensor"), ("bias", "Tensor?"), ("scale", "float"), ("eps", "float"),
     ("silu", "bool")),
    "Tensor", _check_channel_rms_norm, channel_rms_norm_native)

"""The matrix products: ``linear`` (every product of the model) and ``linear_gelu_tanh`` (a
linear layer followed by GELU with the tanh approximation, the Wan FFN's first half, so that
providers can fuse the activation into the product's epilogue)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdit.ops import _checks as C
from fastdit.ops.library import LibraryOp, compiling
from fastdit.ops.registry import define_op, new_plan, plans
from fastdit.ops.registry import signature as sig


def linear_native(x, weight, bias=None, *, out=None):
    if out is None:
        return F.linear(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])  # (T, K)
    out2 = out.view(-1, weight.shape[0])  # (T, N), a view: written in place
    if bias is None:
        torch.mm(x2, weight.t(), out=out2)
    else:
        torch.addmm(bias, x2, weight.t(), out=out2)
    return out


def linear_gelu_tanh_native(x, weight, bias=None):
    h = F.linear(x, weight, bias)
    return torch.ops.aten.gelu_(h, approximate="tanh")  # in place on the fresh product: one buffer


def _check_product(op, x, weight, bias) -> None:
    C.check_tensor(op, "x", x)
    C.check_tensor(op, "weight", weight, min_dim=2)
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise C.fail(op, f"weight must be [N, K={x.shape[-1]}]", x=x, weight=weight)
    if bias is not None:
        C.check_tensor(op, "bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise C.fail(op, f"bias must be [N={weight.shape[0]}]", weight=weight, bias=bias)
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        raise C.fail(op, "x, weight and bias must share a dtype", x=x, weight=weight, bias=bias)
    C.check_same_device(op, x=x, weight=weight, bias=bias)


def _check_linear(x, weight, bias=None, *, out=None) -> None:
    op = "linear"
    _check_product(op, x, weight, bias)
    if out is not None:
        C.check_tensor(op, "out", out)
        if (tuple(out.shape) != (*x.shape[:-1], weight.shape[0]) or out.dtype != x.dtype
                or not out.is_contiguous()):
            raise C.fail(op, f"out must be a contiguous [..., N={weight.shape[0]}] tensor of x's "
                             "dtype", x=x, out=out)
        C.check_same_device(op, x=x, out=out)


def _check_linear_gelu_tanh(x, weight, bias=None) -> None:
    _check_product("linear_gelu_tanh", x, weight, bias)


def linear(x, weight, bias=None, *, out=None):
    """``y = x W^T + b``: every matrix product of the model goes through this op.

    Shapes: ``x [..., K]``, ``weight [N, K]``, ``bias [N]`` or None; returns ``[..., N]`` in
    x's dtype (fp32 accumulation, as cuBLAS does). With ``out`` (a contiguous ``[..., N]``
    tensor of x's dtype and device) the product is written into it and ``out`` is returned:
    the chunked FFN writes each slice of its output this way, with no second buffer.
    """
    if compiling():
        if out is None:
            return _LIB_LINEAR(x, weight, bias)
        _LIB_LINEAR_OUT(x, weight, bias, out)
        return out
    return _plan_linear(x, weight, bias, out).fn(x, weight, bias, out=out)


def _plan_linear(x, weight, bias, out):
    key = (sig(x), sig(weight), sig(bias), sig(out))
    try:
        return plans("linear")[key]
    except (KeyError, TypeError):
        _check_linear(x, weight, bias, out=out)
        return new_plan("linear", key, (x, weight, bias), {"out": out})


def linear_gelu_tanh(x, weight, bias=None):
    """``y = gelu_tanh(x W^T + b)`` with ``gelu_tanh(u) = u/2 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))``.

    Shapes: ``x [..., K]``, ``weight [N, K]``, ``bias [N]`` or None; returns ``[..., N]`` in
    x's dtype. The native provider rounds the product to x's dtype before the activation (as
    ``nn.Linear`` then ``nn.GELU`` do); fused providers apply it to the fp32 accumulator, so
    results may differ by one unit in the last place.
    """
    if compiling():
        return _LIB_LINEAR_GELU_TANH(x, weight, bias)
    return _plan_linear_gelu_tanh(x, weight, bias).fn(x, weight, bias)


def _plan_linear_gelu_tanh(x, weight, bias):
    key = (sig(x), sig(weight), sig(bias))
    try:
        return plans("linear_gelu_tanh")[key]
    except (KeyError, TypeError):
        _check_linear_gelu_tanh(x, weight, bias)
        return new_plan("linear_gelu_tanh", key, (x, weight, bias), {})


define_op("linear", linear, _plan_linear)
define_op("linear_gelu_tanh", linear_gelu_tanh, _plan_linear_gelu_tanh)

_PRODUCT = (("x", "Tensor"), ("weight", "Tensor"), ("bias", "Tensor?"))
_LIB_LINEAR = LibraryOp("linear", linear, _PRODUCT, "Tensor", _check_linear, linear_native)
_LIB_LINEAR_OUT = LibraryOp("linear_out", linear, _PRODUCT + (("out", "Tensor!"),), "()",
                            _check_linear)
_LIB_LINEAR_GELU_TANH = LibraryOp("linear_gelu_tanh", linear_gelu_tanh, _PRODUCT, "Tensor",
                                  _check_linear_gelu_tanh, linear_gelu_tanh_native)

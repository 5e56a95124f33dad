"""The matrix products: ``linear`` (every product of the model) and ``linear_gelu_tanh`` (a
linear layer followed by GELU with the tanh approximation, the Wan FFN's first half, so that
providers can fuse the activation into the product's epilogue)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdit.ops import _checks as C
from fastdit.ops.registry import dispatch


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


def linear(x, weight, bias=None, *, out=None):
    """``y = x W^T + b``: every matrix product of the model goes through this op.

    Shapes: ``x [..., K]``, ``weight [N, K]``, ``bias [N]`` or None; returns ``[..., N]`` in
    x's dtype (fp32 accumulation, as cuBLAS does). With ``out`` (a contiguous ``[..., N]``
    tensor of x's dtype and device) the product is written into it and ``out`` is returned:
    the chunked FFN writes each slice of its output this way, with no second buffer.
    """
    op = "linear"
    _check_product(op, x, weight, bias)
    if out is not None:
        C.check_tensor(op, "out", out)
        if (tuple(out.shape) != (*x.shape[:-1], weight.shape[0]) or out.dtype != x.dtype
                or not out.is_contiguous()):
            raise C.fail(op, f"out must be a contiguous [..., N={weight.shape[0]}] tensor of x's "
                             "dtype", x=x, out=out)
        C.check_same_device(op, x=x, out=out)
    return dispatch(op, x, weight, bias, out=out)


def linear_gelu_tanh(x, weight, bias=None):
    """``y = gelu_tanh(x W^T + b)`` with ``gelu_tanh(u) = u/2 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))``.

    Shapes: ``x [..., K]``, ``weight [N, K]``, ``bias [N]`` or None; returns ``[..., N]`` in
    x's dtype. The native provider rounds the product to x's dtype before the activation (as
    ``nn.Linear`` then ``nn.GELU`` do); fused providers apply it to the fp32 accumulator, so
    results may differ by one unit in the last place.
    """
    op = "linear_gelu_tanh"
    _check_product(op, x, weight, bias)
    return dispatch(op, x, weight, bias)

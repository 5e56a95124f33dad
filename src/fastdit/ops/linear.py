"""``linear_gelu_tanh``: a linear layer followed by GELU (tanh approximation), the Wan FFN's
first half, so that providers can fuse the activation into the matrix product's epilogue."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdit.ops import _checks as C
from fastdit.ops.registry import dispatch


def linear_gelu_tanh_native(x, weight, bias=None):
    h = F.linear(x, weight, bias)
    return torch.ops.aten.gelu_(h, approximate="tanh")  # in place on the fresh product: one buffer


def linear_gelu_tanh(x, weight, bias=None):
    """``y = gelu_tanh(x W^T + b)`` with ``gelu_tanh(u) = u/2 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))``.

    Shapes: ``x [..., K]``, ``weight [N, K]``, ``bias [N]`` or None; returns ``[..., N]`` in
    x's dtype. The native provider rounds the product to x's dtype before the activation (as
    ``nn.Linear`` then ``nn.GELU`` do); fused providers apply it to the fp32 accumulator, so
    results may differ by one unit in the last place.
    """
    op = "linear_gelu_tanh"
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
    return dispatch(op, x, weight, bias)

"""The product of a linear layer for each way its weight is stored (phase 2 calls these from
``fastdit.layers.linear.Linear``), and the carrier of an activation already in e4m3.

``Linear`` (seams.md section 2) holds ``weight [N, K]``, ``bias [N]``, ``weight_scale`` (None for
a dense weight; ``[N]`` fp32 for an e4m3 one) and ``compute`` ("dense" | "fp8"):

========================  ===============================================================
dense weight              ``F.linear(x, W, b)``
e4m3, compute "dense"     ``F.linear(x, W_q * sw[:, None] (in x's dtype), b)``: fp8 storage only
e4m3, compute "fp8"       ``ops.linear_fp8``: x quantised per token by the op, or an
                          :class:`Fp8Activation` from the kernel that produced it
========================  ===============================================================
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from fastdit import ops
from fastdit.quant.formulas import FP8_DTYPE


class Fp8Activation(NamedTuple):
    """An activation in e4m3 with its fp32 scales, as a producer kernel wrote it:
    ``values [..., K]``, ``scale`` per token ``[...]`` or per group ``[..., G]``, and the dtype
    the consuming product returns."""

    values: torch.Tensor
    scale: torch.Tensor
    out_dtype: torch.dtype = torch.bfloat16

    @property
    def shape(self) -> torch.Size:
        """The shape of the activation (``values``)."""
        return self.values.shape

    def view_rows(self) -> "Fp8Activation":
        """The leading dimensions merged: ``values [T, K]``, ``scale [T]`` (or ``[T, G]``)."""
        k = self.values.shape[-1]
        per_group = self.scale.dim() == self.values.dim()
        scale = (self.scale.reshape(-1, self.scale.shape[-1]) if per_group
                 else self.scale.reshape(-1))
        return Fp8Activation(self.values.reshape(-1, k), scale, self.out_dtype)

    def rows(self, start: int, stop: int) -> "Fp8Activation":
        """Rows ``start .. stop - 1`` of a :meth:`view_rows` activation (views, no copy)."""
        return Fp8Activation(self.values[start:stop], self.scale[start:stop], self.out_dtype)

    def dequantize(self) -> torch.Tensor:
        """``values * scale`` in ``out_dtype`` (for a dense consumer)."""
        v = self.values.float()
        if self.scale.dim() == v.dim():
            v = (v.unflatten(-1, (self.scale.shape[-1], -1)) * self.scale[..., None]).flatten(-2)
        else:
            v = v * self.scale[..., None]
        return v.to(self.out_dtype)


def dequantize_weight(weight: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype
                      ) -> torch.Tensor:
    """``W = weight * weight_scale[:, None]`` in ``dtype`` (``[N, K]``)."""
    return (weight.float() * weight_scale.float()[:, None]).to(dtype)


def linear_forward(x, weight, bias=None, weight_scale=None, compute: str = "dense"):
    """``x W^T + b`` for the layer's storage and compute mode (table above). ``x``: a tensor
    ``[..., K]`` or an :class:`Fp8Activation`. Returns ``[..., N]``."""
    if weight_scale is None or weight.dtype != FP8_DTYPE:
        return F.linear(x.dequantize() if isinstance(x, Fp8Activation) else x, weight, bias)
    if compute == "dense":
        x = x.dequantize() if isinstance(x, Fp8Activation) else x
        b = None if bias is None else bias.to(x.dtype)
        return F.linear(x, dequantize_weight(weight, weight_scale, x.dtype), b)
    if compute != "fp8":
        raise ValueError(f"compute must be 'dense' or 'fp8', got {compute!r}")
    if isinstance(x, Fp8Activation):
        b = None if bias is None else bias.to(x.out_dtype)
        return ops.linear_fp8(x.values, weight, weight_scale, b, x_scale=x.scale,
                              out_dtype=x.out_dtype)
    return ops.linear_fp8(x, weight, weight_scale, None if bias is None else bias.to(x.dtype))


def linear_gelu_tanh_fp8(x, weight, bias, weight_scale) -> Fp8Activation:
    """The FFN's first half in fp8: ``gelu_tanh(x W^T + b)`` as an :class:`Fp8Activation` for the
    second product (the GELU and the quantisation are one pass: ``ops.gelu_tanh_fp8``)."""
    h = linear_forward(x, weight, bias, weight_scale, compute="fp8")
    values, scale = ops.gelu_tanh_fp8(h)
    return Fp8Activation(values, scale, h.dtype)

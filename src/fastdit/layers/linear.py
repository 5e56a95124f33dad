"""``Linear``: the one module every matrix product of the model goes through.

It holds ``weight [N, K]`` and ``bias [N]`` under ``nn.Linear``'s names (state dicts load both
ways) and calls :func:`fastdit.ops.linear` (or :func:`fastdit.ops.linear_gelu_tanh` for the
fused FFN half), so a provider, a weight format or an adapter set on a ``Linear`` reaches every
product, the chunked FFN included. Two seams:

* ``weight_scale`` (a buffer, None for a dense weight): when the quantisation subsystem stores
  ``weight`` in fp8 it sets per-output-channel scales ``[N]`` (fp32) with
  ``W = weight * weight_scale[:, None]``.
* ``compute``: how a weight stored that way is used: ``"dense"`` (default) dequantises it to
  the activation's dtype per call (fp8 storage only); ``"fp8"`` runs the product in e4m3
  (``ops.linear_fp8`` through :func:`fastdit.quant.linear.linear_forward`: the activation is
  quantised per token by the op, or arrives already in e4m3 as an
  :class:`~fastdit.quant.linear.Fp8Activation` from the kernel that produced it;
  :attr:`takes_fp8` says whether a producer should hand it one). Any ``Linear`` accepts an
  ``Fp8Activation`` (a dense one dequantises it first).
* ``adapters``: callables ``adapter(x, y) -> y`` applied after the product, in order (runtime
  LoRA adds ``scale * (x A^T) B^T``). With adapters the fused GELU path runs the adapted
  product first and the activation after, so the activation sees the adapted output.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastdit import ops
from fastdit.quant.formulas import FP8_DTYPE
from fastdit.quant.linear import Fp8Activation, dequantize_weight, linear_forward

Adapter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Linear(nn.Module):
    """``y = x W^T + b`` with ``x [..., K]``, ``W [N, K]``, ``b [N]``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.register_parameter(
            "bias", nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None)
        self.register_buffer("weight_scale", None)
        self.compute = "dense"  # "fp8": products in e4m3 (an e4m3 weight with scales needed)
        self.adapters: list[Adapter] = []
        if self.weight.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """torch's default: ``U(-1/sqrt(K), 1/sqrt(K))`` for weight and bias (``nn.Linear``'s
        kaiming_uniform with a=sqrt(5) is this same distribution)."""
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        self.weight.uniform_(-bound, bound, generator=generator)
        if self.bias is not None:
            self.bias.uniform_(-bound, bound, generator=generator)

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight as a dense matrix in ``dtype`` (dequantised when stored with scales)."""
        if self.weight_scale is None:
            return self.weight
        return dequantize_weight(self.weight, self.weight_scale, dtype)

    @property
    def takes_fp8(self) -> bool:
        """True when the product runs in e4m3 (``compute == "fp8"`` on an e4m3 weight with
        scales): a producer kernel may then hand :meth:`forward` an ``Fp8Activation``."""
        return (self.compute == "fp8" and self.weight_scale is not None
                and self.weight.dtype == FP8_DTYPE)

    def _adapt(self, x, y: torch.Tensor) -> torch.Tensor:
        x = x.dequantize() if isinstance(x, Fp8Activation) else x
        for adapter in self.adapters:
            y = adapter(x, y)
        return y

    def forward(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor:
        """``x W^T + b``: ``x [..., K]`` (or an ``Fp8Activation``) -> ``[..., N]``."""
        if self.takes_fp8:
            y = linear_forward(x, self.weight, self.bias, self.weight_scale, "fp8")
        else:
            dense = x.dequantize() if isinstance(x, Fp8Activation) else x
            y = ops.linear(dense, self.dense_weight(dense.dtype), self.bias)  # (..., N)
        return self._adapt(x, y) if self.adapters else y

    def gelu_tanh(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor:
        """``gelu_tanh(x W^T + b)``, fused into the product where a provider can."""
        if self.adapters or self.takes_fp8:
            return F.gelu(self.forward(x), approximate="tanh")
        x = x.dequantize() if isinstance(x, Fp8Activation) else x
        return ops.linear_gelu_tanh(x, self.dense_weight(x.dtype), self.bias)

    def gelu_tanh_fp8(self, x: torch.Tensor | Fp8Activation) -> Fp8Activation:
        """``gelu_tanh(x W^T + b)`` quantised per token to e4m3, for an fp8 product that
        follows (the FFN's hidden state): the product, then ``ops.gelu_tanh_fp8`` (GELU and
        quantisation in one pass)."""
        h = self.forward(x)  # (..., N) in the activation's dtype
        values, scale = ops.gelu_tanh_fp8(h)
        return Fp8Activation(values, scale, h.dtype)

    def into(self, x: torch.Tensor | Fp8Activation, out: torch.Tensor) -> torch.Tensor:
        """Write ``x W^T + b`` (adapters included) into the contiguous ``out [..., N]``."""
        if self.takes_fp8 or isinstance(x, Fp8Activation):
            return out.copy_(self.forward(x))  # the fp8 product (adapters included)
        y = ops.linear(x, self.dense_weight(x.dtype), self.bias, out=out)
        if self.adapters:
            y = self._adapt(x, y)  # LoRA adapters add into the contiguous out in place
            if y is not out:
                out.copy_(y)
        return out

    def extra_repr(self) -> str:
        stored = ("" if self.weight_scale is None else
                  f", weight {self.weight.dtype} with scales, compute={self.compute}")
        extra = f", adapters={len(self.adapters)}" if self.adapters else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{stored}{extra}")

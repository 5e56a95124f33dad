"""``Linear``: the one module every matrix product of the model goes through.

It holds ``weight [N, K]`` and ``bias [N]`` under ``nn.Linear``'s names (state dicts load both
ways) and calls :func:`fastdit.ops.linear` (or :func:`fastdit.ops.linear_gelu_tanh` for the
fused FFN half), so a provider, a weight format or an adapter set on a ``Linear`` reaches every
product, the chunked FFN included. Two seams:

* ``weight_scale`` (a buffer, None for a dense weight): when the quantisation subsystem stores
  ``weight`` in fp8 it sets per-output-channel scales ``[N]`` (fp32) with
  ``W = weight * weight_scale[:, None]``; the product then uses W in the activation's dtype.
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
        return (self.weight.float() * self.weight_scale.float()[:, None]).to(dtype)

    def _adapt(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for adapter in self.adapters:
            y = adapter(x, y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.linear(x, self.dense_weight(x.dtype), self.bias)  # (..., N)
        return self._adapt(x, y) if self.adapters else y

    def gelu_tanh(self, x: torch.Tensor) -> torch.Tensor:
        """``gelu_tanh(x W^T + b)``, fused into the product where a provider can."""
        if self.adapters:
            return F.gelu(self.forward(x), approximate="tanh")
        return ops.linear_gelu_tanh(x, self.dense_weight(x.dtype), self.bias)

    def into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write ``x W^T + b`` (adapters included) into the contiguous ``out [..., N]``."""
        y = ops.linear(x, self.dense_weight(x.dtype), self.bias, out=out)
        if self.adapters:
            y = self._adapt(x, y)  # LoRA adapters add into the contiguous out in place
            if y is not out:
                out.copy_(y)
        return out

    def extra_repr(self) -> str:
        stored = "" if self.weight_scale is None else f", weight {self.weight.dtype} with scales"
        extra = f", adapters={len(self.adapters)}" if self.adapters else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{stored}{extra}")

"""Normalisation layers: thin modules that hold the affine parameters and call fastdit.ops.

Every norm computes in fp32 and stores its result in the input's dtype (the op contract), so
these modules double as diffusers' ``FP32LayerNorm``. Parameter names (``weight``, ``bias``)
are those of ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm``.
"""

from __future__ import annotations

import torch
from torch import nn

from fastdit import ops
from fastdit.quant.linear import Fp8Activation


class _AffineNorm(nn.Module):
    """Holds a norm's optional ``weight`` (ones) and ``bias`` (zeros) of shape ``[dim]``."""

    def __init__(self, dim: int, eps: float, weight: bool, bias: bool) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.register_parameter("weight", nn.Parameter(torch.ones(dim)) if weight else None)
        self.register_parameter("bias", nn.Parameter(torch.zeros(dim)) if bias else None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"


class RMSNorm(_AffineNorm):
    """``y = x / sqrt(mean(x**2) + eps) * weight`` over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__(dim, eps, elementwise_affine, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class LayerNorm(_AffineNorm):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True) -> None:
        super().__init__(dim, eps, elementwise_affine, elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm_scale_shift(x, shift=0.0, scale=0.0, weight=self.weight,
                                          bias=self.bias, eps=self.eps)


class _ModulatedLayerNorm(LayerNorm):
    """A LayerNorm whose output an adaLN modulation follows: eps 1e-6, no affine by default."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False) -> None:
        super().__init__(dim, eps, elementwise_affine)


class LayerNormScaleShift(_ModulatedLayerNorm):
    """adaLN: ``y = LayerNorm(x) * (1 + scale) + shift`` (one fused op).

    ``shift``/``scale`` broadcast against ``x [B, L, D]`` in any modulation mode (``[B, D]``,
    per token ``[B, L, D]``, ...); they are usually fp32.
    """

    def forward(self, x: torch.Tensor, shift, scale) -> torch.Tensor:  # type: ignore[override]
        return ops.layer_norm_scale_shift(x, shift=shift, scale=scale, weight=self.weight,
                                          bias=self.bias, eps=self.eps)

    def fp8(self, x: torch.Tensor, shift, scale) -> Fp8Activation:
        """The same, quantised per token to e4m3 in the same pass
        (:func:`fastdit.ops.layer_norm_scale_shift_fp8`): the input of fp8 products."""
        values, y_scale = ops.layer_norm_scale_shift_fp8(x, shift=shift, scale=scale,
                                                         weight=self.weight, bias=self.bias,
                                                         eps=self.eps)
        return Fp8Activation(values, y_scale, x.dtype)


class ScaleResidualNormScaleShift(_ModulatedLayerNorm):
    """Gated residual, then adaLN, in one fused op.

    ``r = residual + gate * x`` (rounded to ``residual.dtype``) and
    ``y = LayerNorm(r) * (1 + scale) + shift``; returns ``(y, r)``. ``gate`` may be the
    number 1 (a plain residual add), ``shift``/``scale`` may be 0 (a plain norm).
    """

    def forward(self, residual: torch.Tensor, x: torch.Tensor, gate, shift=0.0,  # type: ignore[override]
                scale=0.0) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.scale_residual_norm_scale_shift(residual, x, shift=shift, scale=scale,
                                                   gate=gate, weight=self.weight, bias=self.bias,
                                                   eps=self.eps)

    def fp8(self, residual: torch.Tensor, x: torch.Tensor, gate, shift=0.0, scale=0.0
            ) -> tuple[Fp8Activation, torch.Tensor]:
        """The same with ``y`` quantised per token to e4m3 in the same pass
        (:func:`fastdit.ops.scale_residual_norm_scale_shift_fp8`): ``(y, r)``."""
        values, y_scale, r = ops.scale_residual_norm_scale_shift_fp8(
            residual, x, shift=shift, scale=scale, gate=gate, weight=self.weight, bias=self.bias,
            eps=self.eps)
        return Fp8Activation(values, y_scale, x.dtype), r

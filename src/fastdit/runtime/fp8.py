"""FP8 weight storage: per-output-channel e4m3 quantisation of the block ``Linear`` weights.

For a weight ``W [N, K]`` and the fp8 format's largest value ``M`` (448 for e4m3fn, 240 for
MI300's e4m3fnuz)::

    s_n = max(max_k |W[n, k]|, 1e-12) / M                                  scale  [N] fp32
    q[n, k] = e4m3(W[n, k] * (M / max(...)))  (round to nearest even, |.| <= M)  weight [N, K] fp8
    W ~= q * s[:, None]              dequantised in the compute dtype just before use

Error bound, element by element (``eps`` = 2^-3 is e4m3's relative spacing, ``tiny`` = its
smallest normal, 2^-6; e4m3's subnormals are spaced ``tiny * eps`` apart)::

    |W - q s| <= max(eps/2 * |W|, tiny * eps / 2 * s)      (plus fp32 rounding, ~1e-7 relative)

so every weight keeps about 4 significant bits (3.5% worst case, ~1.8% RMS for uniformly
spread weights): storage and host-to-device traffic halve against bf16. The forward's cosine
against bf16 weights is in ``docs/offload.md``. The quantiser is fastdit's one per-channel
weight quantiser, :func:`fastdit.quant.formulas.quantize_fp8_weight` (the same weights the
``quantize="fp8"`` precision setting converts); an all-zero row gets the floor scale and zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from fastdit.layers import Linear
from fastdit.quant.formulas import quantize_fp8_weight
from fastdit.quant.linear import dequantize_weight

WEIGHT_FORMATS = ("dense", "fp8")


def quantize_per_channel(weight: torch.Tensor, fp8_dtype: torch.dtype = torch.float8_e4m3fn,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``W [N, K]`` (any float dtype, any device) -> ``(q [N, K] fp8, scale [N] fp32)`` with
    ``W ~= q * scale[:, None]`` (see the module docstring for the formula and the bound);
    a ValueError for anything but a float matrix."""
    return quantize_fp8_weight(weight, fp8_dtype)


#: ``q * scale[:, None]`` in ``dtype``: exactly what ``Linear.dense_weight`` computes.
dequantize_per_channel = dequantize_weight


def error_bound(weight: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype) -> torch.Tensor:
    """The element-wise bound on ``|W - q s|`` stated in the module docstring (fp32)."""
    info = torch.finfo(fp8_dtype)
    w = weight.float().abs()
    s = scale.float()[:, None]
    return torch.maximum(w * (info.eps / 2), s * (info.tiny * info.eps / 2)) * (1 + 1e-6) + 1e-30


def block_linears(block: nn.Module) -> list[tuple[str, Linear]]:
    """``(dotted name, Linear)`` for every Linear inside ``block``: the weights stored in fp8."""
    return [(name, module) for name, module in block.named_modules() if isinstance(module, Linear)]


def check_weights(weights: str) -> str:
    if weights not in WEIGHT_FORMATS:
        from fastdit.errors import UserError

        raise UserError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    return weights

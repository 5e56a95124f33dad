"""FP8 weights for linear layers, converted in place once at load.

A quantisable layer is any module with a 2-D floating ``weight [N, K]``, a ``bias`` attribute
and a ``weight_scale`` attribute (``fastdit.layers.linear.Linear``, seams.md section 2): its
weight becomes e4m3 with per-output-channel fp32 scales,

    weight_scale[n] = max(max_k |W[n, k]|, 1e-12) / 448
    weight[n, k]    = e4m3(clamp(W[n, k] * (448 / amax[n]), +-448))      W ~= weight * weight_scale[:, None]

(:func:`fastdit.quant.formulas.quantize_fp8_weight`); the bias stays in its dtype. When the
module has a ``compute`` attribute it is set to ``compute`` ("fp8": the product runs through
``ops.linear_fp8``; "dense": the weight is dequantised to the activation's dtype per call).
Layers whose qualified name the precision setting keeps dense (embedders, modulation, head)
are left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fastdit.quant.config import PrecisionConfig
from fastdit.quant.formulas import FP8_DTYPE, quantize_fp8_weight

log = logging.getLogger("fastdit.quant")


@dataclass(frozen=True)
class WeightReport:
    """What :func:`quantize_linear_weights_` changed."""

    layers: tuple[str, ...]  # qualified names of the layers now in fp8
    kept_dense: tuple[str, ...]  # quantisable layers the setting kept dense
    bytes_before: int  # weight bytes of the converted layers, before
    bytes_after: int  # ... and after (fp8 weights + fp32 scales)

    def describe(self) -> str:
        if self.layers and not self.bytes_before:  # e.g. a streamed store that holds them in e4m3
            return (f"fp8 weights: {len(self.layers)} linear layers, stored in e4m3 already; "
                    f"{len(self.kept_dense)} kept dense")
        return (f"fp8 weights: {len(self.layers)} linear layers, {format_bytes(self.bytes_before)} "
                f"-> {format_bytes(self.bytes_after)}; {len(self.kept_dense)} kept dense")


def format_bytes(count: int) -> str:
    """``1.23 GiB`` (or MiB, KiB for small models)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count / 2**10:.1f} KiB"


def is_quantizable_linear(module: nn.Module) -> bool:
    """A linear layer whose weight can be stored in fp8 (see the module docstring)."""
    weight = getattr(module, "weight", None)
    return (isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.is_floating_point()
            and hasattr(module, "bias") and hasattr(module, "weight_scale"))


def quantize_module_weight_(module: nn.Module, compute: str = "fp8") -> int:
    """Quantise one layer's weight in place; returns the bytes it took before.

    Already-quantised layers (weight in e4m3 with scales, e.g. stored so by ``weights="fp8"``)
    keep their weight, get ``compute`` and count 0.
    """
    if compute not in ("fp8", "dense"):
        raise ValueError(f"compute must be 'fp8' or 'dense', got {compute!r}")
    weight = module.weight
    if weight.dtype == FP8_DTYPE:
        if getattr(module, "weight_scale", None) is not None and hasattr(module, "compute"):
            module.compute = compute
        return 0
    before = weight.numel() * weight.element_size()
    with torch.no_grad():
        weight_fp8, scale = quantize_fp8_weight(weight.detach())
    module.weight = nn.Parameter(weight_fp8, requires_grad=False)
    if "weight_scale" in module._buffers:
        module.weight_scale = scale  # nn.Module keeps a registered name a buffer
    else:  # a plain attribute (None): make it a buffer so that it moves with .to() and saves
        module.__dict__.pop("weight_scale", None)
        module.register_buffer("weight_scale", scale)
    if hasattr(module, "compute"):
        module.compute = compute
    return before


def quantize_linear_weights_(model: nn.Module, precision: PrecisionConfig | None = None, *,
                             select: Callable[[str, nn.Module], bool] | None = None,
                             compute: str = "fp8", log_report: bool = True) -> WeightReport:
    """Store the weights of ``model``'s linear layers in fp8, in place.

    Which layers: those :func:`is_quantizable_linear` accepts whose name ``precision``
    (default: the "fp8" preset) quantises, or, with ``select(name, module)``, those it
    accepts. Logs one line (unless ``log_report`` is False: a caller that reports it itself);
    returns a :class:`WeightReport` (weight memory before/after).
    """
    if precision is None:
        from fastdit.quant.config import preset

        precision = preset("fp8")
    chosen = select or (lambda name, _module: precision.quantizes_linear(name))
    layers, dense, before, after = [], [], 0, 0
    for name, module in model.named_modules():
        if not is_quantizable_linear(module):
            continue
        if not chosen(name, module):
            dense.append(name)
            continue
        bytes_before = quantize_module_weight_(module, compute)
        if bytes_before:
            before += bytes_before
            after += module.weight.numel() + module.weight_scale.numel() * 4
        layers.append(name)
    report = WeightReport(tuple(layers), tuple(dense), before, after)
    if log_report:
        log.info("%s", report.describe())
    return report

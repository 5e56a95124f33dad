"""Low-precision inference: quantisation formulas, precision presets and fp8 weights.

The kernels live in :mod:`fastdit.kernels` (providers of ``attention``, ``linear_fp8`` and
the fp8-emitting norm ops); this package holds what they share: the exact formulas
(:mod:`~fastdit.quant.formulas`), the precision setting (:mod:`~fastdit.quant.config`), the
in-place weight conversion (:mod:`~fastdit.quant.weights`) and the application of a setting to
a loaded model (:mod:`~fastdit.quant.apply`, imported on first use). See docs/quantization.md.
"""

from fastdit.quant.config import INEXACT_PROVIDERS, PrecisionConfig, parse_quantize, preset
from fastdit.quant.weights import WeightReport, quantize_linear_weights_

__all__ = ["INEXACT_PROVIDERS", "PrecisionConfig", "PrecisionReport", "WeightReport",
           "apply_precision", "parse_quantize", "preset", "quantize_linear_weights_"]


def __getattr__(name):  # apply imports the ops, which import the formulas above
    if name in ("apply_precision", "PrecisionReport"):
        from fastdit.quant import apply

        return getattr(apply, name)
    raise AttributeError(f"module 'fastdit.quant' has no attribute {name!r}")

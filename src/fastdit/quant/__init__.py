"""Low-precision inference: quantisation formulas, precision presets and fp8 weights.

The kernels live in :mod:`fastdit.kernels` (providers of ``attention``, ``linear_fp8`` and
the fp8-emitting norm ops); this package holds what they share: the exact formulas
(:mod:`~fastdit.quant.formulas`), the precision setting (:mod:`~fastdit.quant.config`) and the
in-place weight conversion (:mod:`~fastdit.quant.weights`). See docs/quantization.md.
"""

from fastdit.quant.config import INEXACT_PROVIDERS, PrecisionConfig, preset
from fastdit.quant.weights import WeightReport, quantize_linear_weights_

__all__ = ["INEXACT_PROVIDERS", "PrecisionConfig", "WeightReport", "preset",
           "quantize_linear_weights_"]

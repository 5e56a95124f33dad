"""The ``scaled_mm`` provider of ``linear_fp8``: ``torch._scaled_mm`` with row-wise scales
(CUDA sm_90+, and torch's CPU kernel), the activation quantised by torch ops. The ``triton``
provider of ``linear_fp8`` runs the same product after a Triton quantiser."""

from fastdit.kernels.scaled_mm import ops
from fastdit.ops.registry import register

register("linear_fp8", "scaled_mm", "fastdit.kernels.scaled_mm.ops:linear_fp8",
         supported=ops.scaled_mm_supported, supports_args=ops.supports_args,
         description="torch._scaled_mm, row-wise fp8 scales (activation quantised by torch)")

"""The ``aiter`` provider (ROCm only): AMD's AI Tensor Engine kernels for ``rms_norm`` and
``rope_qk_``.

Supported when the platform is ROCm, ``import aiter`` succeeds and it has the functions used;
aiter is imported inside the ``supported`` predicates (``_args.py``) and the implementations
(``ops.py``), never when fastdit is imported. Calls aiter cannot take exactly (fp32 norms,
``variance_size``, no weight, mixed dtypes) are declined by ``supports_args``, so dispatch
falls back to the next provider.
"""

from fastdit.kernels.aiter import _args
from fastdit.ops.registry import register

register("rms_norm", "aiter", "fastdit.kernels.aiter.ops:rms_norm",
         supported=_args.rms_norm_supported, supports_args=_args.rms_norm_args,
         description="aiter rmsnorm2d_fwd / rmsnorm2d_fwd_with_add (ROCm, fp16/bf16)")
register("rope_qk_", "aiter", "fastdit.kernels.aiter.ops:rope_qk_",
         supported=_args.rope_qk_supported, supports_args=_args.rope_qk_args,
         description="aiter rope_cached_2c_fwd_inplace: q and k in one in-place kernel (ROCm)")

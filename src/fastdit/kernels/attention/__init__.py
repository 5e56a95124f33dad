"""Attention providers: torch SDPA (cuDNN / flash / efficient / math), flash-attn, SageAttention.

``sdpa`` is exact and always available. ``flash_attn`` registers when the flash-attn library
(FA3's ``flash_attn_interface`` or FA2's ``flash_attn``) is importable on a CUDA/ROCm device;
``flash4`` (FlashAttention-4, exact) when ``flash-attn-4`` imports on sm_90+; neither is in the
default priority list (``FASTDIT_OP_PROVIDERS=attention=flash4`` names it);
``sage`` (SageAttention, quantised, *not* exact: ``exact=False``) only runs when asked for by
name. The SDPA backend forced by ``FASTDIT_ATTENTION_BACKEND`` is bound into each dispatch
plan (``sdpa.specialize``), not read per call.
"""

from fastdit.kernels.attention import libraries
from fastdit.ops.attention_int8 import attention_int8_args
from fastdit.ops.registry import register


def _sdpa_specialize(config, *args, **kwargs):
    from fastdit.kernels.attention import sdpa  # torch.nn.attention, on first use

    return sdpa.specialize(config, *args, **kwargs)


register("attention", "sdpa", "fastdit.kernels.attention.sdpa:attention_sdpa",
         specialize=_sdpa_specialize,
         description="torch scaled_dot_product_attention (cuDNN first on CUDA)")
register("attention", "flash_attn", "fastdit.kernels.attention.libraries:attention_flash_attn",
         supported=libraries.flash_attn_supported, supports_args=libraries.flash_attn_supports_args,
         description="flash-attn library (FA3 or FA2)")
register("attention", "flash4", "fastdit.kernels.attention.libraries:attention_flash4",
         supported=libraries.flash4_supported, supports_args=libraries.flash4_supports_args,
         description="FlashAttention-4 (flash-attn-4, CuTe DSL; sm_90+)")
register("attention", "sage", "fastdit.kernels.attention.libraries:attention_sage",
         supported=libraries.sage_supported, supports_args=libraries.sage_supports_args,
         exact=False, description="SageAttention (int8/fp8 quantised, approximate)")
# the 8-bit recipe's specification in plain torch (CPU path and oracle of int8_triton):
# approximate, so in no default priority list
register("attention", "int8_native", "fastdit.ops.attention_int8:attention_int8_native",
         supports_args=attention_int8_args, exact=False,
         description="8-bit attention spec: INT8 QK, FP8 PV, plain torch (approximate)")

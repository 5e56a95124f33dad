"""fastdit ops: every hot operation, one public function each, dispatched to a provider.

The plain-torch ``*_native`` function next to each op is its specification and its test
oracle; providers in :mod:`fastdit.kernels` register faster implementations. In eager mode an
op runs its dispatch plan (the provider chosen once per argument signature); under
``torch.compile`` it is one ``torch.ops.fastdit.*`` custom op (:mod:`fastdit.ops.library`).
"""

from fastdit.ops.attention import attention
from fastdit.ops.attention_int8 import attention_fp8_out
from fastdit.ops.channel_norm import channel_rms_norm
from fastdit.ops.elementwise import mul_add, scale_shift
from fastdit.ops.linear import linear, linear_gelu_tanh
from fastdit.ops.linear_fp8 import gelu_tanh_fp8, linear_fp8, quantize_fp8
from fastdit.ops.norm import (
    layer_norm_scale_shift,
    norm_tanh_mul_add,
    rms_norm,
    scale_residual_norm_scale_shift,
)
from fastdit.ops.norm_fp8 import layer_norm_scale_shift_fp8, scale_residual_norm_scale_shift_fp8
from fastdit.ops.registry import (
    ProviderError,
    call_provider,
    plan_for,
    provider_table,
    providers,
    resolve,
)
from fastdit.ops.rope import rms_norm_rope_, rope_qk_, rope_qk_cache_store

__all__ = [
    "ProviderError",
    "attention",
    "attention_fp8_out",
    "call_provider",
    "channel_rms_norm",
    "gelu_tanh_fp8",
    "layer_norm_scale_shift",
    "layer_norm_scale_shift_fp8",
    "linear",
    "linear_fp8",
    "linear_gelu_tanh",
    "mul_add",
    "norm_tanh_mul_add",
    "plan_for",
    "provider_table",
    "providers",
    "quantize_fp8",
    "resolve",
    "rms_norm",
    "rms_norm_rope_",
    "rope_qk_",
    "rope_qk_cache_store",
    "scale_residual_norm_scale_shift",
    "scale_residual_norm_scale_shift_fp8",
    "scale_shift",
]

"""fastdit ops: every hot operation, one public function each, dispatched to a provider.

The plain-torch ``*_native`` function next to each op is its specification and its test
oracle; providers in :mod:`fastdit.kernels` register faster implementations.
"""

from fastdit.ops.attention import attention
from fastdit.ops.elementwise import mul_add, scale_shift
from fastdit.ops.linear import linear, linear_gelu_tanh
from fastdit.ops.norm import (
    layer_norm_scale_shift,
    norm_tanh_mul_add,
    rms_norm,
    scale_residual_norm_scale_shift,
)
from fastdit.ops.registry import ProviderError, call_provider, provider_table, providers, resolve
from fastdit.ops.rope import rms_norm_rope_, rope_qk_, rope_qk_cache_store

__all__ = [
    "ProviderError",
    "attention",
    "call_provider",
    "layer_norm_scale_shift",
    "linear",
    "linear_gelu_tanh",
    "mul_add",
    "norm_tanh_mul_add",
    "provider_table",
    "providers",
    "resolve",
    "rms_norm",
    "rms_norm_rope_",
    "rope_qk_",
    "rope_qk_cache_store",
    "scale_residual_norm_scale_shift",
    "scale_shift",
]

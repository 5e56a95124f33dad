"""The ``native`` provider of every op: the plain-torch specification, which runs anywhere."""

from fastdit.ops.registry import register

NATIVE_SPEC = {
    "rms_norm": "fastdit.ops.norm:rms_norm_native",
    "layer_norm_scale_shift": "fastdit.ops.norm:layer_norm_scale_shift_native",
    "scale_residual_norm_scale_shift": "fastdit.ops.norm:scale_residual_norm_scale_shift_native",
    "norm_tanh_mul_add": "fastdit.ops.norm:norm_tanh_mul_add_native",
    "mul_add": "fastdit.ops.elementwise:mul_add_native",
    "scale_shift": "fastdit.ops.elementwise:scale_shift_native",
    "rope_qk_": "fastdit.ops.rope:rope_qk_native",
    "rope_qk_cache_store": "fastdit.ops.rope:rope_qk_cache_store_native",
    "rms_norm_rope_": "fastdit.ops.rope:rms_norm_rope_native",
    "attention": "fastdit.ops.attention:attention_native",
    "linear": "fastdit.ops.linear:linear_native",
    "linear_gelu_tanh": "fastdit.ops.linear:linear_gelu_tanh_native",
    "quantize_fp8": "fastdit.ops.linear_fp8:quantize_fp8_native",
    "gelu_tanh_fp8": "fastdit.ops.linear_fp8:gelu_tanh_fp8_native",
    "linear_fp8": "fastdit.ops.linear_fp8:linear_fp8_native",
    "layer_norm_scale_shift_fp8": "fastdit.ops.norm_fp8:layer_norm_scale_shift_fp8_native",
    "scale_residual_norm_scale_shift_fp8":
        "fastdit.ops.norm_fp8:scale_residual_norm_scale_shift_fp8_native",
    "attention_fp8_out": "fastdit.ops.attention_int8:attention_fp8_out_native",
    "channel_rms_norm": "fastdit.ops.channel_norm:channel_rms_norm_native",
}

for _op, _impl in NATIVE_SPEC.items():
    register(_op, "native", _impl, description="plain torch (the specification)")

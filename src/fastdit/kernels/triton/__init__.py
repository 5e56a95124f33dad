"""The ``triton`` provider: one Triton kernel per op (every op but attention).

Serves CUDA and ROCm; on a machine without a GPU the kernels run (slowly) in the Triton
interpreter when ``TRITON_INTERPRET=1``. Registering imports nothing heavy: Triton is imported
by :func:`~fastdit.kernels.triton._support.supported` and by the kernel modules, which the
registry loads on first use. Design notes and launch parameters: README.md in this folder.
"""

from fastdit.kernels.triton import _support as S
from fastdit.kernels.triton import _support_quant as SQ
from fastdit.ops.registry import _always, register

_OPS = {
    # op: (implementation, supports_args)
    "rms_norm": ("norm:rms_norm", S.rms_norm_args),
    "channel_rms_norm": ("channel_norm:channel_rms_norm", S.channel_rms_norm_args),
    "layer_norm_scale_shift": ("norm:layer_norm_scale_shift", S.layer_norm_scale_shift_args),
    "scale_residual_norm_scale_shift": ("norm:scale_residual_norm_scale_shift",
                                        S.scale_residual_norm_scale_shift_args),
    "norm_tanh_mul_add": ("norm:norm_tanh_mul_add", S.norm_tanh_mul_add_args),
    "mul_add": ("elementwise:mul_add", S.mul_add_args),
    "scale_shift": ("elementwise:scale_shift", S.scale_shift_args),
    "rope_qk_": ("rope:rope_qk_", S.rope_qk_args),
    "rms_norm_rope_": ("norm:rms_norm_rope_", S.rms_norm_rope_args),
    "rope_qk_cache_store": ("rope:rope_qk_cache_store", S.rope_qk_cache_store_args),
}

_PREFERS = {
    "layer_norm_scale_shift": S.prefers_norm_modulate,
    "norm_tanh_mul_add": S.prefers_norm_modulate,
    "scale_residual_norm_scale_shift": S.prefers_scale_residual,
}

for _op, (_impl, _args) in _OPS.items():
    register(_op, "triton", f"fastdit.kernels.triton.{_impl}", supported=S.supported,
             supports_args=_args, prefers=_PREFERS.get(_op, _always),
             description="Triton kernel (CUDA/ROCm; CPU via the interpreter)")

# fp8 kernels (e4m3fn: NVIDIA sm_89+, or the interpreter); see _support_quant.py
_FP8_OPS = {
    "quantize_fp8": ("quant_fp8:quantize_fp8", SQ.quantize_fp8_args),
    "gelu_tanh_fp8": ("quant_fp8:gelu_tanh_fp8", SQ.gelu_tanh_fp8_args),
    "linear_fp8": ("quant_fp8:linear_fp8", SQ.linear_fp8_args),
    "layer_norm_scale_shift_fp8": ("norm_fp8:layer_norm_scale_shift_fp8",
                                   SQ.layer_norm_scale_shift_fp8_args),
    "scale_residual_norm_scale_shift_fp8": ("norm_fp8:scale_residual_norm_scale_shift_fp8",
                                            SQ.scale_residual_norm_scale_shift_fp8_args),
    "attention_fp8_out": ("attention_int8:attention_fp8_out", SQ.attention_fp8_out_args),
}
# wide rows (D > 4096) of the fp8 norms go to the next provider (torch.compile) on a GPU, as
# for the bf16 norms: on the H200 the whole-row kernel ran D=5120 at 1.0 TB/s (0.49 ms at
# 32760 tokens, against 0.22 ms for the compiled bf16 norm)
_FP8_PREFERS = {
    "layer_norm_scale_shift_fp8": S.prefers_norm_modulate,
    "scale_residual_norm_scale_shift_fp8": S.prefers_scale_residual,
}
for _op, (_impl, _args) in _FP8_OPS.items():
    register(_op, "triton", f"fastdit.kernels.triton.{_impl}", supported=SQ.supported_fp8,
             supports_args=_args, prefers=_FP8_PREFERS.get(_op, _always),
             description="Triton fp8 kernel (sm_89+; CPU via the interpreter)")
# 8-bit attention: approximate, so in no default priority list (asked for by name or by the
# precision setting, fastdit.quant.config.ATTENTION_PROVIDERS)
register("attention", "int8_triton", "fastdit.kernels.triton.attention_int8:attention_int8",
         supported=SQ.supported_fp8, supports_args=SQ.attention_int8_triton_args, exact=False,
         description="Triton 8-bit attention: INT8 QK, FP8 PV (approximate)")

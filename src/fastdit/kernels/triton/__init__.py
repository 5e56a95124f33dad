"""The ``triton`` provider: one Triton kernel per op (every op but attention).

Serves CUDA and ROCm; on a machine without a GPU the kernels run (slowly) in the Triton
interpreter when ``TRITON_INTERPRET=1``. Registering imports nothing heavy: Triton is imported
by :func:`~fastdit.kernels.triton._support.supported` and by the kernel modules, which the
registry loads on first use. Design notes and launch parameters: README.md in this folder.
"""

from fastdit.kernels.triton import _support as S
from fastdit.ops.registry import _always, register

_OPS = {
    # op: (implementation, supports_args)
    "rms_norm": ("norm:rms_norm", S.rms_norm_args),
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

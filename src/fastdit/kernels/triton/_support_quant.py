"""When the quantising Triton kernels can run, and which calls they take (imports no Triton).

The e4m3 kernels need a GPU with fp8 tensor cores and the ``float8_e4m3fn`` format: NVIDIA
sm_89+ (Ada, Hopper, Blackwell), or the Triton interpreter. AMD's MI300 uses the ``fnuz``
variant (``Platform.fp8_dtype()``), which these kernels do not emit yet: on ROCm the calls fall
back to the next provider (logged).
"""

from __future__ import annotations

import torch

from fastdit.kernels.scaled_mm import ops as scaled_mm_ops
from fastdit.kernels.triton import _support as S
from fastdit.ops.attention_int8 import attention_int8_args
from fastdit.quant.formulas import FP8_DTYPE

ATTENTION_HEAD_DIMS = (64, 128)  # the keys of attention_int8.CONFIGS (kept here: no Triton)
MAX_ROW = S.MAX_ROW


def supported_fp8() -> bool:
    """Triton runs here (GPU or interpreter), and a GPU has e4m3fn tensor cores."""
    if not S.supported():
        return False
    if S.interpreting():
        return True
    from fastdit.platforms import current_platform

    platform = current_platform()
    return platform.name == "cuda" and platform.has_capability((8, 9))


def _rows_ok(x) -> bool:
    return S._tensor_ok(x) and x.dim() >= 1 and 0 < x.shape[-1] <= MAX_ROW


def quantize_fp8_args(x) -> bool:
    return _rows_ok(x)


def gelu_tanh_fp8_args(h) -> bool:
    return _rows_ok(h)


def grouped_block_k(k: int, group_k: int) -> int | None:
    """BLOCK_K of the grouped fp8 product (gemm_fp8.py): 128, 64 or 32, dividing K and the
    group size; None when none does."""
    for block_k in (128, 64, 32):
        if k % block_k == 0 and group_k % block_k == 0:
            return block_k
    return None


def linear_fp8_args(x, weight, weight_scale, bias=None, *, x_scale=None, out_dtype=None) -> bool:
    """Per-token: this quantiser + torch._scaled_mm; per-group x_scale: the Triton product."""
    if x_scale is None and not _rows_ok(x):
        return False
    if x_scale is not None and not (x.dtype == FP8_DTYPE and S.device_ok(x, x_scale)):
        return False
    if not S.device_ok(weight, weight_scale, bias):
        return False
    if x_scale is not None and x_scale.dim() == x.dim():  # groups of K / G channels
        k = x.shape[-1]
        return (weight.is_contiguous() and weight.shape[1] == k
                and grouped_block_k(k, k // x_scale.shape[-1]) is not None)
    return (scaled_mm_ops.scaled_mm_supported()
            and scaled_mm_ops.supports_args(x, weight, weight_scale, bias, x_scale=x_scale,
                                            out_dtype=out_dtype))


def attention_fp8_out_args(q, k, v, *, scale=None) -> bool:
    return attention_int8_triton_args(q, k, v)


# the fp8 norms take what the bf16 norms take (same signatures, same tiles)
layer_norm_scale_shift_fp8_args = S.layer_norm_scale_shift_args
scale_residual_norm_scale_shift_fp8_args = S.scale_residual_norm_scale_shift_args


def attention_int8_triton_args(q, k, v, *, causal=False, scale=None, attn_mask=None) -> bool:
    """Head dims 64 and 128 (the tuned tables), fp16/bf16/fp32 inputs on a usable device."""
    return (attention_int8_args(q, k, v, causal=causal, scale=scale, attn_mask=attn_mask)
            and S._tensor_ok(q, k, v) and q.shape[-1] in ATTENTION_HEAD_DIMS
            and q.dtype in (torch.float16, torch.bfloat16, torch.float32))

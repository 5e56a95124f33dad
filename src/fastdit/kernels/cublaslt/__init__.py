"""The ``cublaslt`` provider: matrix products with a fused epilogue through cuBLASLt.

``linear_gelu_tanh`` calls ``torch._addmm_activation(..., use_gelu=True)``, which on CUDA runs
one cuBLASLt product with the GELU (tanh) + bias epilogue: no separate activation pass over
the [tokens, ffn_dim] hidden state and no second buffer for it.
"""

from __future__ import annotations

import torch

from fastdit.ops.registry import register
from fastdit.platforms import current_platform


def supported() -> bool:
    """A CUDA platform whose device is present (not only forced by FASTDIT_PLATFORM)."""
    platform = current_platform()
    return platform.name == "cuda" and platform.is_available() and hasattr(torch, "_addmm_activation")


def supports_args(x, weight, bias=None) -> bool:
    return (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and bias is not None
            and weight.is_contiguous() and x.shape[-1] % 8 == 0 and weight.shape[0] % 8 == 0)


# On an H100 the epilogue product was faster for Wan2.1-1.3B's FFN ([32760, 1536] x [8960,
# 1536]: 1.44 ms vs 1.65 ms for product + GELU) and slower for 14B's ([32760, 5120] x
# [13824, 5120]: 7.24 ms vs 6.89 ms), so wider inputs defer to the native product + GELU.
WIDEST_FAST_INPUT = 4096


def prefers(x, weight, bias=None) -> bool:
    return x.shape[-1] <= WIDEST_FAST_INPUT


def linear_gelu_tanh(x, weight, bias=None):
    x2 = x.reshape(-1, x.shape[-1])  # (T, K)
    y = torch._addmm_activation(bias, x2, weight.t(), use_gelu=True)  # (T, N)
    return y.view(*x.shape[:-1], weight.shape[0])


register("linear_gelu_tanh", "cublaslt", linear_gelu_tanh, supported=supported,
         supports_args=supports_args, prefers=prefers, description="cuBLASLt product with a GELU-tanh epilogue")

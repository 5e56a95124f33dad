"""FP8 products through ``torch._scaled_mm`` with row-wise scales.

``torch._scaled_mm(a [M, K] e4m3 row-major, b [K, N] e4m3 column-major, scale_a [M, 1],
scale_b [1, N], bias, out_dtype)`` computes ``(a * scale_a) (b * scale_b) + bias`` with fp32
accumulation: on CUDA (sm_90+) a cuBLASLt/CUTLASS kernel, on the CPU a reference kernel.
``b`` is ``weight.t()`` of the row-major ``[N, K]`` weight (column-major: no copy).
"""

from __future__ import annotations

import functools

import torch

from fastdit.quant.formulas import quantize_fp8_rows

# Hopper's fp8 MMA keeps ~22 bits unless partial sums are promoted: cuBLAS promotes them
# unless fast accumulation is asked for. Measured on the H200 at the six Wan products
# (T=32760, benchmarks/results/h200-run1): fast accumulation 1.18-1.28x faster (e.g. 5120x5120
# 1.286 vs 1.438 ms) at the same accuracy (cosine 0.9997, relative L1 0.026 both ways, the
# operands' e4m3 rounding dominating): on.
FAST_ACCUM = True
ALIGN = 16  # K and N must be multiples of 16 (cuBLASLt fp8 layout rule)


def scaled_mm_supported() -> bool:
    """``torch._scaled_mm`` exists, and on CUDA the GPU is a Hopper or later (row-wise scaled
    fp8 products are only known to run there; Ada's sm_89 is untested, so it falls back)."""
    from fastdit.platforms import current_platform

    return hasattr(torch, "_scaled_mm") and _supported_on(current_platform())


@functools.lru_cache(maxsize=8)
def _supported_on(platform) -> bool:
    """Per platform object (asked on every call by the Triton provider's predicate: cached)."""
    if platform.name == "cuda":
        return platform.has_capability((9, 0))
    return platform.name == "cpu"


def out_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """Output dtypes of row-wise scaled products: bf16 on CUDA; any float dtype on the CPU."""
    if device.type == "cpu":
        return (torch.bfloat16, torch.float16, torch.float32)
    return (torch.bfloat16,)


def supports_args(x, weight, weight_scale, bias=None, *, x_scale=None, out_dtype=None) -> bool:
    out = x.dtype if x_scale is None else (out_dtype or torch.bfloat16)
    if x.device.type not in ("cpu", "cuda") or out not in out_dtypes(x.device):
        return False
    if x_scale is not None and tuple(x_scale.shape) != tuple(x.shape[:-1]):
        return False  # per-group scales: not a row-wise product
    if bias is not None and bias.dtype != out:
        return False
    k, n = weight.shape[1], weight.shape[0]
    return k % ALIGN == 0 and n % ALIGN == 0 and weight.is_contiguous() and x.shape[-1] == k


def linear_fp8_scaled_mm_quantized(x_q, x_scale, weight, weight_scale, bias, out_dtype):
    """``(x_q * x_scale) (weight * weight_scale)^T + bias`` for e4m3 ``x_q [..., K]`` with
    per-token ``x_scale [...]``; ``[..., N]`` in ``out_dtype``."""
    k, n = x_q.shape[-1], weight.shape[0]
    a = x_q.reshape(-1, k)  # (T, K)
    if a.stride(-1) != 1:
        a = a.contiguous()
    scale_a = x_scale.reshape(-1, 1).float().contiguous()  # (T, 1)
    scale_b = weight_scale.reshape(1, n).float().contiguous()  # (1, N)
    y = torch._scaled_mm(a, weight.t(), scale_a, scale_b, bias=bias, out_dtype=out_dtype,
                         use_fast_accum=FAST_ACCUM)  # (T, N)
    return y.view(*x_q.shape[:-1], n)


def linear_fp8(x, weight, weight_scale, bias=None, *, x_scale=None, out_dtype=None):
    """``linear_fp8`` with the activation quantised by torch ops (the spec's quantiser)."""
    if x_scale is None:
        out_dtype = x.dtype
        x, x_scale = quantize_fp8_rows(x)
    return linear_fp8_scaled_mm_quantized(x, x_scale, weight, weight_scale, bias,
                                          out_dtype or torch.bfloat16)

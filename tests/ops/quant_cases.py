"""Provider-vs-native cases of the fp8 ops (``quantize_fp8``, ``gelu_tanh_fp8``, ``linear_fp8``
and the fp8-emitting norms), merged into ``tests/ops/test_providers.py``'s CASES table (and so
also run on the GPU by ``tests/gpu/test_ops_gpu.py``).

Quantised outputs are compared with the float8_e4m3fn entry of the tolerance table (one
rounding step of e4m3 at most: providers reproduce the quantisation formulas bit for bit, up
to last-bit differences of the fp32 values they round), the scales with fp32's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fastdit.quant.formulas import quantize_fp8_rows, quantize_fp8_weight
from tests.ops.cases import MOD_MODES, modulation, rand, strided
from tests.ops.tolerances import DTYPES

ROW_DIMS = (1, 7, 96, 769, 1536)


@dataclass
class QuantCase:
    id: str
    build: Callable[[], tuple[tuple, dict]]
    dtype: torch.dtype = torch.float32
    light: bool = False  # also run for slow-to-compile providers


def _rows(dim):  # keep the interpreter fast on wide rows
    return 3 if dim <= 769 else 1


def row_quant_cases():
    cases = []
    for dtype in DTYPES:
        for dim in ROW_DIMS:
            cases.append(QuantCase(f"{str(dtype)[6:]}-D{dim}", lambda dtype=dtype, dim=dim: (
                (rand((2, _rows(dim), dim), dtype, 3.0),), {}), dtype, light=dim == 96))
    cases.append(QuantCase("strided", lambda: ((strided(rand((2, 3, 64), torch.bfloat16)),), {}),
                           torch.bfloat16))
    cases.append(QuantCase("zero-row", lambda: ((torch.cat([torch.zeros(1, 32), rand((2, 32))]),),
                                                {})))
    return cases


def _weight(n, k, scale=0.05):
    return quantize_fp8_weight(rand((n, k), torch.float32, scale))


def linear_fp8_cases():
    cases = []
    for dtype in DTYPES:
        def build(dtype=dtype):
            weight, weight_scale = _weight(96, 64)
            return (rand((2, 5, 64), dtype), weight, weight_scale, rand((96,), dtype)), {}
        cases.append(QuantCase(f"{str(dtype)[6:]}", build, dtype))
    def build_no_bias():
        weight, weight_scale = _weight(48, 32)
        return (strided(rand((7, 32), torch.bfloat16)), weight, weight_scale, None), {}
    cases.append(QuantCase("strided-no-bias", build_no_bias, torch.bfloat16))
    def build_prequantized():
        weight, weight_scale = _weight(64, 96)
        x_q, x_scale = quantize_fp8_rows(rand((3, 4, 96), torch.float32, 2.0))
        return ((x_q, weight, weight_scale, rand((64,), torch.bfloat16)),
                {"x_scale": x_scale, "out_dtype": torch.bfloat16})
    cases.append(QuantCase("prequantized", build_prequantized, torch.bfloat16))
    return cases


def norm_fp8_cases(op):
    cases = []
    for dtype in DTYPES:
        for dim in ROW_DIMS[1:]:
            def build(dtype=dtype, dim=dim):
                x = rand((2, _rows(dim), dim), dtype)
                mods = [modulation("per_row_3d", 2, 1, dim, 1) for _ in range(3)]
                return _norm_args(op, x, mods, rand((dim,)), rand((dim,)), "layer")
            cases.append(QuantCase(f"{str(dtype)[6:]}-D{dim}", build, dtype, light=dim == 769))
    for mode in MOD_MODES:
        for norm in ("layer", "rms"):
            def build(mode=mode, norm=norm):
                x = rand((2, 6, 40), torch.bfloat16)
                mods = [modulation(mode, 2, 6, 40, 3, dtype=torch.float32) for _ in range(3)]
                return _norm_args(op, x, mods, rand((40,)) if norm == "layer" else None, None, norm)
            cases.append(QuantCase(f"{mode}-{norm}", build, torch.bfloat16))
    def build_strided():
        x = strided(rand((2, 3, 96)))
        mods = [strided(rand((2, 1, 96))) for _ in range(3)]
        return _norm_args(op, x, mods, rand((96,)), rand((96,)), "rms")
    cases.append(QuantCase("strided", build_strided))
    return cases


def _norm_args(op, x, mods, weight, bias, norm):
    kw = dict(shift=mods[0], scale=mods[1], weight=weight, bias=bias, eps=1e-6, norm=norm)
    if op == "layer_norm_scale_shift_fp8":
        return (x,), kw
    residual = rand(x.shape, torch.float32 if x.dtype == torch.bfloat16 else x.dtype)
    return (residual, x), dict(kw, gate=mods[2])


def quant_cases():
    """op -> cases, for the CASES table of tests/ops/test_providers.py."""
    return {
        "quantize_fp8": row_quant_cases(),
        "gelu_tanh_fp8": row_quant_cases(),
        "linear_fp8": linear_fp8_cases(),
        "layer_norm_scale_shift_fp8": norm_fp8_cases("layer_norm_scale_shift_fp8"),
        "scale_residual_norm_scale_shift_fp8": norm_fp8_cases("scale_residual_norm_scale_shift_fp8"),
    }

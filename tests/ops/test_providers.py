"""Every provider that runs on this machine against the native spec, op by op.

On a CPU machine that is ``triton`` (under TRITON_INTERPRET=1, so cases stay small) and
``compiled`` (torch.compile; a few cases only, each shape compiles once). Each case is
built fresh for the provider and for the reference; every tensor argument is compared after
the call too, which checks in-place writes (rope_qk_) and cache stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from fastdit.ops.registry import call_provider, is_supported, providers
from tests.ops.cases import MOD_MODES, modulation, rand, strided
from tests.ops.quant_cases import quant_cases
from tests.ops.tolerances import DTYPES, TOLERANCES, assert_close

ODD_DIMS = (1, 7, 769, 1536, 5120)


@dataclass
class Case:
    id: str
    build: Callable[[], tuple[tuple, dict]]
    dtype: torch.dtype = torch.float32
    light: bool = False  # also run for slow-to-compile providers


def _tokens(dim):  # keep the interpreter fast on wide rows
    return 3 if dim <= 769 else 1


def norm_cases(op):
    cases = []
    for dtype in DTYPES:
        for dim in ODD_DIMS:
            def build(dtype=dtype, dim=dim):
                x = rand((2, _tokens(dim), dim), dtype)
                mods = [modulation("per_row_3d", 2, 1, dim, 1) for _ in range(3)]
                return _norm_args(op, x, mods, rand((dim,)), rand((dim,)), "layer")
            cases.append(Case(f"{str(dtype)[6:]}-D{dim}", build, dtype, light=dim == 769))
    for mode in MOD_MODES:
        for norm in ("layer", "rms"):
            def build(mode=mode, norm=norm):
                x = rand((2, 6, 40), torch.bfloat16)
                mods = [modulation(mode, 2, 6, 40, 3, dtype=torch.float32) for _ in range(3)]
                weight = rand((40,)) if norm == "layer" else None
                return _norm_args(op, x, mods, weight, None, norm)
            cases.append(Case(f"{mode}-{norm}", build, torch.bfloat16))
    def build_strided():
        x = strided(rand((2, 3, 96)))
        mods = [strided(rand((2, 1, 96))) for _ in range(3)]
        return _norm_args(op, x, mods, rand((96,)), rand((96,)), "rms")
    cases.append(Case("strided", build_strided))
    return cases


def _norm_args(op, x, mods, weight, bias, norm):
    kw = dict(shift=mods[0], scale=mods[1], weight=weight, bias=bias, eps=1e-6, norm=norm)
    if op in ("layer_norm_scale_shift", "norm_tanh_mul_add"):
        return (x,), kw
    residual = rand(x.shape, torch.float32 if x.dtype == torch.bfloat16 else x.dtype)
    return (residual, x), dict(kw, gate=mods[2])


def rms_norm_cases():
    cases = []
    for dtype in DTYPES:
        for dim in ODD_DIMS:
            cases.append(Case(f"{str(dtype)[6:]}-D{dim}", lambda dtype=dtype, dim=dim: (
                (rand((_tokens(dim), dim), dtype), rand((dim,), dtype), 1e-6), {}), dtype, dim == 769))
            cases.append(Case(f"{str(dtype)[6:]}-D{dim}-residual", lambda dtype=dtype, dim=dim: (
                (rand((_tokens(dim), dim), dtype), rand((dim,), dtype), 1e-6),
                {"residual": rand((_tokens(dim), dim), dtype)}), dtype))
    cases.append(Case("variance_size", lambda: ((rand((2, 3, 48)), rand((48,)), 1e-5),
                                                {"variance_size": 32}), light=True))
    cases.append(Case("no-weight-3d", lambda: ((rand((2, 3, 33), torch.bfloat16), None, 1e-6), {}),
                      torch.bfloat16))
    cases.append(Case("strided-residual", lambda: ((strided(rand((4, 64))), rand((64,)), 1e-6),
                                                   {"residual": strided(rand((4, 64)))})))
    return cases


def elementwise_cases(op):
    cases = []
    for dtype in DTYPES:
        for dim in ODD_DIMS:
            def build(dtype=dtype, dim=dim):
                return _elementwise_args(op, rand((2, _tokens(dim), dim), dtype),
                                         modulation("per_row_3d", 2, 1, dim, 1),
                                         modulation("per_row_3d", 2, 1, dim, 1))
            cases.append(Case(f"{str(dtype)[6:]}-D{dim}", build, dtype, light=dim == 769))
    for mode in MOD_MODES:
        def build(mode=mode):
            return _elementwise_args(op, rand((2, 6, 24), torch.bfloat16),
                                     modulation(mode, 2, 6, 24, 3), modulation(mode, 2, 6, 24, 3))
        cases.append(Case(mode, build, torch.bfloat16))
    cases.append(Case("strided", lambda: _elementwise_args(
        op, strided(rand((2, 3, 32))), strided(rand((2, 3, 32))), rand((32,)))))
    return cases


def _elementwise_args(op, x, m1, m2):
    if op == "mul_add":
        c = rand(x.shape, torch.float32)
        return (x, c), {"gate": m1, "k": 0.25}
    return (x,), {"scale": m1, "shift": m2, "scale_constant": 1.0}


def rope_cases():
    cases = []
    for dtype in DTYPES:
        for interleaved in (True, False):
            def build(dtype=dtype, interleaved=interleaved):
                theta = torch.rand(5, 16) * 6
                return ((rand((5, 4, 32), dtype), rand((5, 2, 32), dtype), theta.cos(), theta.sin()),
                        {"interleaved": interleaved})
            cases.append(Case(f"{str(dtype)[6:]}-{'gptj' if interleaved else 'neox'}", build, dtype,
                              light=dtype == torch.bfloat16 and interleaved))
    def build_positions():
        theta = torch.rand(20, 64) * 6
        return ((rand((3, 2, 128), torch.bfloat16), rand((3, 2, 128), torch.bfloat16),
                 theta.cos(), theta.sin()), {"positions": torch.tensor([19, 0, 7])})
    cases.append(Case("positions-D128", build_positions, torch.bfloat16))
    def build_batched_strided():
        theta = torch.rand(3, 8) * 6
        qkv = rand((2, 3, 3, 2, 16))  # (B, T, 3, H, D): q and k are strided views
        return ((qkv[:, :, 0], qkv[:, :, 1], theta.cos(), theta.sin()), {})
    cases.append(Case("batched-strided", build_batched_strided))
    return cases


def norm_rope_cases():
    cases = []
    for dtype in DTYPES:
        def build(dtype=dtype):
            theta = torch.rand(5, 8) * 6
            return ((rand((2, 5, 3, 16), dtype), rand((48,), dtype), theta.cos(), theta.sin()),
                    {"eps": 1e-5})
        cases.append(Case(f"{str(dtype)[6:]}", build, dtype, light=dtype == torch.bfloat16))
    return cases


def cache_store_cases():
    cases = []
    for cache_dtype in (torch.float32, torch.bfloat16, torch.float8_e4m3fn):
        for interleaved in (True, False):
            def build(cache_dtype=cache_dtype, interleaved=interleaved):
                T, Hq, Hk, D = 6, 4, 2, 32
                dtype = torch.float32 if cache_dtype == torch.float32 else torch.bfloat16
                theta = torch.rand(16, D // 2) * 6
                fp8 = cache_dtype == torch.float8_e4m3fn
                kw = {"interleaved": interleaved}
                if fp8:
                    kw.update(k_scale=torch.tensor(0.5), v_scale=2.0)
                return ((rand((T, Hq, D), dtype), rand((T, Hk, D), dtype), rand((T, Hk, D), dtype),
                         torch.zeros((3, 4, Hk, D), dtype=cache_dtype),
                         torch.zeros((3, 4, Hk, D), dtype=cache_dtype),
                         torch.tensor([0, 5, -1, 11, 3, 6]), torch.tensor([0, 5, 7, 2, 15, 9]),
                         torch.cat([theta.cos(), theta.sin()], 1)), kw)
            cases.append(Case(f"{str(cache_dtype)[6:]}-{'gptj' if interleaved else 'neox'}", build,
                              cache_dtype, light=cache_dtype == torch.bfloat16 and interleaved))
    def build_swa():
        theta = torch.rand(8, 8) * 6
        return ((rand((4, 2, 16)), rand((4, 1, 16)), rand((4, 1, 16)),
                 torch.zeros((2, 2, 1, 16)), torch.zeros((2, 2, 1, 16)),
                 torch.tensor([0, 1, 2, 3]), torch.arange(4), torch.cat([theta.cos(), theta.sin()], 1)),
                {"swa_slot_mapping": torch.tensor([2, -1, 0, 1], dtype=torch.int32)})
    cases.append(Case("swa-gqa", build_swa))
    return cases


def linear_gelu_cases():
    cases = []
    for dtype in DTYPES:
        def build(dtype=dtype):
            return (rand((2, 5, 64), dtype), rand((96, 64), dtype, 0.1), rand((96,), dtype)), {}
        cases.append(Case(f"{str(dtype)[6:]}", build, dtype))
    return cases


def linear_cases():
    cases = []
    for dtype in DTYPES:
        def build(dtype=dtype):
            return (rand((2, 5, 64), dtype), rand((96, 64), dtype, 0.1), rand((96,), dtype)), {}

        def build_out(dtype=dtype):  # written into a preallocated output, no bias
            return (rand((7, 64), dtype), rand((33, 64), dtype, 0.1), None), {
                "out": torch.full((7, 33), float("nan"), dtype=dtype)}
        cases.append(Case(f"{str(dtype)[6:]}", build, dtype))
        cases.append(Case(f"{str(dtype)[6:]}-out", build_out, dtype))
    return cases


def channel_norm_cases():
    """The VAE's channel RMS norm: [B, C, T, H, W] and [B, C, H, W], odd channel counts, with
    and without SiLU and a bias, diffusers' [C, 1, 1, 1] gamma, values far from unit size."""
    cases = []
    for dtype in DTYPES:
        for channels, silu in ((3, True), (40, False), (130, True)):
            def build(dtype=dtype, channels=channels, silu=silu):
                x = rand((2, channels, 2, 3, 5), dtype) * 7
                gamma = rand((channels, 1, 1, 1), dtype)
                return (x, gamma), {"scale": channels ** 0.5, "silu": silu}
            cases.append(Case(f"{str(dtype)[6:]}-C{channels}-silu{int(silu)}", build, dtype,
                              light=channels == 40 and dtype == torch.bfloat16))
    def build_image():  # the mid block's attention norm: [B*T, C, H, W], gamma [C, 1, 1], a bias
        x = rand((3, 24, 4, 6), torch.bfloat16)
        return (x, rand((24, 1, 1), torch.bfloat16), rand((24,), torch.bfloat16)), {"scale": 24 ** 0.5}
    cases.append(Case("image-bias", build_image, torch.bfloat16))
    for dtype in (torch.float32, torch.bfloat16):  # channels-last (the NDHWC decode), a bias
        def build_nhwc(dtype=dtype):
            x = (rand((2, 40, 2, 3, 5), dtype) * 5).contiguous(memory_format=torch.channels_last_3d)
            return (x, rand((40, 1, 1, 1), dtype), rand((40,), dtype)), {"scale": 40 ** 0.5, "silu": True}
        cases.append(Case(f"channels-last-{str(dtype)[6:]}", build_nhwc, dtype))
    return cases


CASES = {
    "rms_norm": rms_norm_cases(),
    "channel_rms_norm": channel_norm_cases(),
    "layer_norm_scale_shift": norm_cases("layer_norm_scale_shift"),
    "scale_residual_norm_scale_shift": norm_cases("scale_residual_norm_scale_shift"),
    "norm_tanh_mul_add": norm_cases("norm_tanh_mul_add"),
    "mul_add": elementwise_cases("mul_add"),
    "scale_shift": elementwise_cases("scale_shift"),
    "rope_qk_": rope_cases(),
    "rms_norm_rope_": norm_rope_cases(),
    "rope_qk_cache_store": cache_store_cases(),
    "linear_gelu_tanh": linear_gelu_cases(),
    "linear": linear_cases(),
    **quant_cases(),  # the fp8 ops (tests/ops/quant_cases.py)
}
LIGHT_PROVIDERS = {"compiled"}


def _params():
    params = []
    for op, cases in CASES.items():
        for name, provider in providers(op).items():
            if name == "native" or not is_supported(provider):
                continue
            for case in cases:
                if name in LIGHT_PROVIDERS and not case.light:
                    continue
                params.append(pytest.param(op, name, case, id=f"{op}-{name}-{case.id}"))
    return params


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _run(op, provider, case):
    torch.manual_seed(1234)
    args, kwargs = case.build()
    out = call_provider(op, provider, *args, **kwargs)
    return out, args


@pytest.mark.parametrize("op,provider,case", _params())
def test_provider_matches_native(op, provider, case):
    out, args = _run(op, provider, case)
    ref, ref_args = _run(op, "native", case)
    outs, refs = _tensors(out), _tensors(ref)
    assert len(outs) == len(refs)
    for i, (a, b) in enumerate(zip(outs, refs)):
        assert_close(a, b, msg=f"output {i}")
    for i, (a, b) in enumerate(zip(_tensors(args), _tensors(ref_args))):  # in-place effects
        if b.dtype in TOLERANCES:
            assert_close(a, b, msg=f"argument {i} after the call")
        else:
            assert torch.equal(a, b), f"argument {i} changed differently"


def test_every_op_has_cases():
    from fastdit.ops.registry import op_names

    # attention_fp8_out's kernel matches its spec to the rounding of P, not to a dtype's unit:
    # tested with the 8-bit attention in tests/quant/test_attention_int8.py
    assert set(CASES) == set(op_names()) - {"attention", "attention_fp8_out"}

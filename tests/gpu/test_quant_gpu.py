"""GPU-only: the quantising Triton kernels compile for the GPU and match their specifications.

Skipped without a GPU (the CPU suite runs the same kernels in the interpreter) and on GPUs
without e4m3 tensor cores (before sm_89). The fp8 ops' provider-vs-native cases run on the GPU
through tests/gpu/test_ops_gpu.py (tests/ops/quant_cases.py).
"""

from __future__ import annotations

import pytest
import torch

from fastdit.ops.attention import attention_native
from fastdit.ops.attention_int8 import attention_int8_native, quantize_qkv_native
from fastdit.ops.registry import call_provider, is_supported, providers
from fastdit.quant.formulas import quantize_fp8_rows, quantize_fp8_weight
from fastdit.quant.inputs import attention_inputs
from tests.quant.accuracy import check
from tests.quant.int8_reference import replay

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def kernel():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    if not is_supported(providers("attention")["int8_triton"]):
        pytest.skip("int8_triton needs an sm_89+ GPU")
    from fastdit.kernels.triton import attention_int8

    return attention_int8


def _cuda(*tensors):
    return tuple(t.cuda() for t in tensors)


@pytest.mark.parametrize("dim", [64, 128])
def test_quantisation_equals_the_spec_bit_for_bit_on_the_gpu(kernel, dim):
    q, k, v = _cuda(*attention_inputs("outlier", (2, 1000, 4, dim), torch.bfloat16, seed=1))
    qkv = kernel.quantize_qkv(q, k, v, v_split=True)
    q_i8, sq, k_i8, sk, v_hi, v_lo, sv, v_mean = quantize_qkv_native(q, k, v, v_split=True)
    L = q.shape[1]
    assert torch.equal(qkv.q[:, :, :L].transpose(1, 2), q_i8)
    assert torch.equal(qkv.q_scale[:, :, :L].transpose(1, 2), sq)
    assert torch.equal(qkv.k[:, :, :L].transpose(1, 2), k_i8)
    assert torch.equal(qkv.k_scale[:, :, :L].transpose(1, 2), sk)
    bits = lambda t: t.view(torch.int8)  # noqa: E731
    assert torch.equal(bits(qkv.v[..., :L].permute(0, 3, 1, 2)), bits(v_hi))
    assert torch.equal(bits(qkv.v_lo[..., :L].permute(0, 3, 1, 2)), bits(v_lo))
    assert torch.equal(qkv.v_scale, sv) and torch.equal(qkv.v_mean, v_mean)


@pytest.mark.parametrize("dim", [64, 128])
def test_every_candidate_compiles_and_matches_the_replay(kernel, dim):
    q, k, v = _cuda(*attention_inputs("outlier", (1, 1000, 2, dim), torch.bfloat16, seed=2))
    ref = {}
    for config in kernel.CONFIGS[dim]:
        out = kernel.attention_int8(q, k, v, config=config)
        if config.block_n not in ref:
            ref[config.block_n] = replay(q.cpu(), k.cpu(), v.cpu(), config.block_n).cuda()
        # P V accumulated in the MMA across blocks (sm_90's ~22-bit adder) is not the replay's
        # fp32 sum: those candidates are held to the spec's bound
        check("spec" if config.pv_fused else "reference", "outlier", out, ref[config.block_n],
              config.name)


@pytest.mark.parametrize("kind", ["gaussian", "outlier"])
@pytest.mark.parametrize("length", [4095, 8190])
def test_long_sequences_against_spec_and_exact(kernel, kind, length):
    """Many key blocks and a tail: the fp32 accumulator must not lose the per-block sums."""
    q, k, v = _cuda(*attention_inputs(kind, (1, length, 2, 128), torch.bfloat16, seed=3))
    out = call_provider("attention", "int8_triton", q, k, v)
    check("spec", kind, out, attention_int8_native(q, k, v), "vs spec")
    check("exact_long", kind, out, attention_native(q.float(), k.float(), v.float()), "vs exact")


def test_fp8_product_providers_against_float64_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1536, generator=gen).cuda().bfloat16()
    w8, ws = quantize_fp8_weight(torch.randn(1536, 1536, generator=gen).cuda() / 40)
    bias = torch.randn(1536, generator=gen).cuda().bfloat16()
    x8, xs = quantize_fp8_rows(x)
    x64, w64 = x8.double() * xs.double()[:, None], w8.double() * ws.double()[:, None]
    y64 = x64 @ w64.T + bias.double()
    # the bf16 output's rounding (2^-9 |y|, twice with the bias) plus the fp8 MMA's: cuBLAS's
    # fast accumulation (scaled_mm.FAST_ACCUM, measured 1.18-1.28x faster) and Triton's
    # default keep a slice's sum in about 14 bits on sm_90, so that part is bounded against
    # the products' magnitudes sum_k |x w| (h200-run17: 0.024 over |y| <= 6 failed a bound
    # of 1e-3 max |y|)
    magnitude = x64.abs() @ w64.abs().T
    ran = []
    for name in ("scaled_mm", "triton"):
        provider = providers("linear_fp8")[name]
        if not is_supported(provider):
            continue
        y = call_provider("linear_fp8", name, x, w8, ws, bias)
        err = (y.double() - y64).abs()
        assert torch.all(err <= y64.abs() * 2.0**-8 + 2.0**-9 * magnitude), (name, err.max())
        ran.append(name)
    if not ran:
        pytest.skip("no fp8 product provider on this GPU")


def test_fp8_output_and_grouped_projection_on_the_gpu(kernel):
    from fastdit.kernels.triton import gemm_fp8

    q, k, v = _cuda(*attention_inputs("gaussian", (1, 2000, 4, 128), torch.bfloat16, seed=5))
    o_q, o_scale = call_provider("attention_fp8_out", "triton", q, k, v)
    deq = o_q.float() * o_scale[..., None]
    check("spec_fp8_out", "gaussian", deq, attention_int8_native(q, k, v).float(), "fp8 out vs spec")
    w8, ws = quantize_fp8_weight(torch.randn(512, 512, device="cuda") / 23)
    x = o_q.flatten(2)  # (1, 2000, 512): one scale per head (128 channels)
    x64 = (x.double().unflatten(-1, (4, 128)) * o_scale.double()[..., None]).flatten(-2)
    w64 = w8.double() * ws.double()[:, None]
    y64 = x64 @ w64.T
    # sm_90's fp8 MMA accumulates a BLOCK_K slice in about 14 bits (DeepSeek-V3's figure;
    # Triton's default there), so the error is bounded against the products' magnitudes,
    # sum_k |x w|, not against |y|: 2^-8 of them is loose for 128-long slices and still 100x
    # under what a wrong scale or group would give.
    magnitude = x64.abs() @ w64.abs().T
    for config in gemm_fp8.CONFIGS:
        y = gemm_fp8.linear_fp8_grouped(x, o_scale, w8, ws, None, torch.float32, config)
        err = (y.double() - y64).abs()
        assert torch.all(err <= 2.0 ** -8 * magnitude + 1e-6), (config, (err / magnitude).max())


def test_wan_fp8_preset_forward_on_the_gpu(kernel):
    """A small bf16 Wan model (head dim 128) in the fp8 preset on the GPU kernels: the 8-bit
    attention, the fp8-emitting norms, the GELU quantiser and torch._scaled_mm; its forward
    against the exact one."""
    from fastdit.config import get_config, use_config
    from fastdit.models.wan import WanTransformer
    from fastdit.models.wan.configs import WanConfig
    from fastdit.ops.registry import plans
    from fastdit.quant.apply import apply_precision
    from fastdit.quant.inputs import cosine

    config = WanConfig(num_attention_heads=2, attention_head_dim=128, ffn_dim=1024, num_layers=2)
    exact = WanTransformer.from_config(config, dtype=torch.bfloat16, device="cuda", seed=0)
    fp8 = WanTransformer.from_config(config, dtype=torch.bfloat16, device="cuda", seed=0)
    report = apply_precision(fp8, "fp8")
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 5, 32, 32, generator=gen).cuda().bfloat16()  # 1280 tokens
    text = torch.randn(1, 512, 4096, generator=gen).cuda().bfloat16()
    t = torch.tensor([700.0], device="cuda")
    with torch.no_grad():
        ref, out = exact(latents, t, text), fp8(latents, t, text)
        with use_config(fp8.attend.config_for(get_config())):
            attention = {p.provider.name for p in plans("attention").values()}
    assert report.attention_providers == ("int8_triton",) and "int8_triton" in attention
    assert {p.provider.name for p in plans("linear_fp8").values()} <= {"triton", "scaled_mm"}
    from fastdit.quant.apply import weight_bytes

    total = weight_bytes(exact)
    assert report.weights.bytes_after < 0.52 * report.weights.bytes_before  # e4m3 + fp32 scales
    assert report.weight_bytes == total - (report.weights.bytes_before - report.weights.bytes_after)
    assert cosine(out, ref) >= 0.995  # the forward target

"""The 8-bit attention providers (``int8_native``: the plain-torch spec; ``int8_triton``: the
kernel, under the Triton interpreter here) against fp32 exact attention, against the spec, and
against a block-by-block replay of the kernel; bounds from tests/quant/accuracy.py."""

from __future__ import annotations

import logging

import pytest
import torch

from fastdit import ops
from fastdit.config import EngineConfig, PlatformConfig, override_config, set_config
from fastdit.ops.attention import attention_native
from fastdit.ops.attention_int8 import attention_int8_native, quantize_qkv_native
from fastdit.ops.registry import ProviderError, call_provider, is_supported, priority, providers
from fastdit.quant import INEXACT_PROVIDERS, preset
from fastdit.quant.inputs import attention_inputs
from tests.quant.accuracy import check
from tests.quant.int8_reference import replay


def exact(q, k, v):
    return attention_native(q.float(), k.float(), v.float())


@pytest.fixture(scope="module")
def kernel():
    pytest.importorskip("triton")
    if not is_supported(providers("attention")["int8_triton"]):
        pytest.skip("int8_triton needs an sm_89+ GPU or TRITON_INTERPRET=1")
    from fastdit.kernels.triton import attention_int8

    return attention_int8


def strided_qkv(shape, dtype, kind="gaussian", seed=0):
    """q, k, v as views into one ``[B, L, 3, H, D]`` buffer (a fused qkv projection)."""
    q, k, v = attention_inputs(kind, shape, dtype, seed)
    buf = torch.stack([q, k, v], dim=2)  # (B, L, 3, H, D)
    return buf[:, :, 0], buf[:, :, 1], buf[:, :, 2]


# ---------------------------------------------------------------------------------------
# the specification
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "outlier"])
@pytest.mark.parametrize("dtype,dim", [(torch.bfloat16, 128), (torch.float16, 64)])
def test_spec_meets_the_accuracy_table(kind, dtype, dim):
    q, k, v = attention_inputs(kind, (1, 600, 2, dim), dtype, seed=3)
    out = call_provider("attention", "int8_native", q, k, v)
    assert out.dtype == dtype
    check("exact", kind, out, exact(q, k, v), "int8_native")


def test_spec_grouped_heads_equal_repeated_heads():
    q, k, v = attention_inputs("gaussian", (1, 40, 4, 64), torch.bfloat16, seed=1)
    k2, v2 = k[:, :, :2], v[:, :, :2]
    grouped = attention_int8_native(q, k2, v2)
    repeated = attention_int8_native(q, k2.repeat_interleave(2, 2), v2.repeat_interleave(2, 2))
    torch.testing.assert_close(grouped, repeated, rtol=0, atol=0)


def test_spec_rejects_what_the_recipe_does_not_take():
    q, k, v = attention_inputs("gaussian", (1, 8, 1, 64), torch.float32)
    with pytest.raises(ValueError, match="attention: the int8 recipe"):
        attention_int8_native(q, k, v, causal=True)
    with pytest.raises(ValueError, match="attention: the int8 recipe"):
        attention_int8_native(q, k, v, attn_mask=torch.ones(8, 8, dtype=torch.bool))


# ---------------------------------------------------------------------------------------
# the Triton kernel
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,dim,layout", [(77, 64, "contiguous"), (130, 128, "strided"),
                                               (200, 128, "gqa")])
def test_kernel_quantisation_equals_the_spec_bit_for_bit(kernel, length, dim, layout):
    shape = (2, length, 2, dim)
    if layout == "strided":
        q, k, v = strided_qkv(shape, torch.bfloat16, "outlier")
    else:
        q, k, v = attention_inputs("outlier", shape, torch.bfloat16, seed=5)
        if layout == "gqa":
            q = torch.cat([q, q.flip(1)], dim=2)  # 4 query heads on 2 kv heads
    qkv = kernel.quantize_qkv(q, k, v, v_split=True)
    q_i8, sq, k_i8, sk, v_hi, v_lo, sv, v_mean = quantize_qkv_native(q, k, v, v_split=True)
    L = length
    assert qkv.q.shape[2] % kernel.PAD == 0 and qkv.v.shape[3] % kernel.PAD == 0
    assert torch.equal(qkv.q[:, :, :L].transpose(1, 2), q_i8)
    assert torch.equal(qkv.q_scale[:, :, :L].transpose(1, 2), sq)
    assert torch.equal(qkv.k[:, :, :L].transpose(1, 2), k_i8)
    assert torch.equal(qkv.k_scale[:, :, :L].transpose(1, 2), sk)
    as_bits = lambda t: t.view(torch.int8)  # noqa: E731
    assert torch.equal(as_bits(qkv.v[..., :L].permute(0, 3, 1, 2)), as_bits(v_hi))
    assert torch.equal(as_bits(qkv.v_lo[..., :L].permute(0, 3, 1, 2)), as_bits(v_lo))
    assert torch.equal(qkv.v_scale, sv) and torch.equal(qkv.v_mean, v_mean)
    # padding rows are zeros (the unmasked key loop reads them; NaN bits would poison P V)
    assert not qkv.k[:, :, L:].any() and not as_bits(qkv.v[..., L:]).any()
    assert not as_bits(qkv.v_lo[..., L:]).any()


@pytest.mark.parametrize("dim", [64, 128])
def test_every_launch_candidate_matches_the_replay(kernel, dim):
    """Each autotune candidate (tile sizes, warps, stages, int -> float conversion) computes
    the same thing: 150 keys are 1-2 full blocks and a tail block."""
    q, k, v = attention_inputs("outlier", (1, 150, 1, dim), torch.bfloat16, seed=7)
    for config in kernel.CONFIGS[dim]:
        out = kernel.attention_int8(q, k, v, config=config)
        check("reference", "outlier", out, replay(q, k, v, config.block_n), config.name)


@pytest.mark.parametrize("v_split", [False, True])
def test_descriptor_loads_equal_pointer_loads(kernel, v_split):
    """The ``tma`` candidates read the same tiles through tensor descriptors: bit for bit the
    pointer kernel's output, across batches, grouped heads and a tail block (and the fp8
    epilogue)."""
    import dataclasses

    q, _, _ = attention_inputs("outlier", (2, 150, 2, 128), torch.bfloat16, seed=5)
    _, k, v = attention_inputs("outlier", (2, 150, 1, 128), torch.bfloat16, seed=6)
    tiles = {}  # one candidate per tile shape: the interpreter runs every stage count alike
    for c in kernel.CONFIGS[128]:
        if c.tma:
            tiles.setdefault((c.block_m, c.block_n), c)
    tma = list(tiles.values())
    assert tma, "no descriptor candidate"
    qkv = kernel.quantize_qkv(q, k, v, v_split)
    for config in tma:
        plain = dataclasses.replace(config, tma=False)
        assert torch.equal(kernel.attention_quantized(qkv, q.dtype, 128 ** -0.5, config),
                           kernel.attention_quantized(qkv, q.dtype, 128 ** -0.5, plain)), config.name
    o8, s8 = kernel.attention_quantized(qkv, q.dtype, 128 ** -0.5, tma[0], out_fp8=True)
    p8, t8 = kernel.attention_quantized(qkv, q.dtype, 128 ** -0.5, dataclasses.replace(tma[0], tma=False),
                                        out_fp8=True)
    assert torch.equal(o8.view(torch.uint8), p8.view(torch.uint8)) and torch.equal(s8, t8)


@pytest.mark.parametrize("kind", ["gaussian", "outlier"])
@pytest.mark.parametrize("dtype,dim,length", [(torch.bfloat16, 128, 333), (torch.float16, 64, 201)])
def test_kernel_against_spec_and_exact(kernel, kind, dtype, dim, length):
    q, k, v = attention_inputs(kind, (1, length, 2, dim), dtype, seed=11)
    out = call_provider("attention", "int8_triton", q, k, v)
    assert out.dtype == dtype and out.shape == q.shape
    check("spec", kind, out, attention_int8_native(q, k, v), "int8_triton vs spec")
    check("exact", kind, out, exact(q, k, v), "int8_triton vs exact")


def test_strided_inputs_equal_contiguous_ones(kernel):
    q, k, v = strided_qkv((1, 90, 2, 64), torch.bfloat16)
    assert not q.is_contiguous()
    out = call_provider("attention", "int8_triton", q, k, v)
    dense = call_provider("attention", "int8_triton", q.contiguous(), k.contiguous(), v.contiguous())
    assert torch.equal(out, dense)


def test_grouped_heads_cross_attention_and_short_keys(kernel):
    """Hq=4 on Hk=2, Lq != Lk, fewer keys than one block (only the masked tail runs)."""
    q, _, _ = attention_inputs("gaussian", (2, 70, 4, 64), torch.bfloat16, seed=2)
    _, k, v = attention_inputs("outlier", (2, 5, 2, 64), torch.bfloat16, seed=3)
    out = call_provider("attention", "int8_triton", q, k, v)
    check("reference", "gaussian", out, replay(q, k, v, kernel.CONFIGS[64][0].block_n), "gqa")
    check("exact", "gaussian", out, exact(q, k, v), "gqa vs exact")


def test_two_term_v_matches_its_replay_and_meets_the_issue_target(kernel):
    q, k, v = attention_inputs("gaussian", (1, 140, 1, 128), torch.bfloat16, seed=4)
    out = kernel.attention_int8(q, k, v, v_split=True)
    check("reference", "gaussian", out, replay(q, k, v, kernel.CONFIGS[128][0].block_n,
                                               v_split=True), "v_split=True")
    check("spec", "gaussian", out, attention_int8_native(q, k, v, v_split=True), "v_split=True")
    check("exact_v_split", "gaussian", out, exact(q, k, v), "v_split=True vs exact")


def test_value_smoothing_takes_a_shared_offset_out_of_the_error():
    """V with a per-channel offset shared by the tokens (a projection's bias): quantising
    ``v - mean`` keeps the error of zero-mean V; without the smoothing the offset would take
    up e4m3's range and the error would grow with it."""
    from fastdit.quant.inputs import relative_l1

    q, k, v = attention_inputs("gaussian", (1, 300, 2, 64), torch.float32, seed=12)
    offset = 6.0 * torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    ref = exact(q, k, v)
    shifted_ref = exact(q, k, v + offset)
    base = attention_int8_native(q, k, v).float() - ref
    shifted = attention_int8_native(q, k, v + offset).float() - shifted_ref
    assert shifted.abs().mean() < 1.3 * base.abs().mean()
    assert relative_l1(attention_int8_native(q, k, v + offset), shifted_ref) < 0.01


# ---------------------------------------------------------------------------------------
# dispatch: opt-in only, fall-back and strict mode
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("platform", ["cpu", "cuda"])
def test_int8_providers_are_in_no_default_priority_list(fresh_config, platform):
    set_config(EngineConfig(platform=PlatformConfig(platform=platform)))
    default_order = {p.name for p in priority("attention")}
    assert not default_order & {"int8_native", "int8_triton"}
    assert {("attention", "int8_native"), ("attention", "int8_triton")} <= INEXACT_PROVIDERS


def test_the_precision_setting_selects_the_kernel(fresh_config, kernel):
    q, k, v = attention_inputs("gaussian", (1, 50, 2, 64), torch.bfloat16, seed=9)
    with override_config(kernel={"op_providers": preset("fp8").op_providers()}):
        out = ops.attention(q, k, v)
    assert torch.equal(out, call_provider("attention", "int8_triton", q, k, v))
    assert not torch.equal(out, ops.attention(q, k, v))  # the default stays exact (SDPA)


def test_unsupported_head_dim_falls_back_with_a_warning_and_strict_raises(fresh_config, caplog,
                                                                          monkeypatch):
    from fastdit.ops import registry

    monkeypatch.setattr(registry, "_logged", set())  # warnings are once per process
    q, k, v = attention_inputs("gaussian", (1, 20, 2, 96), torch.bfloat16, seed=1)
    names = ("int8_triton", "int8_native")
    with override_config(kernel={"op_providers": {"attention": names}}):
        with caplog.at_level(logging.INFO, logger="fastdit.ops"):
            out = ops.attention(q, k, v)
    assert torch.equal(out, attention_int8_native(q, k, v))
    if is_supported(providers("attention")["int8_triton"]):
        assert any("int8_triton" in r.message and "cannot take" in r.message and r.levelno == logging.WARNING
                   for r in caplog.records)
    with override_config(kernel={"op_providers": {"attention": ("int8_triton",)}, "strict": True}):
        with pytest.raises(ProviderError, match="int8_triton"):
            ops.attention(q, k, v)


def test_unsupported_dtype_is_a_clear_error():
    q = torch.randn(1, 8, 2, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match="attention: q has unsupported dtype"):
        ops.attention(q, q, q)


# ---------------------------------------------------------------------------------------
# the e4m3 output for the fp8 output projection
# ---------------------------------------------------------------------------------------
def test_fp8_output_spec_quantises_the_fp32_output():
    from fastdit.ops.attention_int8 import attention_int8_fp32
    from fastdit.quant.formulas import quantize_fp8_rows

    q, k, v = attention_inputs("gaussian", (1, 60, 2, 64), torch.bfloat16, seed=2)
    o_q, o_scale = ops.attention_fp8_out(q, k, v)
    ref_q, ref_scale = quantize_fp8_rows(attention_int8_fp32(q, k, v))
    assert o_q.dtype == torch.float8_e4m3fn and o_scale.shape == (1, 60, 2)
    assert torch.equal(o_q.view(torch.int8), ref_q.view(torch.int8))
    assert torch.equal(o_scale, ref_scale)


@pytest.mark.parametrize("kind", ["gaussian", "outlier"])
def test_fp8_output_kernel_against_spec_and_replay(kernel, kind):
    q, k, v = strided_qkv((1, 150, 2, 128), torch.bfloat16, kind, seed=8)
    o_q, o_scale = call_provider("attention_fp8_out", "triton", q, k, v)
    deq = o_q.float() * o_scale[..., None]
    check("spec", kind, deq, attention_int8_native(q, k, v).float(), "fp8 out vs spec")
    check("exact_fp8_out", kind, deq, exact(q, k, v), "fp8 out vs exact")
    replayed = replay(q, k, v, kernel.CONFIGS[128][0].block_n).float()
    assert (deq - replayed).abs().max() <= 0.07 * replayed.abs().amax(-1, keepdim=True).max()


def test_fp8_output_feeds_the_grouped_fp8_projection(kernel):
    """attention -> e4m3 per (token, head) -> o-projection with per-head scales (Triton
    product) against the bf16 attention and projection."""
    import torch.nn.functional as F

    from fastdit.quant.formulas import quantize_fp8_weight

    q, k, v = attention_inputs("gaussian", (1, 70, 2, 64), torch.bfloat16, seed=6)
    w = torch.randn(96, 128) / 128**0.5
    w_q, w_s = quantize_fp8_weight(w)
    o_q, o_scale = call_provider("attention_fp8_out", "triton", q, k, v)
    y = call_provider("linear_fp8", "triton", o_q.flatten(2), w_q, w_s, None, x_scale=o_scale,
                      out_dtype=torch.bfloat16)
    ref = F.linear(exact(q, k, v).flatten(2), w)
    check("ffn", "gaussian", y, ref, "attention -> o-projection in fp8")

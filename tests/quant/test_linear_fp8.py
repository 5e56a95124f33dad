"""The fp8 product and its producers: every provider against a float64 product of the
dequantised operands, the fused producers against the unfused ops, an fp8 FFN against its
bf16 version, and bad input (clear errors, logged fall-backs, strict mode)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from fastdit import ops
from fastdit.config import override_config
from fastdit.ops.registry import ProviderError, call_provider, is_supported, providers
from fastdit.quant.formulas import quantize_fp8_rows, quantize_fp8_weight
from fastdit.quant.inputs import cosine, relative_l1
from tests.quant.accuracy import check

OUT_TOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _available(op):
    """Providers that run here; not ``compiled`` (slow to compile on the CPU, and its code may
    contract ``x * inv`` differently: covered by the light cases of tests/ops/test_providers)."""
    return [name for name, p in providers(op).items() if is_supported(p) and name != "compiled"]


def _case(dtype=torch.bfloat16, t=(3, 7), k=64, n=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(*t, k, generator=gen) * 2).to(dtype)
    weight, weight_scale = quantize_fp8_weight(torch.randn(n, k, generator=gen) * 0.1)
    bias = torch.randn(n, generator=gen).to(dtype)
    return x, weight, weight_scale, bias


def _float64_product(x_q, x_scale, weight, weight_scale, bias):
    """The dequantised operands' product in float64 (per-token or per-group x_scale)."""
    x64 = x_q.double()
    if x_scale.dim() == x_q.dim():
        x64 = (x64.unflatten(-1, (x_scale.shape[-1], -1)) * x_scale.double()[..., None]).flatten(-2)
    else:
        x64 = x64 * x_scale.double()[..., None]
    y = x64 @ (weight.double() * weight_scale.double()[:, None]).T
    return y if bias is None else y + bias.double()


def _assert_rounded_from(y, y64, dtype):
    """``y`` is ``y64`` rounded to ``dtype`` (within one unit, plus fp32 summation order)."""
    assert y.dtype == dtype
    err = (y.double() - y64).abs()
    assert torch.all(err <= y64.abs() * OUT_TOL[dtype] + 1e-4 * y64.abs().max()), err.max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_every_provider_against_the_float64_product(dtype):
    x, weight, weight_scale, bias = _case(dtype)
    x_q, x_scale = quantize_fp8_rows(x)
    y64 = _float64_product(x_q, x_scale, weight, weight_scale, bias)
    for name in _available("linear_fp8"):
        y = call_provider("linear_fp8", name, x, weight, weight_scale, bias)
        _assert_rounded_from(y, y64, dtype)


def test_prequantized_input_per_token_and_per_group():
    x, weight, weight_scale, bias = _case(torch.float32)
    x_q, x_scale = quantize_fp8_rows(x)
    y64 = _float64_product(x_q, x_scale, weight, weight_scale, bias.bfloat16())
    for name in _available("linear_fp8"):
        y = call_provider("linear_fp8", name, x_q, weight, weight_scale, bias.bfloat16(),
                          x_scale=x_scale, out_dtype=torch.bfloat16)
        _assert_rounded_from(y, y64, torch.bfloat16)
    # per-group scales (one per attention head of the output projection's input)
    x, weight, weight_scale, bias = _case(torch.float32, k=128, n=48)
    x_g, s_g = quantize_fp8_rows(x.unflatten(-1, (4, 32)))  # (3, 7, 4, 32), (3, 7, 4)
    x_g = x_g.flatten(-2)
    y64 = _float64_product(x_g, s_g, weight, weight_scale, bias.bfloat16())
    ran = []
    for name in _available("linear_fp8"):
        if providers("linear_fp8")[name].supports_args(x_g, weight, weight_scale, bias.bfloat16(),
                                                       x_scale=s_g, out_dtype=torch.float32):
            y = call_provider("linear_fp8", name, x_g, weight, weight_scale, bias.bfloat16(),
                              x_scale=s_g, out_dtype=torch.float32)
            _assert_rounded_from(y, y64, torch.float32)
            ran.append(name)
    assert "native" in ran and ("triton" in ran) == ("triton" in _available("linear_fp8"))


def test_quantize_fp8_equals_the_formula_bit_for_bit():
    x = torch.randn(4, 9, 200).bfloat16() * 5
    ref_q, ref_s = quantize_fp8_rows(x)
    for name in _available("quantize_fp8"):
        q, s = call_provider("quantize_fp8", name, x)
        assert torch.equal(q.view(torch.int8), ref_q.view(torch.int8)) and torch.equal(s, ref_s)


@pytest.mark.parametrize("gelu", [False, True])
def test_chunked_row_quantiser_equals_the_whole_row_one(monkeypatch, gelu):
    """A launch narrower than the row (``BLOCK_D < D``: two passes over 64-wide chunks, the
    last one partial, 4 rows a program, the last program partial) gives the whole-row
    kernel's bits, strided input included."""
    if "triton" not in _available("quantize_fp8"):
        pytest.skip("the Triton provider needs TRITON_INTERPRET=1 or a GPU")
    from fastdit.kernels.triton import quant_fp8

    x = (torch.randn(30, 2, 200) * 4).bfloat16()[:, 1]  # (30, 200), row stride 400
    whole = quant_fp8._quantize_rows(x, gelu)
    monkeypatch.setattr(quant_fp8, "quant_launch", lambda dim, n_rows, gelu: (64, 2, 4))
    chunked = quant_fp8._quantize_rows(x, gelu)
    assert torch.equal(chunked[0].view(torch.int8), whole[0].view(torch.int8))
    assert torch.equal(chunked[1], whole[1])
    if not gelu:
        ref_q, ref_s = quantize_fp8_rows(x)
        assert torch.equal(chunked[0].view(torch.int8), ref_q.view(torch.int8))
        assert torch.equal(chunked[1], ref_s)


def test_row_quantiser_launch_takes_a_tuned_entry_for_large_inputs_only(monkeypatch):
    pytest.importorskip("triton")
    from fastdit.kernels.triton import _support as S
    from fastdit.kernels.triton import quant_fp8

    rule = S.norm_launch(8960, 32760)
    for key in (("quant", 8960), ("quant_gelu", 8960)):
        monkeypatch.delitem(S.TUNED, key, raising=False)
    assert quant_fp8.quant_launch(8960, 32760, True) == rule  # no entry: whole rows
    monkeypatch.setitem(S.TUNED, ("quant_gelu", 8960), (2048, 8, 2))
    assert quant_fp8.quant_launch(8960, 32760, True) == (2048, 8, 2)
    assert quant_fp8.quant_launch(8960, 32760, False) == rule  # the other kernel's key
    monkeypatch.setitem(S.TUNED, ("quant", 8960), (16384, 8, 1))
    assert quant_fp8.quant_launch(8960, 32760, False) == (16384, 8, 1)
    assert quant_fp8.quant_launch(8960, 1000, True) == S.norm_launch(8960, 1000)


def test_gelu_tanh_fp8_against_float64():
    h = torch.randn(3, 5, 130).bfloat16() * 3
    g64 = F.gelu(h.double(), approximate="tanh")
    for name in _available("gelu_tanh_fp8"):
        q, s = call_provider("gelu_tanh_fp8", name, h)
        deq = q.double() * s.double()[..., None]
        bound = torch.maximum(g64.abs() * 2.0**-4, s.double()[..., None] * 2.0**-10) * 1.01 + 1e-6
        assert torch.all((deq - g64).abs() <= bound), name


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_fused_norms_quantise_the_unfused_result(norm):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 96, generator=gen).bfloat16()
    residual = torch.randn(2, 6, 96, generator=gen)
    gate, shift, scale = (torch.randn(2, 1, 96, generator=gen) * 0.5 for _ in range(3))
    weight, bias = torch.randn(96, generator=gen), torch.randn(96, generator=gen)
    y_ref = ops.layer_norm_scale_shift(x.float(), shift=shift, scale=scale, norm=norm, eps=1e-6)
    y2_ref, r_ref = ops.scale_residual_norm_scale_shift(residual, x, shift=shift, scale=scale, gate=gate,
                                                        weight=weight, bias=bias, norm=norm)
    y2_ref = ops.layer_norm_scale_shift(r_ref, shift=shift, scale=scale, weight=weight, bias=bias, norm=norm)
    for name in _available("layer_norm_scale_shift_fp8"):
        q, s = call_provider("layer_norm_scale_shift_fp8", name, x, shift=shift, scale=scale,
                             norm=norm)
        deq = q.double() * s.double()[..., None]
        assert torch.allclose(deq, y_ref.double(), rtol=2.0**-4, atol=s.max().item() * 2.0**-9), name
    for name in _available("scale_residual_norm_scale_shift_fp8"):
        q, s, r = call_provider("scale_residual_norm_scale_shift_fp8", name, residual, x,
                                shift=shift, scale=scale, gate=gate, weight=weight, bias=bias,
                                norm=norm)
        assert torch.equal(r, r_ref) and r.dtype == residual.dtype
        deq = q.double() * s.double()[..., None]
        assert torch.allclose(deq, y2_ref.double(), rtol=2.0**-4, atol=s.max().item() * 2.0**-9)


def test_an_fp8_ffn_stays_close_to_the_bf16_one():
    """norm -> fp8 product -> GELU + quantise -> fp8 product: the chain phase 2 wires into the
    Wan blocks, each activation quantised by the kernel that produces it."""
    gen = torch.Generator().manual_seed(6)
    dim, hidden = 64, 176
    x = torch.randn(2, 9, dim, generator=gen).bfloat16()
    shift, scale = (torch.randn(2, 1, dim, generator=gen) * 0.3 for _ in range(2))
    w1, w2 = (torch.randn(o, i, generator=gen) / i**0.5 for o, i in ((hidden, dim), (dim, hidden)))
    b1, b2 = torch.randn(hidden, generator=gen) * 0.1, torch.randn(dim, generator=gen) * 0.1
    h = ops.layer_norm_scale_shift(x, shift=shift, scale=scale)
    ref = F.linear(F.gelu(F.linear(h, w1.bfloat16(), b1.bfloat16()), approximate="tanh"),
                   w2.bfloat16(), b2.bfloat16())
    (w1q, s1), (w2q, s2) = quantize_fp8_weight(w1), quantize_fp8_weight(w2)
    h_q, h_s = ops.layer_norm_scale_shift_fp8(x, shift=shift, scale=scale)
    u = ops.linear_fp8(h_q, w1q, s1, b1.bfloat16(), x_scale=h_s, out_dtype=torch.bfloat16)
    g_q, g_s = ops.gelu_tanh_fp8(u)
    out = ops.linear_fp8(g_q, w2q, s2, b2.bfloat16(), x_scale=g_s, out_dtype=torch.bfloat16)
    check("ffn", "gaussian", out, ref, "fp8 FFN")


BAD_CALLS = [
    (lambda w, s: ops.linear_fp8(torch.randn(2, 64), w.float(), s), "weight has unsupported dtype"),
    (lambda w, s: ops.linear_fp8(torch.randn(2, 64), w, s[:5]), r"weight_scale must be \[N=48\]"),
    (lambda w, s: ops.linear_fp8(torch.randn(2, 32), w, s), r"weight must be \[N, K=32\]"),
    (lambda w, s: ops.linear_fp8(torch.randn(2, 64), w, s, torch.randn(7)), r"bias must be \[N=48\]"),
    (lambda w, s: ops.linear_fp8(torch.randn(2, 64).to(torch.float8_e4m3fn), w, s),
     "x has unsupported dtype"),
    (lambda w, s: ops.linear_fp8(torch.randn(2, 64).to(torch.float8_e4m3fn), w, s,
                                 x_scale=torch.ones(3)), "x_scale must be per token"),
    (lambda w, s: ops.linear_fp8(torch.randn(2, 64), w, s, out_dtype=torch.float16),
     "out_dtype is x's dtype"),
    (lambda w, s: ops.quantize_fp8(torch.randn(2, 4, dtype=torch.float64)), "x has unsupported dtype"),
    (lambda w, s: ops.layer_norm_scale_shift_fp8(torch.randn(2, 3, 8), shift=torch.randn(5),
                                                 scale=0.0),
     "shift does not broadcast"),
]


@pytest.mark.parametrize("call,message", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
def test_bad_input_is_a_clear_error(call, message):
    _, weight, weight_scale, _ = _case()
    with pytest.raises(ValueError, match=message):
        call(weight, weight_scale)


def test_unaligned_shapes_fall_back_with_a_warning_and_strict_raises(fresh_config, caplog):
    x, weight, weight_scale, bias = _case(k=40, n=24)  # K % 16 != 0: no fp8 tensor-core product
    names = [n for n in ("triton", "scaled_mm") if n in _available("linear_fp8")]
    if not names:
        pytest.skip("no fp8 product provider here")
    with override_config(kernel={"op_providers": {"linear_fp8": (names[0],)}}):
        with caplog.at_level(logging.INFO, logger="fastdit.ops"):
            y = ops.linear_fp8(x, weight, weight_scale, bias)
    assert torch.equal(y, call_provider("linear_fp8", "native", x, weight, weight_scale, bias))
    assert any(names[0] in r.message and "cannot take" in r.message and r.levelno == logging.WARNING
               for r in caplog.records)
    with override_config(kernel={"op_providers": {"linear_fp8": (names[0],)}, "strict": True}):
        with pytest.raises(ProviderError, match=names[0]):
            ops.linear_fp8(x, weight, weight_scale, bias)


def test_measures():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert cosine(a, a) == pytest.approx(1.0) and relative_l1(a, a) == 0.0
    assert relative_l1(a * 1.1, a) == pytest.approx(0.1)

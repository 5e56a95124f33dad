"""The quantisation formulas against float64 recomputations, the precision presets, and the
in-place fp8 weight conversion on a stand-in for ``fastdit.layers.linear.Linear``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastdit.errors import InputError, UserError
from fastdit.quant import PrecisionConfig, preset, quantize_linear_weights_
from fastdit.quant import formulas as F

E4M3_MIN_NORMAL = 2.0**-6


def _rows(shape=(6, 5, 33), scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * scale
    x[0, 0] = 0.0  # an all-zero row stays zero
    x[1, 1, 3] = 40.0 * scale  # an outlier sets its row's scale
    return x


# ---------------------------------------------------------------------------------------
# formulas
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_rows_against_float64(dtype):
    x = _rows().to(dtype)
    q, scale = F.quantize_int8_rows(x)
    x64 = x.double()
    amax = x64.abs().amax(-1).clamp_min(F.SCALE_FLOOR)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == x.shape[:-1]
    assert torch.equal(scale, (amax / 127).float())  # a correctly rounded division
    q64 = torch.round(x64 * (127 / amax)[..., None]).clamp(-127, 127)
    assert (q.double() - q64).abs().max() <= 1  # fp32 vs float64 rounding of x * inv
    assert (q.double() != q64).double().mean() < 1e-3
    err = (q.double() * scale.double()[..., None] - x64).abs()
    assert torch.all(err <= scale.double()[..., None] * (0.5 + 1e-5))
    assert torch.equal(q[0, 0], torch.zeros_like(q[0, 0]))
    assert q[1, 1, 3] == 127  # the row's amax maps to the end of the range


@pytest.mark.parametrize("dim", [-1, 0])
def test_fp8_rows_against_float64(dim):
    x = _rows()
    q, scale = F.quantize_fp8_rows(x, dim=dim)
    x64 = x.double()
    amax = x64.abs().amax(dim).clamp_min(F.SCALE_FLOOR)
    assert q.dtype == torch.float8_e4m3fn
    assert torch.equal(scale, (amax / 448).float())
    y64 = x64 / scale.double().unsqueeze(dim)  # the value the cast rounds, in units of scale
    qd = q.double()
    normal = y64.abs() >= E4M3_MIN_NORMAL
    # e4m3 keeps 4 significant bits: half a step is 2^-4 of the value's binade
    assert torch.all((qd - y64).abs()[normal] <= y64.abs()[normal] * 2.0**-4 * (1 + 1e-6))
    assert torch.all((qd - y64).abs()[~normal] <= 2.0**-10 * (1 + 1e-6))  # subnormal spacing 2^-9
    assert qd.abs().amax() == 448.0


def test_fp8_weight_is_per_output_channel():
    w = torch.randn(24, 40) * torch.logspace(-3, 1, 24)[:, None]  # rows of very different size
    w_q, s = F.quantize_fp8_weight(w.bfloat16())
    assert w_q.shape == (24, 40) and s.shape == (24,)
    rel = (F.dequantize(w_q, s) - w.bfloat16().float()).norm(dim=1) / w.bfloat16().float().norm(dim=1)
    assert rel.max() < 0.05  # every row keeps its own precision
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        F.quantize_fp8_weight(torch.randn(3, 4, 5))


def test_key_smoothing_against_float64_and_keeps_the_scores_softmax_equal():
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(2, 50, 3, 16, generator=gen) + 5 * torch.randn(3, 16, generator=gen)
    q = torch.randn(2, 50, 3, 16, generator=gen)
    mean, c, inv_c = F.key_smoothing(k)
    k64 = k.double()
    mean64 = k64.mean(1)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=1e-6)
    amax64 = (k64 - mean.double()[:, None]).abs().amax(1)
    torch.testing.assert_close(c.double(), amax64.sqrt(), rtol=1e-7, atol=0)
    torch.testing.assert_close((c * inv_c).double(), torch.ones_like(mean64), rtol=1e-7, atol=0)
    # exact attention on the smoothed, balanced q and k equals exact attention on q and k
    q_s = q.double() * c.double()[:, None]
    k_s = (k64 - mean.double()[:, None]) * inv_c.double()[:, None]
    def attn_probs(a, b):
        return torch.softmax(torch.einsum("blhd,bmhd->bhlm", a, b) / 4, dim=-1)
    torch.testing.assert_close(attn_probs(q_s, k_s), attn_probs(q.double(), k64), rtol=1e-5, atol=1e-9)


def test_value_quantisation_per_channel_and_split():
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(2, 64, 3, 16, generator=gen) * torch.logspace(-2, 1, 16)
    v_q, sv = F.quantize_v_fp8(v)
    hi, lo, sv2 = F.quantize_v_fp8_split(v)
    assert torch.equal(sv, sv2) and sv.shape == (2, 3, 16)
    torch.testing.assert_close(sv.double(), v.double().abs().amax(1) / 448, rtol=1e-7, atol=0)
    assert torch.equal(hi.view(torch.int8), v_q.view(torch.int8))
    one = (v_q.double() * sv.double()[:, None] - v.double()).abs()
    two = ((hi.double() + lo.double()) * sv.double()[:, None] - v.double()).abs()
    assert lo.double().abs().max() <= 16
    assert two.sum() < one.sum() / 8  # the residual term removes most of the error
    torch.testing.assert_close(F.dequantize(v_q, sv, dim=1), v_q.float() * sv[:, None])


def test_scale_floor_keeps_zero_rows_finite():
    q, s = F.quantize_fp8_rows(torch.zeros(3, 8))
    assert torch.isfinite(s).all() and not q.float().any()
    qi, si = F.quantize_int8_rows(torch.zeros(2, 4))
    assert torch.isfinite(si).all() and not qi.any()


# ---------------------------------------------------------------------------------------
# precision presets
# ---------------------------------------------------------------------------------------
def test_presets():
    none, fp8 = preset("none"), preset("fp8")
    assert none.exact and none.op_providers() == {}
    assert not fp8.exact and fp8.attention == "int8" and fp8.linear == "fp8"
    assert fp8.op_providers() == {"attention": ("int8_triton", "int8_native")}
    mixed = preset("fp8", attention="exact")
    assert mixed.linear == "fp8" and mixed.op_providers() == {}
    assert "approximate" in fp8.describe() and none.describe() == "precision: exact (quantize=none)"
    with pytest.raises(dataclasses_frozen_error()):
        fp8.linear = "exact"


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("call,message", [
    (lambda: preset("int4"), "quantize must be one of none, fp8"),
    (lambda: PrecisionConfig(attention="fp4"), "attention must be one of exact, int8, sage"),
    (lambda: PrecisionConfig(linear="int8"), "linear must be one of exact, fp8"),
])
def test_bad_precision_values_are_user_errors(call, message):
    with pytest.raises(InputError, match=message) as info:
        call()
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_which_linears_are_quantised():
    fp8 = preset("fp8")
    for name in ("blocks.0.attn1.to_q", "blocks.3.attn2.to_out.0", "blocks.1.ffn.net.0.proj",
                 "blocks.1.ffn.net.2"):
        assert fp8.quantizes_linear(name), name
    for name in ("patch_embedding", "condition_embedder.time_embedder.linear_1",
                 "condition_embedder.time_proj", "condition_embedder.text_embedder.linear_2",
                 "proj_out"):
        assert not fp8.quantizes_linear(name), name
    assert not preset("none").quantizes_linear("blocks.0.attn1.to_q")


# ---------------------------------------------------------------------------------------
# fp8 weights in place
# ---------------------------------------------------------------------------------------
class StandInLinear(nn.Module):
    """The parts of fastdit.layers.linear.Linear (seams.md section 2) the conversion uses."""

    def __init__(self, k, n, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, k, dtype=torch.bfloat16) / math.sqrt(k))
        self.bias = nn.Parameter(torch.randn(n, dtype=torch.bfloat16)) if bias else None
        self.register_buffer("weight_scale", None)
        self.compute = "dense"


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"to_q": StandInLinear(32, 32),
                                                    "ffn": StandInLinear(32, 64, bias=False)})])
        self.condition_embedder = nn.ModuleDict({"time_proj": StandInLinear(16, 96)})
        self.proj_out = StandInLinear(32, 8)
        self.plain = nn.Linear(8, 8)  # no weight_scale: not a quantisable layer


def test_quantize_linear_weights_in_place():
    model = TinyModel()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules()
              if isinstance(m, StandInLinear)}
    plain_weight = model.plain.weight.detach().clone()
    report = quantize_linear_weights_(model, preset("fp8"))
    assert report.layers == ("blocks.0.to_q", "blocks.0.ffn")
    assert set(report.kept_dense) == {"condition_embedder.time_proj", "proj_out"}
    assert report.bytes_before == (32 * 32 + 64 * 32) * 2
    assert report.bytes_after == (32 * 32 + 64 * 32) + (32 + 64) * 4
    for name in report.layers:
        layer = model.get_submodule(name)
        assert layer.weight.dtype == torch.float8_e4m3fn and not layer.weight.requires_grad
        assert layer.compute == "fp8" and layer.weight_scale.dtype == torch.float32
        scale = layer.weight_scale.double()[:, None]
        w64, ref = layer.weight.double() * scale, before[name].double()
        torch.testing.assert_close(scale[:, 0], ref.abs().amax(1) / 448, rtol=1e-7, atol=0)
        # half an e4m3 step: 2^-4 of the value (normals), 2^-10 of the scale (subnormals)
        bound = torch.maximum(ref.abs() * 2.0**-4, scale * 2.0**-10) * (1 + 1e-6)
        assert torch.all((w64 - ref).abs() <= bound)
    for name in report.kept_dense:
        layer = model.get_submodule(name)
        assert torch.equal(layer.weight, before[name]) and layer.weight_scale is None
        assert layer.compute == "dense"
    assert torch.equal(model.plain.weight, plain_weight)
    assert "blocks.0.to_q.weight_scale" in model.state_dict()  # a buffer: saved and moved
    again = quantize_linear_weights_(model, preset("fp8"))  # idempotent
    assert again.layers == report.layers and again.bytes_before == 0
    assert "fp8 weights: 2 linear layers" in report.describe()


def test_quantize_with_a_selector_and_dense_compute():
    model = TinyModel()
    report = quantize_linear_weights_(model, select=lambda name, m: name == "proj_out",
                                      compute="dense")
    assert report.layers == ("proj_out",) and model.proj_out.compute == "dense"
    assert model.proj_out.weight.dtype == torch.float8_e4m3fn


def test_weight_quantiser_for_the_fnuz_format_against_float64():
    """MI300's float8_e4m3fnuz (largest value 240): the same per-channel formula with 240."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(24, 40, generator=gen) * torch.logspace(-3, 1, 24)[:, None]
    w[3] = 0.0
    q, s = F.quantize_fp8_weight(w, torch.float8_e4m3fnuz)
    assert q.dtype == torch.float8_e4m3fnuz and s.shape == (24,)
    amax = w.double().abs().amax(1).clamp_min(1e-12)
    torch.testing.assert_close(s.double(), amax / 240, rtol=1e-7, atol=0)
    assert not q[3].float().any() and torch.isfinite(s).all()
    err = (q.double() * s.double()[:, None] - w.double()).abs()
    assert torch.all(err <= torch.maximum(w.double().abs() * 2.0**-4, s.double()[:, None] * 2.0**-10)
                     * 1.001 + 1e-30)
    with pytest.raises(ValueError, match=r"must be a float \[N, K\] matrix"):
        F.quantize_fp8_weight(torch.ones(4, dtype=torch.int32))

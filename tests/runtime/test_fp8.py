"""FP8 weight storage: the per-channel quantiser against its float64 bound, the dequantisation
into the pool slot against Linear.dense_weight, and the forward's cosine against bf16/fp32."""

import pytest
import torch

from fastdit.quant.inputs import cosine
from fastdit.runtime import StreamPlan, stream_model
from fastdit.runtime.fp8 import dequantize_per_channel, error_bound, quantize_per_channel
from tests.runtime.helpers import I2V, T2V5, clone, forward, inputs, model

#: The forward's cosine against the dense weights on the tiny models: measured 0.99989-0.99994
#: (fp32, 5 blocks), 0.99984-0.99991 (bf16), 0.99968-0.99984 (I2V, 3 blocks) over three seeds.
FORWARD_COSINE = 0.999


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e4m3fnuz])
@pytest.mark.parametrize("kind", ["gaussian", "outliers", "tiny-rows"])
def test_quantiser_error_is_within_the_stated_bound(fp8, kind):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(97, 769, generator=g, dtype=torch.float64)
    if kind == "outliers":
        w[::7, ::13] *= 80.0
    elif kind == "tiny-rows":
        w[3] *= 1e-30
        w[5] = 0.0
        w[9, :400] *= 1e-4  # values deep in the subnormal range of their row
    q, scale = quantize_per_channel(w.float(), fp8)
    assert q.dtype == fp8 and scale.dtype == torch.float32 and scale.shape == (97,)
    deq = q.double() * scale.double()[:, None]  # the exact dequantised value, float64
    err = (w.float().double() - deq).abs()
    bound = error_bound(w.float(), scale, fp8).double()
    assert bool((err <= bound).all()), float((err / bound).max())
    if kind == "tiny-rows":  # an all-zero row gets the floor scale (quant.formulas) and zeros
        assert float(scale[5]) == pytest.approx(1e-12 / torch.finfo(fp8).max, rel=1e-6)
        assert bool((q[5].float() == 0).all())
    # the largest |W| of each row maps to the format's largest value
    info = torch.finfo(fp8)
    row_max = q.float().abs().amax(dim=1)
    assert bool((row_max[row_max > 0] == info.max).all())


def test_dequantise_matches_linear_dense_weight():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(1)) * 0.05
    q, scale = quantize_per_channel(w)
    for dtype in (torch.float32, torch.bfloat16):
        dense = torch.empty(64, 48, dtype=dtype)
        dense.copy_(q)
        dense.mul_(scale.view(-1, 1))  # what the pool slot does
        torch.testing.assert_close(dense, dequantize_per_channel(q, scale, dtype), atol=0, rtol=0)


def test_quantiser_rejects_bad_input():
    with pytest.raises(ValueError, match="float"):
        quantize_per_channel(torch.ones(3, dtype=torch.float32))
    with pytest.raises(ValueError, match="float"):
        quantize_per_channel(torch.ones(3, 3, dtype=torch.int32))


@pytest.mark.parametrize("config,dtype", [(T2V5, torch.float32), (T2V5, torch.bfloat16), (I2V, torch.float32)],
                         ids=["t2v-fp32", "t2v-bf16", "i2v-fp32"])
def test_fp8_forward_cosine(config, dtype):
    base = model(config, dtype=dtype)
    args = inputs(config, batch=2)
    args = tuple(a.to(dtype) if a is not None and a.is_floating_point() else a for a in args)
    ref = forward(base, args)
    streamed = stream_model(clone(base), StreamPlan.spread(config.num_layers, 1, 1), "cpu", weights="fp8")
    out = forward(streamed, args)
    cos = cosine(out, ref)
    assert FORWARD_COSINE <= cos < 1.0, cos  # lossy, but close
    layout = streamed.streamer.store.layout
    fp8_tensors = [t for t in layout.tensors if t.dtype.itemsize == 1]
    assert len(fp8_tensors) == 10 + (2 if config.has_image_input else 0)  # every block Linear


def test_fp8_slot_and_linear_dequantisation_agree_exactly():
    """Dequantising into the pool's dense buffer gives the same forward as leaving the fp8
    weight and its scale to Linear.dense_weight."""
    base = model(T2V5)
    args = inputs(T2V5)
    slot = stream_model(clone(base), StreamPlan.spread(5, 2, 1), "cpu", weights="fp8")
    linear = stream_model(clone(base), StreamPlan.spread(5, 2, 1), "cpu", weights="fp8", dequantize="linear")
    torch.testing.assert_close(forward(slot, args), forward(linear, args), atol=0, rtol=0)
    # outside the block loop the Linears hold their fp8 weight and scale (host views)
    lin = slot.model.blocks[0].ffn.net[2]
    assert lin.weight.dtype == torch.float8_e4m3fn and lin.weight_scale.dtype == torch.float32


def test_fp8_halves_the_host_store():
    base = model(T2V5)
    dense = stream_model(clone(base), StreamPlan.spread(5, 0, 1), "cpu").streamer.store.layout.nbytes
    fp8 = stream_model(clone(base), StreamPlan.spread(5, 0, 1), "cpu", weights="fp8").streamer.store.layout.nbytes
    assert fp8 < 0.45 * dense  # fp32 -> 1 byte per Linear weight (plus scales, biases, norms)

"""The layer-level product for each weight storage and compute mode (what phase 2's
``Linear.forward`` calls), and the e4m3 activation carrier between producer and product."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdit import ops
from fastdit.ops.registry import call_provider
from fastdit.quant import preset, quantize_linear_weights_
from fastdit.quant.formulas import quantize_fp8_rows, quantize_fp8_weight
from fastdit.quant.linear import (Fp8Activation, dequantize_weight, linear_forward,
                                  linear_gelu_tanh_fp8)
from tests.quant.accuracy import check
from tests.quant.test_formulas import TinyModel


def _weights(n=48, k=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) / k**0.5
    return w, torch.randn(n, generator=gen).bfloat16()


def test_dense_weight_is_a_plain_product():
    w, b = _weights()
    x = torch.randn(3, 64).bfloat16()
    assert torch.equal(linear_forward(x, w.bfloat16(), b), F.linear(x, w.bfloat16(), b))


def test_fp8_storage_with_dense_compute_dequantises_the_weight():
    w, b = _weights()
    w_q, w_s = quantize_fp8_weight(w)
    x = torch.randn(3, 64).bfloat16()
    ref = F.linear(x, (w_q.float() * w_s[:, None]).bfloat16(), b)
    assert torch.equal(linear_forward(x, w_q, b, w_s, "dense"), ref)
    assert torch.equal(dequantize_weight(w_q, w_s, torch.float32), w_q.float() * w_s[:, None])


def test_fp8_compute_from_a_float_input_and_from_a_producer():
    w, b = _weights(k=96)
    w_q, w_s = quantize_fp8_weight(w)
    x = torch.randn(2, 5, 96).bfloat16()
    assert torch.equal(linear_forward(x, w_q, b, w_s, "fp8"),
                       call_provider("linear_fp8", "native", x, w_q, w_s, b))
    shift, scale = torch.randn(2, 1, 96) * 0.2, torch.randn(2, 1, 96) * 0.2
    y_q, y_s = ops.layer_norm_scale_shift_fp8(x, shift=shift, scale=scale)
    act = Fp8Activation(y_q, y_s, torch.bfloat16)
    out = linear_forward(act, w_q, b, w_s, "fp8")
    assert torch.equal(out, ops.linear_fp8(y_q, w_q, w_s, b, x_scale=y_s, out_dtype=torch.bfloat16))
    dense = F.linear(ops.layer_norm_scale_shift(x, shift=shift, scale=scale), w.bfloat16(), b)
    check("ffn", "gaussian", out, dense, "norm -> fp8 product")


def test_fp8_activation_dequantises_per_token_and_per_group():
    x = torch.randn(4, 6, 128) * 3
    q, s = quantize_fp8_rows(x)
    torch.testing.assert_close(Fp8Activation(q, s, torch.float32).dequantize(), q.float() * s[..., None])
    qg, sg = quantize_fp8_rows(x.unflatten(-1, (2, 64)))
    act = Fp8Activation(qg.flatten(-2), sg, torch.float32)
    torch.testing.assert_close(act.dequantize(), (qg.float() * sg[..., None]).flatten(-2))
    torch.testing.assert_close(act.dequantize(), x, rtol=2.0**-4, atol=sg.max().item() * 2.0**-9)


def test_ffn_in_fp8_through_the_layer_helpers():
    model = TinyModel()
    quantize_linear_weights_(model, preset("fp8"))
    up, down = model.blocks[0]["to_q"], model.blocks[0]["ffn"]  # 32 -> 32, 32 -> 64
    x = torch.randn(2, 7, 32).bfloat16()
    hidden = linear_gelu_tanh_fp8(x, up.weight, up.bias, up.weight_scale)
    assert isinstance(hidden, Fp8Activation) and hidden.values.dtype == torch.float8_e4m3fn
    out = linear_forward(hidden, down.weight, down.bias, down.weight_scale, down.compute)
    w_up = dequantize_weight(up.weight, up.weight_scale, torch.float32)
    w_down = dequantize_weight(down.weight, down.weight_scale, torch.float32)
    ref = F.linear(F.gelu(F.linear(x.float(), w_up, up.bias.float()), approximate="tanh"), w_down)
    check("ffn", "gaussian", out, ref, "fp8 FFN via the layer helpers")


def test_unknown_compute_mode():
    w_q, w_s = quantize_fp8_weight(torch.randn(16, 16))
    with pytest.raises(ValueError, match="compute must be 'dense' or 'fp8'"):
        linear_forward(torch.randn(2, 16), w_q, None, w_s, "int4")

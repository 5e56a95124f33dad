"""layers.Linear: nn.Linear's parameters and math through ops.linear, adapters, fp8-stored weights."""

import pytest
import torch
from torch import nn

from fastdit.layers import FeedForward, Linear


@pytest.fixture(autouse=True)
def _inference():
    with torch.no_grad():  # the engine runs inference only (out= products take no grad)
        yield


def test_matches_nn_linear_and_loads_its_state_dict():
    ref = nn.Linear(12, 7)
    lin = Linear(12, 7)
    lin.load_state_dict(ref.state_dict())  # same parameter names
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(lin(x), ref(x))
    out = torch.empty(3, 5, 7)
    assert lin.into(x, out) is out
    torch.testing.assert_close(out, ref(x))
    torch.testing.assert_close(lin.gelu_tanh(x), torch.nn.functional.gelu(ref(x), approximate="tanh"))
    assert set(Linear(4, 2, bias=False).state_dict()) == {"weight"}


def test_default_init_is_torchs_distribution():
    lin = Linear(400, 300)
    bound = 1 / 400**0.5
    assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
    assert lin.bias.abs().max() <= bound


def test_adapters_reach_every_path():
    lin = Linear(8, 6)
    x = torch.randn(4, 8)
    base = lin(x)
    delta = torch.randn(6)
    lin.adapters.append(lambda inp, y: y + delta)
    torch.testing.assert_close(lin(x), base + delta)
    out = torch.empty(4, 6)
    torch.testing.assert_close(lin.into(x, out), base + delta)
    torch.testing.assert_close(lin.gelu_tanh(x), torch.nn.functional.gelu(base + delta, approximate="tanh"))


@pytest.mark.parametrize("chunk", [0, 3])
def test_ffn_products_go_through_their_linear_modules(chunk):
    """An adapter on either FFN product changes the output, chunked or whole."""
    ffn = FeedForward(8, 16, activation="gelu_tanh")
    x = torch.randn(2, 5, 8)
    base = ffn(x, chunk_rows=chunk)
    for module in (ffn.net[0].proj, ffn.net[2]):
        module.adapters.append(lambda inp, y: y + 1.0)
        changed = ffn(x, chunk_rows=chunk)
        module.adapters.clear()
        assert not torch.allclose(changed, base)
    torch.testing.assert_close(ffn(x, chunk_rows=chunk), base)


def test_fp8_stored_weight_is_dequantised_per_channel():
    lin = Linear(16, 4)
    w = lin.weight.detach().clone()
    scale = w.abs().amax(dim=1) / 448.0
    lin.weight = nn.Parameter((w / scale[:, None]).to(torch.float8_e4m3fn), requires_grad=False)
    lin.weight_scale = scale
    x = torch.randn(3, 16)
    dense = lin.weight.float() * scale[:, None]
    torch.testing.assert_close(lin(x), x @ dense.T + lin.bias)
    assert (dense - w).abs().max() <= 0.07 * w.abs().max()  # e4m3: 3 mantissa bits


# ---------------------------------------------------------------------------------------
# the fp8 compute path (issue 10): compute="fp8", Fp8Activation inputs
# ---------------------------------------------------------------------------------------
def _fp8_linear(k=64, n=48, seed=0):
    from fastdit.quant.weights import quantize_module_weight_

    torch.manual_seed(seed)
    lin = Linear(k, n)
    dense = Linear(k, n)
    dense.load_state_dict(lin.state_dict())
    quantize_module_weight_(lin, "fp8")
    return lin, dense


def test_fp8_compute_runs_the_fp8_op_and_takes_producer_activations():
    from fastdit import ops
    from fastdit.quant.linear import Fp8Activation

    lin, _ = _fp8_linear()
    assert lin.takes_fp8 and lin.compute == "fp8" and "compute=fp8" in repr(lin)
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(lin(x), ops.linear_fp8(x, lin.weight, lin.weight_scale, lin.bias),
                               rtol=0, atol=0)
    x_q, x_s = ops.quantize_fp8(x)
    act = Fp8Activation(x_q, x_s, torch.float32)
    expected = ops.linear_fp8(x_q, lin.weight, lin.weight_scale, lin.bias, x_scale=x_s,
                              out_dtype=torch.float32)
    assert torch.equal(lin(act), expected)
    out = torch.empty(2, 5, 48)
    assert lin.into(act, out) is out and torch.equal(out, expected)
    g = lin.gelu_tanh_fp8(x)
    g_ref = ops.gelu_tanh_fp8(lin(x))
    assert torch.equal(g.values.view(torch.uint8), g_ref[0].view(torch.uint8))
    assert torch.equal(g.scale, g_ref[1])


def test_a_dense_linear_dequantises_an_fp8_activation():
    from fastdit import ops
    from fastdit.quant.linear import Fp8Activation

    lin = Linear(32, 8)
    x_q, x_s = ops.quantize_fp8(torch.randn(3, 32))
    act = Fp8Activation(x_q, x_s, torch.float32)
    assert not lin.takes_fp8
    torch.testing.assert_close(lin(act), torch.nn.functional.linear(act.dequantize(), lin.weight,
                                                                     lin.bias))


def test_fp8_weight_with_dense_compute_is_storage_only():
    lin, dense = _fp8_linear()
    lin.compute = "dense"
    x = torch.randn(4, 64)
    w = lin.weight.float() * lin.weight_scale[:, None]
    assert not lin.takes_fp8
    torch.testing.assert_close(lin(x), x @ w.T + lin.bias)


@pytest.mark.parametrize("chunk", [0, 4])
def test_fp8_ffn_hidden_state_in_e4m3_chunked_or_whole(chunk):
    """Both FFN products in fp8: the hidden state goes between them in e4m3 (gelu_tanh_fp8);
    the chunked FFN (slices of rows, an Fp8Activation input sliced alike) gives the same
    result as the whole one, close to the dense FFN."""
    from fastdit import ops
    from fastdit.quant.inputs import cosine
    from fastdit.quant.linear import Fp8Activation
    from fastdit.quant.weights import quantize_module_weight_

    torch.manual_seed(3)
    ffn = FeedForward(32, 96, activation="gelu_tanh")
    x = torch.randn(2, 7, 32)
    dense = ffn(x)
    for lin in (ffn.net[0].proj, ffn.net[2]):
        quantize_module_weight_(lin, "fp8")
    whole = ffn(x)
    torch.testing.assert_close(ffn(x, chunk_rows=chunk), whole, rtol=1e-6, atol=1e-6)
    x_q, x_s = ops.quantize_fp8(x)
    act = Fp8Activation(x_q, x_s, torch.float32)
    from_act = ffn(act, chunk_rows=chunk)
    # x, both weights and the hidden state in e4m3 (four operands of two products)
    assert from_act.shape == (2, 7, 32) and cosine(from_act, dense) > 0.998
    assert cosine(whole, dense) > 0.998  # the H200 FFN benchmark: 0.9986 at Wan sizes

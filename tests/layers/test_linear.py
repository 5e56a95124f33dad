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

"""Triton ``channel_rms_norm`` kernel against the native spec (diffusers' ``WanRMS_norm``).

Kernel-specific coverage (the generic per-provider sweep lives in tests/ops): the fp32 result
to reduction order, the bf16 rounding chain bit for bit, tails in C and in S (both tile
shapes of the launch table), several batch rows, an empty input, and what ``supports_args``
declines (non-contiguous x goes to the next provider).
"""

from __future__ import annotations

import pytest
import torch

from fastdit.kernels.triton import _support as S
from fastdit.ops.channel_norm import channel_rms_norm
from fastdit.ops.registry import call_provider
from tests.kernels._util import compare, rand

pytestmark = pytest.mark.usefixtures("triton_ok")


def _both(x, gamma, bias=None, silu=False):
    kw = dict(scale=x.shape[1] ** 0.5, silu=silu)
    ref = call_provider("channel_rms_norm", "native", x, gamma, bias, **kw)
    out = call_provider("channel_rms_norm", "triton", x, gamma, bias, **kw)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    return out, ref


def _bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in bf16 units between two bf16 tensors (+0 and -0 count as equal)."""
    def key(t):
        i = t.view(torch.int16).to(torch.int32)
        return torch.where(i < 0, -(i & 0x7FFF), i)  # monotone in the value
    return (key(a) - key(b)).abs()


@pytest.mark.parametrize("silu", (False, True))
def test_fp32_to_reduction_order(device, silu):
    # the kernel sums the squares in another order than torch's norm: not bit for bit
    x = rand((1, 96, 2, 8, 8), torch.float32, device, scale=5.0)
    out, ref = _both(x, rand((96, 1, 1, 1), torch.float32, device), silu=silu)
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


@pytest.mark.parametrize("silu,bias", ((True, False), (False, True), (True, True)))
def test_bf16_rounding_chain(device, silu, bias):
    # every step rounded to bf16 as the spec: measured 100% bit-identical here (the interpreter
    # with its bf16 cast replaced by round-to-nearest-even, see channel_norm._round); the test
    # allows 1% of one-unit differences (an fp32 norm summed in another order, or another exp)
    x = rand((1, 96, 2, 8, 8), torch.bfloat16, device, scale=7.0)
    gamma = rand((96, 1, 1, 1), torch.bfloat16, device)
    b = rand((96,), torch.bfloat16, device) if bias else None
    out, ref = _both(x, gamma, b, silu=silu)
    ulps = _bf16_ulps(out, ref)
    assert (ulps > 1).sum().item() == 0, ulps.max()
    assert (ulps == 0).float().mean().item() >= 0.99


@pytest.mark.parametrize("channels,rest", (
    (37, (2, 9, 11)),  # BLOCK_C 16 (tail 5), BLOCK_S 128 over S = 198 (tail 70)
    (200, (3, 5, 7)),  # the wide-C tile, BLOCK_C 32 (tail 8), BLOCK_S 64 over S = 105 (tail 41)
))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
def test_tails_in_c_and_s(device, dtype, channels, rest):
    positions = rest[0] * rest[1] * rest[2]
    block_c, block_s, _ = S.channel_norm_launch(channels, positions, dtype.itemsize)
    assert channels % block_c and positions % block_s and positions > block_s
    x = rand((2, channels, *rest), dtype, device, scale=3.0)  # 2 batch rows
    compare("channel_rms_norm", x, rand((channels, 1, 1, 1), dtype, device),
            rand((channels,), dtype, device), scale=channels ** 0.5, silu=True)


def test_image_layout_and_flat_gamma(device):
    # [B*T, C, H, W] with a [C] gamma and a [C, 1, 1] bias
    x = rand((3, 24, 4, 6), torch.float16, device, scale=2.0)
    compare("channel_rms_norm", x, rand((24,), torch.float16, device),
            rand((24, 1, 1), torch.float16, device), scale=24 ** 0.5)


def test_empty(device):
    x = rand((2, 8, 0, 4, 4), torch.bfloat16, device)
    y = compare("channel_rms_norm", x, rand((8, 1, 1, 1), torch.bfloat16, device), scale=8 ** 0.5)
    assert y.shape == x.shape


def test_non_contiguous_falls_back(device):
    base = rand((1, 16, 2, 8, 6), torch.bfloat16, device)
    gamma = rand((16, 1, 1, 1), torch.bfloat16, device)
    x = base.transpose(3, 4)  # same values, not [B, C, S]-contiguous
    assert not x.is_contiguous()
    assert not S.channel_rms_norm_args(x, gamma, scale=4.0)
    assert S.channel_rms_norm_args(x.contiguous(), gamma, scale=4.0)
    # the public op takes it anyway, through the next provider
    expected = call_provider("channel_rms_norm", "native", x, gamma, scale=4.0, silu=True)
    torch.testing.assert_close(channel_rms_norm(x, gamma, scale=4.0, silu=True), expected,
                               atol=1.6e-2, rtol=1.6e-2)


def test_supports_args(device):
    x = rand((2, 8, 3, 4), torch.bfloat16, device)
    g = rand((8,), torch.bfloat16, device)
    ok = S.channel_rms_norm_args
    assert ok(x, g, scale=2.0) and ok(x, g.view(8, 1, 1), g, scale=2.0, eps=1e-6, silu=True)
    assert not ok(x.double(), g.double(), scale=2.0)  # dtype
    assert not ok(x, g.float(), scale=2.0)  # gamma not in x's dtype
    assert not ok(x, rand((7,), torch.bfloat16, device), scale=2.0)  # one value per channel
    assert not ok(x, g, rand((9,), torch.bfloat16, device), scale=2.0)
    assert not ok(x, g, scale=torch.tensor(2.0))  # scale must be a number
    assert not ok(rand((2, 8), torch.bfloat16, device), g, scale=2.0)  # no position dim
    assert not ok(x, rand((8,), torch.bfloat16, "meta"), scale=2.0)  # wrong device


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("channels", (40, 384))
def test_channels_last_rows_kernel(device, dtype, channels):
    """NDHWC x (the channels-last decode): the rows kernel, y in the same layout, bf16 within
    one unit everywhere and >= 99% bit for bit (fp32 to the reduction order)."""
    x = rand((2, channels, 2, 3, 5), dtype, device, scale=6.0).contiguous(memory_format=torch.channels_last_3d)
    gamma = rand((channels, 1, 1, 1), dtype, device)
    bias = rand((channels,), dtype, device)
    assert S.channels_last_rows(x) and not x.is_contiguous()
    assert S.channel_rms_norm_args(x, gamma, bias, scale=1.0, silu=True)
    out, ref = _both(x, gamma, bias, silu=True)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    if dtype == torch.bfloat16:
        ulps = _bf16_ulps(out.contiguous(), ref.contiguous())
        assert (ulps > 1).sum().item() == 0 and (ulps == 0).float().mean().item() >= 0.99
    else:
        assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_channels_last_launch_holds_whole_rows():
    for channels in (3, 96, 384, 1024):
        block_c, rows, warps = S.channel_rows_launch(channels, 10_000)
        assert block_c >= channels and block_c & (block_c - 1) == 0 and rows * block_c <= 4096
        assert warps in (1, 2, 4, 8)

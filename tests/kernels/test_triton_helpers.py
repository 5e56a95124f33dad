"""The Triton helpers the kernels share: fp8 grid rounding (used under the interpreter, whose
own fp32 -> fp8 cast is inexact), tanh, and the launch tables."""

from __future__ import annotations

import pytest
import torch

from fastdit.kernels.triton import _support as S

pytestmark = pytest.mark.usefixtures("triton_ok")


triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
K = pytest.importorskip("fastdit.kernels.triton._common")


@triton.jit
def fp8_kernel(x_ptr, y_ptr, n, MANT: tl.constexpr, EMIN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    y = K.round_to_fp8_grid(x, MANT, EMIN)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=offs < n)


@triton.jit
def tanh_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(y_ptr + offs, K.tanh_f32(x), mask=offs < n)


@pytest.mark.parametrize("dtype,limit", ((torch.float8_e4m3fn, 448.0),
                                         (torch.float8_e5m2, 57344.0)))
def test_fp8_rounding_matches_torch(device, dtype, limit):
    g = torch.Generator().manual_seed(1)
    values = [torch.randn(4096, generator=g) * 10.0 ** torch.randint(-6, 3, (4096,), generator=g)]
    # every representable value, and the midpoints between neighbours (ties to even)
    grid = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    grid = grid[grid.isfinite()].unique()
    values += [grid, (grid[1:] + grid[:-1]) / 2, grid * (1 + 2.0 ** -10)]
    x = torch.cat(values).clamp(-limit, limit).to(device)
    y = torch.empty(x.shape, dtype=dtype, device=device)
    mant, emin = K.FP8_GRID[dtype]
    fp8_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), MANT=mant, EMIN=emin, BLOCK=1024)
    expected = x.to(dtype)
    bad = (y.view(torch.uint8) != expected.view(torch.uint8)).nonzero().flatten()
    assert bad.numel() == 0, (x[bad][:8], y[bad][:8].float(), expected[bad][:8].float())


def test_tanh(device):
    x = torch.cat([torch.linspace(-20, 20, 4001), torch.logspace(-8, 0, 200),
                   -torch.logspace(-8, 0, 200), torch.tensor([0.0, 0.125, -0.125])]).to(device)
    y = torch.empty_like(x)
    tanh_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    expected = torch.tanh(x.double())
    err = (y.double() - expected).abs() / expected.abs().clamp(min=1e-30)
    # exact fp32 exp/division in the interpreter; approximate (a few ulp) on a GPU
    assert err.max().item() < (1e-6 if device == "cpu" else 4e-6), x[err.argmax()].item()


def test_launch_tables():
    # whole rows in registers, bounded per-thread work, rows per program for narrow rows
    assert S.norm_launch(1536)[0] == 2048 and S.norm_launch(5120)[0] == 8192
    assert S.norm_launch(5120)[2] == S.TUNED[("norm", 5120)][2] and S.norm_launch(1536)[2] == 4
    for dim in (1, 7, 769, 1536, 5120, 16384):
        block, warps, rows = S.norm_launch(dim)
        assert block >= dim and 1 <= warps <= 32 and rows >= 1
        block, rows, warps = S.elementwise_launch(dim)
        assert block * rows <= 4096 and (dim <= 1024 or dim % block == 0 or block == 1024)
    # Wan heads: chunks that divide the head count (no masked head lanes)
    assert S.rope_launch(32760, 12, 12, 128)[1] == 4
    assert S.rope_launch(32760, 40, 40, 128)[1] == 8

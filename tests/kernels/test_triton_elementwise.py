"""Triton elementwise kernel (mul_add, scale_shift) against the native spec.

Kernel-specific coverage: tiles that split the row (D = 769, 1536, 5120), tiles whose rows
share a modulation row (hoisted) or cross batch rows (per-row loads), folded numeric
multipliers, output dtype from ``c``, strided and 4-D inputs.
"""

from __future__ import annotations

import pytest
import torch

from fastdit.kernels.triton import _support as S
from tests.kernels._util import compare, rand

pytestmark = pytest.mark.usefixtures("triton_ok")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def compare_mul_add(a, gate, c, k=0):
    """``c + a * (k + gate)`` on the Triton provider against the spec."""
    return compare("mul_add", a, c, gate=gate, k=k)


def compare_scale_shift(x, scale, shift, scale_constant=1.0):
    """``x * (scale_constant + scale) + shift`` on the Triton provider against the spec."""
    return compare("scale_shift", x, shift=shift, scale=scale, scale_constant=scale_constant)


@pytest.mark.parametrize("dim", (1, 7, 769, 1536, 5120))
@pytest.mark.parametrize("dtype", DTYPES)
def test_dims_and_dtypes(device, dtype, dim):
    tokens = 3 if dim <= 769 else 2
    a = rand((2, tokens, dim), dtype, device)
    compare_mul_add(a, rand((2, 1, dim), torch.float32, device), rand(a.shape, dtype, device), 1)
    compare_scale_shift(a, rand((2, 1, dim), dtype, device), rand((dim,), torch.float32, device))


# modulation shapes for x [B, L=8, D=16]; B=1 gives one 8-row tile whose rows share every
# per-batch row (hoisted), B=2 gives 16-row tiles that straddle the two batch rows (per-row)
MODS = {
    "number": None, "0d": (), "channel": (16,), "batch_2d": ("B", 16), "batch_3d": ("B", 1, 16),
    "token": ("B", 8, 16), "frames": ("B", 4, 1, 16), "last_dim_1": ("B", 1, 1),
}


def _mod(spec, batch, device, dtype=torch.float32):
    if spec is None:
        return float(torch.randn(()).item())
    return rand(tuple(batch if s == "B" else s for s in spec), dtype, device, scale=0.5)


@pytest.mark.parametrize("batch", (1, 2))
@pytest.mark.parametrize("mode", MODS)
def test_modes(device, mode, batch):
    x = rand((batch, 8, 16), torch.bfloat16, device)
    compare_scale_shift(x, _mod(MODS[mode], batch, device), _mod(MODS["token"], batch, device),
            0.5)
    compare_scale_shift(x, _mod(MODS["batch_3d"], batch, device),
            _mod(MODS[mode], batch, device, torch.bfloat16))
    compare_mul_add(x, _mod(MODS[mode], batch, device), rand(x.shape, torch.float32, device),
            -0.25)


def test_numbers_fold_into_k(device):
    x = rand((3, 5, 12), torch.float16, device)
    compare_scale_shift(x, 0.75, -1.5, 2.0)
    compare_mul_add(x, 3, rand(x.shape, torch.float16, device), 2)
    compare_mul_add(x, 0.0, rand(x.shape, torch.float16, device))


def test_output_dtype_is_c(device):
    a = rand((2, 4, 32), torch.bfloat16, device)
    c = rand(a.shape, torch.float32, device)
    out = compare_mul_add(a, rand((2, 1, 32), torch.bfloat16, device), c)
    assert out.dtype == torch.float32


def test_layouts(device):
    base = rand((4, 6, 64), torch.float32, device)
    a = base[:, 1:5, ::2]  # [4, 4, 32], row and channel strides
    c = base.transpose(0, 1)[:4, :, 32:]  # [4, 4, 32], batch stride < token stride
    compare_mul_add(a, rand((4, 2, 1, 32), device=device)[..., :], c, 1)
    compare_scale_shift(a, base[:, :1, 1::2], base[:, 2, 32:], 1.0)
    # 4-D x [B, F, HW, D] with per-channel modulations; 2-D x [T, D] with per-token ones
    x4 = rand((2, 3, 4, 8), torch.bfloat16, device)
    compare_mul_add(x4, rand((8,), device=device), rand(x4.shape, torch.bfloat16, device))
    compare_scale_shift(x4, 0.1, rand((), device=device))
    x2 = rand((6, 8), torch.float32, device)
    compare_scale_shift(x2, rand((6, 8), device=device), rand((1, 8), device=device))
    x1 = rand((8,), device=device)
    compare_mul_add(x1, rand((8,), device=device), rand((8,), device=device))


def test_empty(device):
    x = rand((2, 0, 8), torch.float32, device)
    assert compare_scale_shift(x, 0.1, 0.2).shape == (2, 0, 8)


def test_supports_args(device):
    x = rand((2, 3, 16), torch.float32, device)
    assert S.mul_add_args(x, x, gate=rand((2, 1, 16), device=device), k=1)
    assert not S.mul_add_args(x, x[:, :2], gate=0.1)  # shapes differ
    assert not S.mul_add_args(x, x, gate=0.1, k=torch.ones(()))  # k must be a number
    assert not S.scale_shift_args(x, shift=0.0, scale=rand((2, 2, 16), device=device))  # no broadcast
    assert not S.scale_shift_args(x.double(), shift=0.2, scale=0.1)
    assert S.scale_shift_args(x, shift=rand((16,), torch.bfloat16, device), scale=0.1)

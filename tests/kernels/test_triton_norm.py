"""Triton norm kernels against the native spec: rms_norm and the adaLN family.

Kernel-specific coverage (the generic per-provider sweep lives in tests/ops): several rows
per program with a partial last program, modulations loaded once per program ("hoisted") next
to per-row ones, frame groups, last-dimension-1 and bf16 modulations, mixed residual dtypes,
strided and 1-D/2-D inputs, and what ``supports_args`` declines.
"""

from __future__ import annotations

import pytest
import torch

from fastdit.kernels.triton import _support as S
from tests.kernels._util import compare, rand

pytestmark = pytest.mark.usefixtures("triton_ok")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DIMS = (1, 7, 769, 1536, 5120)


def _tokens(dim):  # interpreter time grows with the row width
    return 5 if dim <= 769 else 1


# ---------------------------------------------------------------------------------------
# rms_norm
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_residual_rows_and_tail(device, dtype, dim):
    # 2 x 5 rows: with up to 16 rows per program the last program is partly masked
    x = rand((2, _tokens(dim), dim), dtype, device)
    res = rand(x.shape, dtype, device)
    y, s = compare("rms_norm", x, rand((dim,), dtype, device), 1e-6, residual=res)
    assert y.dtype == dtype and s.dtype == dtype


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_rms_norm_fp32_residual_stream(device, dtype):
    # x in half precision, residual stream in fp32: s is fp32, y in x's dtype
    x = rand((3, 4, 96), dtype, device)
    y, s = compare("rms_norm", x, rand((96,), torch.float32, device), 1e-5,
                   residual=rand(x.shape, torch.float32, device))
    assert y.dtype == dtype and s.dtype == torch.float32


@pytest.mark.parametrize("variance_size", (1, 13, 64))
def test_rms_norm_variance_size_no_weight(device, variance_size):
    x = rand((7, 64), torch.float32, device, scale=3.0)
    compare("rms_norm", x, None, 1e-6, variance_size=variance_size)
    compare("rms_norm", x, None, 1e-6, residual=rand(x.shape, torch.float32, device),
            variance_size=variance_size)


def test_rms_norm_layouts(device):
    base = rand((6, 5, 40), torch.bfloat16, device)
    w = rand((40,), torch.bfloat16, device)
    compare("rms_norm", base.transpose(0, 1), w, 1e-6)  # rows not mergeable: copied
    compare("rms_norm", base[:, 1:4], w, 1e-6, residual=base[:, :3])  # row strides
    compare("rms_norm", rand((40, 6), torch.float32, device).t(), None, 1e-6)  # stride(-1) != 1
    compare("rms_norm", rand((40,), torch.float16, device), w.half(), 1e-6)  # 1-D


def test_rms_norm_empty(device):
    x = rand((0, 32), torch.float32, device)
    y, s = compare("rms_norm", x, None, 1e-6, residual=x.clone())
    assert y.shape == (0, 32) and s.shape == (0, 32)


# ---------------------------------------------------------------------------------------
# adaLN family
# ---------------------------------------------------------------------------------------
NORM_OPS = ("layer_norm_scale_shift", "scale_residual_norm_scale_shift", "norm_tanh_mul_add")


def _call(op, x, scale, shift, gate=1, weight=None, bias=None, norm="layer", residual=None,
          eps=1e-6):
    kw = dict(shift=shift, scale=scale, weight=weight, bias=bias, eps=eps, norm=norm)
    if op in ("layer_norm_scale_shift", "norm_tanh_mul_add"):
        return compare(op, x, **kw)
    if residual is None:
        residual = rand(x.shape, x.dtype, x.device)
    return compare(op, residual, x, gate=gate, **kw)


# (scale, shift, gate) shapes for x [B=2, L=8, D=1536]: the kernel normalises tiles of 4 rows,
# so per-batch modulations and frames of 4 tokens are hoisted (loaded once per tile), frames of
# 2 tokens and per-token modulations are loaded row by row in the same tile.
D = 1536
MIXES = {
    "batch+token+channel": ((2, 1, D), (2, 8, D), (D,)),
    "frames2+token+frames4": ((2, 4, 1, D), (2, 8, D), (2, 2, 1, D)),
    "frames4+2d+0d": ((2, 2, 1, D), (2, D), ()),
    "token_all": ((2, 8, D), (2, 8, D), (2, 8, D)),
    "last_dim_1": ((2, 1, 1), (2, 8, 1), (1,)),
    "numbers": (None, None, None),
}


def _mod(shape, dtype, device):
    if shape is None:
        return float(torch.randn(()).item())
    return rand(shape, dtype, device, scale=0.5)


def test_mixes_use_both_load_modes():
    from fastdit.kernels.triton import _common as K

    x = torch.empty(2, 8, D)
    rows = S.norm_launch(D, 16)[2]
    assert rows == 4
    modes = {}
    for shape in ((2, 1, D), (D,), (2, 2, 1, D), (2, 4, 1, D), (2, 8, D)):
        m = K.pack_modulation(torch.empty(shape), x.shape, x)
        K.mark_hoisted(rows, 8, [m])
        modes[shape] = m.mode
    assert modes == {(2, 1, D): K.MOD_HOISTED, (D,): K.MOD_HOISTED, (2, 2, 1, D): K.MOD_HOISTED,
                     (2, 4, 1, D): K.MOD_PER_ROW, (2, 8, D): K.MOD_PER_ROW}


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("op", NORM_OPS)
def test_modulation_mixes(device, op, mix):
    scale_shape, shift_shape, gate_shape = MIXES[mix]
    x = rand((2, 8, D), torch.float32, device)
    _call(op, x, _mod(scale_shape, torch.float32, device), _mod(shift_shape, torch.float32, device),
          gate=_mod(gate_shape, torch.float32, device), weight=rand((D,), device=device),
          bias=rand((D,), device=device))


@pytest.mark.parametrize("norm", ("layer", "rms"))
@pytest.mark.parametrize("op", NORM_OPS)
def test_half_modulations_and_frames(device, op, norm):
    # bf16 modulations, 3 frames over L=12 (4 tokens each), x fp16, no weight or bias
    x = rand((1, 12, 24), torch.float16, device)
    scale = rand((1, 3, 1, 24), torch.bfloat16, device, 0.5)
    shift = rand((1, 24), torch.bfloat16, device, 0.5)
    _call(op, x, scale, shift, gate=rand((1, 3, 1, 24), torch.bfloat16, device), norm=norm)


@pytest.mark.parametrize("dim", (769, 1536, 5120))
@pytest.mark.parametrize("op", NORM_OPS)
def test_wide_rows_bf16(device, op, dim):
    # the Wan layout: bf16 activations, fp32 [B, 1, D] modulations, fp32 residual stream
    x = rand((1, 2, dim), torch.bfloat16, device, scale=2.0)
    mods = [rand((1, 1, dim), torch.float32, device, 0.5) for _ in range(3)]
    _call(op, x, mods[0], mods[1], gate=mods[2], residual=rand(x.shape, torch.float32, device))


def test_scale_residual_gate_one_and_dtypes(device):
    x = rand((2, 6, 32), torch.bfloat16, device)
    residual = rand(x.shape, torch.float32, device)
    y, r = _call("scale_residual_norm_scale_shift", x, 0.1, rand((2, 1, 32), device=device),
                 gate=1, residual=residual)
    assert y.dtype == torch.bfloat16 and r.dtype == torch.float32
    torch.testing.assert_close(r.cpu(), (residual + x.float()).cpu(), rtol=1e-6, atol=1e-6)


def test_residual_rounded_before_norm(device):
    # r is rounded to residual's dtype (fp16) before the norm: y must be the norm of the
    # rounded r, which the native spec computes; a kernel normalising the fp32 sum differs
    # by more than fp32 tolerance here, and y is fp32 so the difference is visible
    x = rand((1, 4, 64), torch.float32, device)
    residual = rand(x.shape, torch.float16, device)
    _call("scale_residual_norm_scale_shift", x, 0.0, 0.0, gate=0.37, residual=residual)


def test_tanh_range(device):
    # tanh(scale) over its whole range: saturation, the series near 0, and in between
    values = torch.tensor([-30.0, -4.0, -0.5, -0.12, -1e-3, 0.0, 1e-6, 0.05, 0.126, 0.9, 3.0, 25.0])
    scale = values.repeat(4)[:40].reshape(1, 1, 40).to(device)
    x = rand((2, 3, 40), torch.float32, device)
    compare("norm_tanh_mul_add", x, shift=rand((40,), device=device), scale=scale, norm="rms")
    for number in (-2.0, 1e-4, 0.3):
        compare("norm_tanh_mul_add", x, shift=0.25, scale=number)


@pytest.mark.parametrize("op", NORM_OPS)
def test_2d_1d_and_strided(device, op):
    # x [T, D] with a per-token [T, D] modulation and a [1, D] one; x [D]; strided views
    x = rand((5, 16), torch.float32, device)
    _call(op, x, rand((5, 16), device=device), rand((1, 16), device=device),
          gate=rand((5, 16), device=device))
    _call(op, rand((16,), device=device), rand((16,), device=device), 0.5)
    wide = rand((2, 6, 48), torch.bfloat16, device)
    mods = rand((2, 1, 96), torch.float32, device)
    _call(op, wide[:, 1:5, ::3], mods[..., ::6], mods[..., 1::6], gate=mods[..., 2::6],
          residual=wide[:, :4, 1::3], weight=rand((32,), device=device)[::2])


@pytest.mark.parametrize("op", NORM_OPS)
def test_empty(device, op):
    x = rand((2, 0, 16), torch.float32, device)
    _call(op, x, rand((2, 1, 16), device=device), 0.1)


def test_supports_args(device):
    x = rand((2, 3, 16), torch.float32, device)
    def ok(x, shift, scale, **kw):
        return S.layer_norm_scale_shift_args(x, shift=shift, scale=scale, **kw)

    assert ok(x, 0.1, rand((2, 1, 16), device=device))
    assert not ok(x.to(torch.float64), 0.1, 0.2)  # dtype
    assert not ok(torch.zeros((2, 3, 16), dtype=torch.int32, device=device), 0.1, 0.2)
    assert not ok(x, 0.1, rand((3, 16), device=device))  # does not broadcast
    assert not ok(x, 0.1, rand((2, 1, 16), device="meta"))  # wrong device
    assert not ok(x, 0.1, 0.2, norm="group")
    assert not S.rms_norm_args(rand((1, S.MAX_ROW + 1), device=device), None)
    assert not S.rms_norm_args(x, None, residual=rand((2, 3, 8), device=device))
    assert not S.rms_norm_args(x, None, variance_size=17)
    assert S.rms_norm_args(x, rand((16,), torch.bfloat16, device), residual=x, variance_size=4)
    assert S.scale_residual_norm_scale_shift_args(x, x, shift=0.0, scale=rand((16,), device=device),
                                                  gate=1)

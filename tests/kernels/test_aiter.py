"""The aiter provider's contract, on any machine: a stand-in ``aiter`` module (plain torch, the
real signatures and the real kernels' assertions, every call recorded) replaces the library,
and the platform is forced to ROCm.

What is checked: aiter is imported only when asked for; ``supported`` needs ROCm and the
library; the arguments passed to aiter (order, shapes, layouts, rotate style, in-place views)
produce the native spec's results; ``supports_args`` declines what aiter cannot take exactly,
so dispatch falls back. The signatures follow ROCm/aiter (see fastdit/kernels/aiter/ops.py).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastdit.config import PlatformConfig, get_config, set_config
from fastdit.ops import registry
from fastdit.ops.registry import call_provider, is_supported, providers
from tests.ops.tolerances import assert_close


# ---------------------------------------------------------------------------------------
# the stand-in library
# ---------------------------------------------------------------------------------------
def _rms(x32, weight, eps):
    return x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps) * weight.float()


def make_fake_aiter() -> types.ModuleType:
    aiter = types.ModuleType("aiter")
    aiter.calls = []

    def check_norm_input(input, weight):
        assert input.dim() == 2, "older aiter releases take [rows, hidden] only"
        assert input.dtype in (torch.float16, torch.bfloat16, torch.float32)
        assert weight.dtype == input.dtype, "rms_norm_opus: weight dtype must match input"
        assert input.stride(-1) == 1, "last dim must be contiguous"
        assert weight.is_contiguous() and tuple(weight.shape) == (input.shape[-1],)

    def rmsnorm2d_fwd(input, weight, epsilon, use_model_sensitive_rmsnorm=0):
        check_norm_input(input, weight)
        assert isinstance(epsilon, float)
        aiter.calls.append(("rmsnorm2d_fwd", input, weight, epsilon))
        return _rms(input.float(), weight, epsilon).to(input.dtype)

    def rmsnorm2d_fwd_with_add(out, input, residual_in, residual_out, weight, epsilon,
                               gemma_norm=False, use_model_sensitive_rmsnorm=0):
        check_norm_input(input, weight)
        assert isinstance(epsilon, float)
        assert out.dtype == input.dtype and out.is_contiguous(), "add_rms_norm_opus: bad out"
        assert residual_in.dtype == input.dtype and residual_out.dtype == input.dtype
        assert residual_in.is_contiguous() and residual_out.is_contiguous()
        assert out.shape == input.shape == residual_in.shape == residual_out.shape
        aiter.calls.append(("rmsnorm2d_fwd_with_add", out, input, residual_in, residual_out,
                            weight, epsilon))
        s = input.float() + residual_in.float()
        residual_out.copy_(s)
        out.copy_(_rms(residual_out.float(), weight, epsilon))

    def rope_cached_2c_fwd_inplace(input_x, input_y, cos, sin, rotate_style,
                                   reuse_freqs_front_part, nope_first):
        assert input_x.dim() == 4 and input_y.dim() == 4, "sbhd"
        assert input_x.shape[:2] == input_y.shape[:2] and input_x.shape[3] == input_y.shape[3]
        assert input_x.dtype == input_y.dtype
        assert cos.dim() == 4 and cos.shape[1:3] == (1, 1) and cos.shape == sin.shape
        assert cos.is_contiguous() and sin.is_contiguous(), "read at s * size_f"
        assert cos.shape[0] == input_x.shape[0]
        assert rotate_style in (0, 1) and isinstance(reuse_freqs_front_part, bool)
        assert isinstance(nope_first, bool)
        aiter.calls.append(("rope_cached_2c_fwd_inplace", input_x, input_y, cos, sin, rotate_style,
                            reuse_freqs_front_part, nope_first))
        size_r = cos.shape[3] * (2 if reuse_freqs_front_part else 1)
        assert size_r == input_x.shape[3] and not nope_first  # what fastdit asks for
        half = size_r // 2
        c = cos.float()[..., :half]
        s = sin.float()[..., :half]
        for t in (input_x, input_y):
            x = t.float()
            if rotate_style == 1:  # GPT-J: pairs (2i, 2i+1), cos index i
                x0, x1 = x[..., 0::2], x[..., 1::2]
            else:  # NeoX: pairs (i, i + d/2)
                x0, x1 = x[..., :half], x[..., half:]
            o0, o1 = x0 * c - x1 * s, x1 * c + x0 * s
            if rotate_style == 1:
                out = torch.stack((o0, o1), -1).flatten(-2)
            else:
                out = torch.cat((o0, o1), -1)
            t.copy_(out)  # in place, through the caller's (possibly strided) view

    aiter.rmsnorm2d_fwd = rmsnorm2d_fwd
    aiter.rmsnorm2d_fwd_with_add = rmsnorm2d_fwd_with_add
    aiter.rope_cached_2c_fwd_inplace = rope_cached_2c_fwd_inplace
    return aiter


@pytest.fixture
def rocm(fresh_config, monkeypatch):
    """The ROCm platform with the stand-in aiter installed; returns the stand-in."""
    fake = make_fake_aiter()
    monkeypatch.setitem(sys.modules, "aiter", fake)
    set_config(dataclasses.replace(get_config(), platform=PlatformConfig(platform="rocm")))
    fresh_config  # noqa: B018  (restores config and platform cache afterwards)
    from fastdit.platforms import current_platform

    current_platform.cache_clear()
    assert current_platform().name == "rocm"
    return fake


def _impl(op):
    return providers(op)["aiter"].fn


# ---------------------------------------------------------------------------------------
# availability
# ---------------------------------------------------------------------------------------
def test_fastdit_import_does_not_import_aiter_or_triton():
    code = ("import sys, fastdit, fastdit.ops; from fastdit.ops import registry; "
            "registry._ensure_loaded(); print('aiter' in sys.modules, 'triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_supported_needs_rocm_and_the_library(rocm, monkeypatch):
    assert is_supported(providers("rms_norm")["aiter"])
    assert is_supported(providers("rope_qk_")["aiter"])
    del rocm.rope_cached_2c_fwd_inplace  # an older aiter without the in-place 2-channel rope
    set_config(dataclasses.replace(get_config()))  # new config generation: re-ask supported()
    assert is_supported(providers("rms_norm")["aiter"])
    assert not is_supported(providers("rope_qk_")["aiter"])
    monkeypatch.setitem(sys.modules, "aiter", None)  # `import aiter` raises ImportError
    set_config(dataclasses.replace(get_config()))
    assert not is_supported(providers("rms_norm")["aiter"])


def test_not_supported_off_rocm(fresh_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "aiter", make_fake_aiter())
    set_config(dataclasses.replace(get_config(), platform=PlatformConfig(platform="cuda")))
    from fastdit.platforms import current_platform

    current_platform.cache_clear()
    assert not is_supported(providers("rms_norm")["aiter"])
    with pytest.raises(registry.ProviderError):
        call_provider("rms_norm", "aiter", torch.randn(2, 8), torch.randn(8), 1e-6)


# ---------------------------------------------------------------------------------------
# the arguments aiter gets, and the results
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_rms_norm(rocm, dtype):
    x = torch.randn(2, 3, 64).to(dtype)
    w = torch.randn(64).to(dtype)
    y = _impl("rms_norm")(x, w, 1e-5)
    assert_close(y, call_provider("rms_norm", "native", x, w, 1e-5))
    name, input, weight, eps = rocm.calls[-1]
    assert name == "rmsnorm2d_fwd" and input.shape == (6, 64) and weight is w and eps == 1e-5


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_rms_norm_residual(rocm, dtype):
    base = torch.randn(3, 4, 128).to(dtype)
    x = base[:, :, :64]  # rows strided: aiter gets a [rows, hidden] tensor with stride(-1) 1
    residual = torch.randn(4, 3, 64).to(dtype).transpose(0, 1)  # non-contiguous
    w = torch.randn(64).to(dtype)
    y, s = _impl("rms_norm")(x, w, 1e-6, residual=residual)
    y_ref, s_ref = call_provider("rms_norm", "native", x, w, 1e-6, residual=residual)
    assert_close(y, y_ref)
    assert_close(s, s_ref)
    assert y.shape == s.shape == x.shape
    name, out, input, residual_in, residual_out, weight, eps = rocm.calls[-1]
    assert name == "rmsnorm2d_fwd_with_add" and input.shape == (12, 64)
    assert residual_out.data_ptr() == s.data_ptr() and out.data_ptr() == y.data_ptr()


@pytest.mark.parametrize("positions", (False, True))
@pytest.mark.parametrize("interleaved", (True, False))
def test_rope_qk_in_place(rocm, interleaved, positions):
    tokens, dim = 5, 16
    q = torch.randn(tokens, 6, dim).bfloat16()
    k = torch.randn(tokens, 2, dim).bfloat16()
    angles = torch.rand(9 if positions else tokens, dim // 2) * 6
    cos, sin = angles.cos(), angles.sin()
    pos = torch.tensor([8, 0, 3, 3, 5]) if positions else None
    q_ref, k_ref = call_provider("rope_qk_", "native", q.clone(), k.clone(), cos, sin,
                                 positions=pos, interleaved=interleaved)
    q_out, k_out = _impl("rope_qk_")(q, k, cos, sin, positions=pos, interleaved=interleaved)
    assert q_out is q and k_out is k
    assert_close(q, q_ref)
    assert_close(k, k_ref)
    name, x, y, c, s, style, reuse, nope_first = rocm.calls[-1]
    assert name == "rope_cached_2c_fwd_inplace"
    assert x.shape == (tokens, 1, 6, dim) and y.shape == (tokens, 1, 2, dim)
    assert x.data_ptr() == q.data_ptr() and y.data_ptr() == k.data_ptr()  # views, in place
    assert c.shape == (tokens, 1, 1, dim // 2) and c.dtype == torch.float32
    assert style == (1 if interleaved else 0) and reuse is True and nope_first is False


def test_rope_qk_batched_strided_views(rocm):
    # [B, T, H, D] q/k as views of one qkv buffer: aiter gets [T, B, H, D] views of them
    qkv = torch.randn(2, 5, 3, 4, 8).half()
    v_before = qkv[:, :, 2].clone()
    angles = torch.rand(5, 4)
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    q_ref, k_ref = call_provider("rope_qk_", "native", q.clone(), k.clone(), angles.cos(),
                                 angles.sin(), interleaved=False)
    _impl("rope_qk_")(q, k, angles.cos(), angles.sin(), interleaved=False)
    assert_close(q, q_ref)
    assert_close(k, k_ref)
    assert torch.equal(qkv[:, :, 2], v_before)
    x = rocm.calls[-1][1]
    assert x.shape == (5, 2, 4, 8) and x.data_ptr() == q.data_ptr()


# ---------------------------------------------------------------------------------------
# supports_args and dispatch (fake "cuda" tensors: metadata only, nothing runs)
# ---------------------------------------------------------------------------------------
def test_supports_args_and_fallback(rocm):
    rms_ok = providers("rms_norm")["aiter"].supports_args
    rope_ok = providers("rope_qk_")["aiter"].supports_args
    with FakeTensorMode():
        def t(*shape, dtype=torch.bfloat16):
            return torch.empty(*shape, dtype=dtype, device="cuda")

        x, w = t(4, 64), t(64)
        assert rms_ok(x, w, 1e-6) and rms_ok(x, w, 1e-6, residual=t(4, 64))
        assert not rms_ok(t(4, 64, dtype=torch.float32), t(64, dtype=torch.float32), 1e-6)
        assert not rms_ok(x, None, 1e-6)  # aiter needs a weight
        assert not rms_ok(x, t(64, dtype=torch.float32), 1e-6)  # weight dtype must match
        assert not rms_ok(x, w, 1e-6, variance_size=32)
        assert not rms_ok(x, w, 1e-6, residual=t(4, 64, dtype=torch.float32))
        cpu = dict(dtype=torch.bfloat16, device="cpu")
        assert not rms_ok(torch.empty(4, 64, **cpu), torch.empty(64, **cpu), 1e-6)  # on the CPU

        q, k, cos = t(5, 4, 16), t(5, 2, 16), t(5, 8, dtype=torch.float32)
        assert rope_ok(q, k, cos, cos) and rope_ok(t(2, 5, 4, 16), t(2, 5, 2, 16), cos, cos)
        assert not rope_ok(q, t(5, 2, 16, dtype=torch.float16), cos, cos)  # one dtype
        assert not rope_ok(t(1, 2, 5, 4, 16), t(1, 2, 5, 2, 16), cos, cos)  # 5-D
        assert not rope_ok(q, k, t(9, 8, dtype=torch.float32), t(9, 8, dtype=torch.float32))
        pos = torch.empty(5, dtype=torch.int64, device="cuda")
        assert rope_ok(q, k, t(9, 8, dtype=torch.float32), t(9, 8, dtype=torch.float32),
                       positions=pos)

        # dispatch on ROCm: aiter first for what it takes, the next provider otherwise
        assert registry.resolve("rms_norm", x, w, 1e-6).name == "aiter"
        assert registry.resolve("rms_norm", x, None, 1e-6).name != "aiter"
        assert registry.resolve("rope_qk_", q, k, cos, cos).name == "aiter"

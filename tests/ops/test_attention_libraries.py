"""The optional attention libraries' providers (``kernels/attention/libraries.py``) on a machine
without them: availability, which calls they take, and what the wrappers pass on, against
stand-in modules (the libraries themselves run in the GPU grid, tests/gpu/test_ops_gpu.py)."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from fastdit.config import EngineConfig, KernelConfig, set_config
from fastdit.kernels.attention import libraries
from fastdit.ops import registry
from fastdit.ops.registry import providers


@pytest.fixture
def fake_flash4(monkeypatch):
    """A stand-in ``flash_attn.cute`` whose ``flash_attn_func`` records its calls and returns
    ``(out, lse)`` as FlashAttention-4 does."""
    calls = []

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        calls.append({"shapes": (q.shape, k.shape, v.shape), "softmax_scale": softmax_scale,
                      "causal": causal})
        return torch.full_like(q, 2.0), torch.zeros(q.shape[:-1])

    package = types.ModuleType("flash_attn")
    package.__path__ = []  # a package: find_spec("flash_attn") finds it in sys.modules
    package.__spec__ = types.SimpleNamespace(name="flash_attn", submodule_search_locations=[])
    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    libraries._flash4_func.cache_clear()
    libraries._flash_module.cache_clear()
    yield calls
    libraries._flash4_func.cache_clear()
    libraries._flash_module.cache_clear()


def test_flash4_is_registered_exact_and_in_no_default_list():
    flash4 = providers("attention")["flash4"]
    assert flash4.exact
    from fastdit.platforms.cuda import CudaPlatform

    assert "flash4" not in CudaPlatform.op_providers["attention"]


def test_flash4_wrapper_passes_scale_and_causal_and_drops_the_lse(fake_flash4):
    q = torch.randn(1, 5, 2, 64)
    out = libraries.attention_flash4(q, q, q, causal=True, scale=0.25)
    assert torch.equal(out, torch.full_like(q, 2.0))  # the output, not the (out, lse) tuple
    assert fake_flash4 == [{"shapes": (q.shape,) * 3, "softmax_scale": 0.25, "causal": True}]


def test_flash4_needs_a_cuda_sm90_platform(fake_flash4, monkeypatch):
    assert libraries._flash4_func() is not None  # importable (the stand-in) ...
    assert not libraries.flash4_supported()  # ... but this platform is no sm_90 GPU

    class Hopper:
        name = "cuda"

        def compute_capability(self):
            return (9, 0)

    class Ampere(Hopper):
        def compute_capability(self):
            return (8, 0)

    monkeypatch.setattr(libraries, "current_platform", Hopper)
    assert libraries.flash4_supported()
    monkeypatch.setattr(libraries, "current_platform", Ampere)
    assert not libraries.flash4_supported()


def test_flash4_without_the_library_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails
    libraries._flash4_func.cache_clear()
    try:
        assert libraries._flash4_func() is None
    finally:
        libraries._flash4_func.cache_clear()


def test_flash_attn_2_or_3_is_not_mistaken_for_flash4_and_vice_versa(fake_flash4):
    """With only FlashAttention-4 installed, the ``flash_attn`` package has no top-level
    ``flash_attn_func``: the FA2/FA3 provider must not pick it up."""
    assert libraries._flash_module() is None
    assert libraries._flash4_func() is not None


def test_flash4_takes_no_cpu_tensors():
    q = torch.randn(1, 5, 2, 64, dtype=torch.bfloat16)
    assert not libraries.flash4_supports_args(q, q, q)


def test_flash4_argument_rules_on_cuda_like_tensors(monkeypatch):
    """The shape, dtype, stride, mask and causal rules, with ``is_cuda`` stood in."""

    class Cuda(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    def t(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape).to(dtype).as_subclass(Cuda)

    q = t(1, 8, 2, 128)
    assert libraries.flash4_supports_args(q, q, q)
    assert libraries.flash4_supports_args(q, q, q, causal=True)  # Lq == Lk
    kv = t(1, 12, 2, 128)
    assert libraries.flash4_supports_args(q, kv, kv)  # cross attention
    assert not libraries.flash4_supports_args(q, kv, kv, causal=True)  # rectangular causal
    assert not libraries.flash4_supports_args(q, q, q, attn_mask=torch.ones(1, 1, 8, 8, dtype=torch.bool))
    assert not libraries.flash4_supports_args(*(t(1, 8, 2, 128, dtype=torch.float32),) * 3)
    assert not libraries.flash4_supports_args(*(t(1, 8, 2, 96),) * 3)  # head dim not measured
    strided = t(1, 8, 2, 256)[..., ::2]  # last dim not contiguous
    assert not libraries.flash4_supports_args(strided, strided, strided)


def test_naming_flash4_without_it_warns_and_falls_back(fresh_config, caplog):
    set_config(EngineConfig(kernel=KernelConfig(op_providers={"attention": ("flash4",)})))
    registry._logged.clear()
    q = torch.randn(1, 5, 2, 64)
    with caplog.at_level(logging.WARNING, logger="fastdit.ops"):
        out = registry.dispatch("attention", q, q, q)
    ref = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, q, q)))
    torch.testing.assert_close(out, ref.transpose(1, 2))
    assert any("flash4" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("installed, smooth_k, k_is_callers", [("1.0.6", False, False),
                                                                ("2.2.0", True, True)])
def test_sage_wrapper_smooths_k_without_touching_the_callers_tensor(monkeypatch, installed,
                                                                    smooth_k, k_is_callers):
    """sageattention 1.x subtracts the key mean in place (it gets a smoothed copy and
    ``smooth_k=False``); 2.x subtracts it in its quantisation kernel (it gets k itself)."""
    import importlib.metadata

    calls = []

    def sageattn(q, k, v, *, tensor_layout, is_causal, sm_scale, smooth_k):
        calls.append((k, smooth_k))
        if smooth_k and installed.startswith("1."):
            k -= k.mean(dim=1, keepdim=True)  # what 1.x does
        return q

    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=sageattn))
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: installed if name == "sageattention" else "0")
    libraries._sage_smooths_in_place.cache_clear()
    try:
        q = torch.randn(1, 6, 2, 64)
        k = torch.randn(1, 6, 2, 64) + 3.0
        k_before = k.clone()
        libraries.attention_sage(q, k, q)
    finally:
        libraries._sage_smooths_in_place.cache_clear()
    (passed, flag), = calls
    assert flag is smooth_k
    assert (passed is k) is k_is_callers
    if not k_is_callers:
        torch.testing.assert_close(passed, k_before - k_before.mean(dim=1, keepdim=True))
    assert torch.equal(k, k_before)

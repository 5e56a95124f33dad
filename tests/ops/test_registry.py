"""Dispatch: priority lists, configuration overrides, strict mode, logging, bad input."""

import logging

import pytest
import torch

import fastdit.ops as ops
from fastdit.config import EngineConfig, KernelConfig, config_from_env, parse_op_providers, set_config
from fastdit.ops import registry
from fastdit.ops.registry import ProviderError


@pytest.fixture
def fake_op(fresh_config):
    """An op 'fake_op' with providers fast (only ints > 0), slow (no machine) and native."""
    calls = []
    registry._ensure_loaded()
    registry.register("fake_op", "native", lambda x: calls.append("native") or x)
    registry.register("fake_op", "fast", lambda x: calls.append("fast") or x,
                      supports_args=lambda x: x > 0)
    registry.register("fake_op", "absent", lambda x: calls.append("absent") or x,
                      supported=lambda: False)
    registry._logged.clear()
    yield calls
    del registry._providers["fake_op"]
    registry._priority_cache.clear()


def use(**kernel):
    set_config(EngineConfig(kernel=KernelConfig(**kernel)))


def test_parse_op_providers():
    assert parse_op_providers("rms_norm=triton, rope_qk_=native") == (
        {"rms_norm": ("triton",), "rope_qk_": ("native",)}, ())
    assert parse_op_providers("triton") == ({}, ("triton",))
    assert parse_op_providers("") == ({}, ())
    with pytest.raises(ValueError, match="cannot parse"):
        parse_op_providers("rms_norm=")


def test_config_from_env():
    cfg = config_from_env({"FASTDIT_OP_PROVIDERS": "rms_norm=triton", "FASTDIT_STRICT_OPS": "1",
                           "FASTDIT_ATTENTION_BACKEND": "cudnn", "FASTDIT_PLATFORM": "CPU",
                           "TRITON_INTERPRET": "1", "FASTDIT_VAE_AUTOTUNE": "0"})
    assert cfg.kernel.op_providers == {"rms_norm": ("triton",)}
    assert cfg.kernel.strict and cfg.kernel.triton_interpret
    assert cfg.kernel.attention_backend == "cudnn"
    assert cfg.platform.platform == "cpu" and cfg.platform.vae_autotune is False
    with pytest.raises(ValueError, match="FASTDIT_STRICT_OPS"):
        config_from_env({"FASTDIT_STRICT_OPS": "maybe"})
    with pytest.raises(ValueError, match="attention_backend"):
        config_from_env({"FASTDIT_ATTENTION_BACKEND": "fastest"})


def test_memory_config_from_env():
    assert config_from_env({}).memory.ffn_chunk_tokens == 8192
    assert config_from_env({"FASTDIT_FFN_CHUNK_TOKENS": "0"}).memory.ffn_chunk_tokens == 0
    assert config_from_env({"FASTDIT_FFN_CHUNK_TOKENS": " 4096 "}).memory.ffn_chunk_tokens == 4096
    with pytest.raises(ValueError, match="FASTDIT_FFN_CHUNK_TOKENS"):
        config_from_env({"FASTDIT_FFN_CHUNK_TOKENS": "lots"})
    with pytest.raises(ValueError, match="ffn_chunk_tokens"):
        config_from_env({"FASTDIT_FFN_CHUNK_TOKENS": "-1"})


def test_requested_provider_runs_and_falls_back_with_a_log(fake_op, caplog):
    use(op_providers={"fake_op": ("fast",)})
    assert ops.registry.dispatch("fake_op", 3) == 3
    assert fake_op == ["fast"]
    with caplog.at_level(logging.INFO, logger="fastdit.ops"):
        registry.dispatch("fake_op", -1)
    assert fake_op == ["fast", "native"]
    assert any("fake_op -> provider native" in r.message and "fell back past fast" in r.message
               for r in caplog.records)


def test_single_name_override_applies_to_every_op(fake_op):
    use(default_providers=("fast",))
    registry.dispatch("fake_op", 1)
    assert fake_op == ["fast"]
    assert registry.priority("rms_norm")[0].name == "native"  # rms_norm has no 'fast'


def test_strict_mode_raises_instead_of_falling_back(fake_op):
    use(op_providers={"fake_op": ("fast",)}, strict=True)
    registry.dispatch("fake_op", 2)
    with pytest.raises(ProviderError, match="fake_op: provider 'fast' cannot take"):
        registry.dispatch("fake_op", -2)
    use(op_providers={"fake_op": ("absent",)}, strict=True)
    with pytest.raises(ProviderError, match="not available"):
        registry.dispatch("fake_op", 2)
    use(op_providers={"fake_op": ("absent",)}, strict=False)  # not strict: falls back
    registry.dispatch("fake_op", 2)
    assert fake_op[-1] == "native"


def test_unknown_provider_is_an_error(fake_op):
    use(op_providers={"fake_op": ("nope",)})
    with pytest.raises(ProviderError, match="unknown provider"):
        registry.dispatch("fake_op", 1)


def test_provider_table_lists_every_op():
    rows = {row["op"]: row for row in ops.provider_table()}
    assert set(rows) >= {"rms_norm", "layer_norm_scale_shift", "scale_residual_norm_scale_shift",
                         "norm_tanh_mul_add", "mul_add", "scale_shift", "rope_qk_", "rms_norm_rope_",
                         "rope_qk_cache_store", "attention", "linear_gelu_tanh", "linear"}
    for op, row in rows.items():
        assert row["chosen"] in row["available"], op
        assert ("sdpa" if op == "attention" else "native") in row["available"]


def test_no_provider_module_is_imported_with_fastdit():
    import subprocess
    import sys

    code = ("import sys, fastdit, fastdit.ops; "
            "bad = [m for m in ('triton', 'aiter', 'flash_attn', 'fastdit.kernels.triton.norm') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


BAD_CALLS = [
    ("rms_norm", lambda: ops.rms_norm(torch.randn(2, 8), torch.randn(7)), r"weight must have shape \[8\]"),
    ("rms_norm", lambda: ops.rms_norm(torch.randn(2, 8), None, residual=torch.randn(2, 9)), "residual"),
    ("rms_norm", lambda: ops.rms_norm(torch.randn(2, 8, dtype=torch.float64), None), "dtype"),
    ("rms_norm", lambda: ops.rms_norm(torch.randn(2, 8), None, variance_size=9), "variance_size"),
    ("rms_norm", lambda: ops.rms_norm([1.0], None), "torch.Tensor"),
    ("layer_norm_scale_shift", lambda: ops.layer_norm_scale_shift(
        torch.randn(2, 6, 8), torch.randn(3, 8), torch.randn(8)), "shift does not broadcast"),
    ("layer_norm_scale_shift", lambda: ops.layer_norm_scale_shift(
        torch.randn(2, 6, 8), torch.randn(2, 4, 1, 8), 0.0), "not divisible"),
    ("layer_norm_scale_shift", lambda: ops.layer_norm_scale_shift(
        torch.randn(2, 6, 8), 0.0, 0.0, norm="batch"), "norm must be"),
    ("scale_residual_norm_scale_shift", lambda: ops.scale_residual_norm_scale_shift(
        torch.randn(2, 6, 8), torch.randn(2, 5, 8), 1, 0.0, 0.0), "residual must have the shape"),
    ("norm_tanh_mul_add", lambda: ops.norm_tanh_mul_add(
        torch.randn(2, 6, 8), torch.randn(2, 6, 7), 0.0), "scale does not broadcast"),
    ("mul_add", lambda: ops.mul_add(torch.randn(2, 3), torch.randn(3), torch.randn(3, 3)), "same shape"),
    ("scale_shift", lambda: ops.scale_shift(torch.randn(2, 3, 4), torch.randn(2, 3, 5), 0.0), "scale"),
    ("rope_qk_", lambda: ops.rope_qk_(torch.randn(4, 2, 8), torch.randn(4, 2, 6),
                                      torch.randn(4, 4), torch.randn(4, 4)), "same even head size"),
    ("rope_qk_", lambda: ops.rope_qk_(torch.randn(4, 2, 8), torch.randn(4, 2, 8),
                                      torch.randn(5, 4), torch.randn(5, 4)), "pass positions"),
    ("rope_qk_", lambda: ops.rope_qk_(torch.randn(4, 2, 8), torch.randn(4, 2, 8), torch.randn(9, 4),
                                      torch.randn(9, 4), positions=torch.zeros(4)), "dtype"),
    ("rope_qk_cache_store", lambda: ops.rope_qk_cache_store(
        torch.randn(3, 3, 8), torch.randn(3, 2, 8), torch.randn(3, 2, 8), torch.zeros(2, 4, 2, 8),
        torch.zeros(2, 4, 2, 8), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long),
        torch.randn(9, 8)), "not a multiple"),
    ("rope_qk_cache_store", lambda: ops.rope_qk_cache_store(
        torch.randn(3, 2, 8), torch.randn(3, 2, 8), torch.randn(3, 2, 8), torch.zeros(2, 4, 3, 8),
        torch.zeros(2, 4, 3, 8), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long),
        torch.randn(9, 8)), "key_cache must be"),
    ("attention", lambda: ops.attention(torch.randn(1, 4, 3, 8), torch.randn(1, 4, 2, 8),
                                        torch.randn(1, 4, 2, 8)), "not a multiple"),
    ("linear_gelu_tanh", lambda: ops.linear_gelu_tanh(torch.randn(2, 8), torch.randn(4, 7)), "weight must be"),
    ("linear", lambda: ops.linear(torch.randn(2, 8), torch.randn(4, 8), out=torch.empty(2, 5)),
     "out must be"),
    ("linear", lambda: ops.linear(torch.randn(2, 8), torch.randn(4, 8).double()), "unsupported dtype"),
    ("linear_gelu_tanh", lambda: ops.linear_gelu_tanh(torch.randn(2, 8), torch.randn(4, 8),
                                                      torch.randn(5)), "bias must be"),
    ("attention", lambda: ops.attention(torch.randn(4, 3, 8), torch.randn(4, 3, 8),
                                        torch.randn(4, 3, 8)), "dimension"),
]


@pytest.mark.parametrize("op,call,message", BAD_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_bad_input_raises_value_error_naming_the_op(op, call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert str(info.value).startswith(f"{op}: ")


@pytest.mark.parametrize("provider", ["triton", "compiled", "native"])
def test_bad_input_raises_on_every_provider(fresh_config, provider):
    use(default_providers=(provider,))
    with pytest.raises(ValueError, match=r"rms_norm: weight must have shape \[8\].*\[7\]"):
        ops.rms_norm(torch.randn(2, 8), torch.randn(7))
    with pytest.raises(ValueError, match="different devices"):
        ops.mul_add(torch.randn(2, 3), 1.0, torch.randn(2, 3, device="meta"))


def test_a_provider_defers_shapes_a_later_provider_runs_faster(fake_op, caplog):
    from fastdit.config import PlatformConfig
    from fastdit.platforms import current_platform

    registry.register("fake_op", "triton", lambda x: fake_op.append("triton") or x,
                      prefers=lambda x: x < 100)
    set_config(EngineConfig(platform=PlatformConfig(platform="cuda")))  # triton > ... > native
    current_platform.cache_clear()
    registry.dispatch("fake_op", 5)
    with caplog.at_level(logging.INFO, logger="fastdit.ops"):
        registry.dispatch("fake_op", 500)
    assert fake_op == ["triton", "native"]
    assert any("triton defers this shape" in r.message for r in caplog.records)
    set_config(EngineConfig(kernel=KernelConfig(op_providers={"fake_op": ("triton",)}, strict=True),
                            platform=PlatformConfig(platform="cuda")))
    registry.dispatch("fake_op", 500)  # asked for by name: it runs, also in strict mode
    assert fake_op[-1] == "triton"


def test_sdpa_auto_leaves_torch_backend_priority_alone(fresh_config):
    from fastdit.kernels.attention.sdpa import forced_backend

    assert forced_backend("auto") is None
    before = torch._C._get_sdp_priority_order()
    q = torch.randn(1, 5, 2, 8)
    ops.attention(q, q, q)
    assert torch._C._get_sdp_priority_order() == before

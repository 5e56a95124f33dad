"""Dispatch plans and dispatch honesty.

Plans: the provider of a call is chosen (and the call checked) once per argument signature and
configuration; later calls go straight to it; the caches stay bounded. Honesty: a requested
provider that is unavailable or declines is named in one WARNING with the reason; strict mode
raises for it, and for a call the first available provider cannot take when none is named;
unknown op names warn (raise in strict mode); lossy providers run only when named.
"""

import logging

import pytest
import torch

import fastdit.ops as ops
from fastdit.config import EngineConfig, KernelConfig, PlatformConfig, override_config, set_config
from fastdit.errors import ProviderError
from fastdit.ops import norm, registry


@pytest.fixture
def counting(fresh_config):
    """A provider 'counting' of layer_norm_scale_shift that counts its predicate calls and runs
    the native spec; named for that op."""
    counts = {"supports_args": 0, "calls": 0}

    def supports_args(*args, **kwargs):
        counts["supports_args"] += 1
        return True

    def run(*args, **kwargs):
        counts["calls"] += 1
        return norm.layer_norm_scale_shift_native(*args, **kwargs)

    registry.register("layer_norm_scale_shift", "counting", run, supports_args=supports_args)
    set_config(EngineConfig(kernel=KernelConfig(op_providers={"layer_norm_scale_shift": ("counting",)})))
    yield counts
    del registry.providers("layer_norm_scale_shift")["counting"]
    registry.clear_caches()


@pytest.fixture
def fake_op(fresh_config):
    """An op 'fake_op' on the CUDA platform order (triton > compiled > native), with a 'triton'
    provider that takes positive numbers only and a 'native' one."""
    from fastdit.platforms import current_platform

    calls = []
    registry._ensure_loaded()
    registry.register("fake_op", "native", lambda x: calls.append("native") or x)
    registry.register("fake_op", "triton", lambda x: calls.append("triton") or x,
                      supports_args=lambda x: x > 0)
    registry._logged.clear()
    current_platform.cache_clear()
    yield calls
    registry.unregister("fake_op")
    current_platform.cache_clear()


def use(platform=None, **kernel):
    set_config(EngineConfig(kernel=KernelConfig(**kernel), platform=PlatformConfig(platform=platform)))
    from fastdit.platforms import current_platform

    current_platform.cache_clear()


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------
def test_provider_is_chosen_once_per_signature(counting):
    x, mod = torch.randn(2, 5, 16), torch.randn(2, 1, 16)
    for _ in range(5):
        ops.layer_norm_scale_shift(x, shift=mod, scale=mod)
    assert counting == {"supports_args": 1, "calls": 5}
    ops.layer_norm_scale_shift(torch.randn(2, 5, 16), shift=mod, scale=torch.randn(2, 1, 16))
    assert counting["supports_args"] == 1  # new tensors, same signature: the same plan
    ops.layer_norm_scale_shift(torch.randn(2, 7, 16), shift=mod, scale=mod)  # new length
    ops.layer_norm_scale_shift(x, shift=0.5, scale=mod)  # a number where a tensor was
    ops.layer_norm_scale_shift(x, shift=0.25, scale=mod)  # another number: same signature
    ops.layer_norm_scale_shift(x[:, :, ::2].contiguous(), shift=mod[..., ::2],
                               scale=mod[..., ::2])  # strided modulations
    assert counting["supports_args"] == 4 and counting["calls"] == 10


def test_checks_run_once_per_signature_and_still_catch_bad_calls(counting, monkeypatch):
    checked = []
    original = norm._check_layer_norm_scale_shift
    monkeypatch.setattr(norm, "_check_layer_norm_scale_shift",
                        lambda *a, **k: checked.append(1) or original(*a, **k))
    x, mod = torch.randn(2, 5, 16), torch.randn(2, 1, 16)
    for _ in range(3):
        ops.layer_norm_scale_shift(x, shift=mod, scale=mod)
    assert len(checked) == 1
    with pytest.raises(ValueError, match="eps must be"):  # eps is part of the signature
        ops.layer_norm_scale_shift(x, shift=mod, scale=mod, eps=-1.0)
    with pytest.raises(ValueError, match="different devices"):  # so is every device
        ops.layer_norm_scale_shift(x, shift=mod.to("meta"), scale=mod)
    with pytest.raises(ValueError, match="norm must be"):  # an unhashable setting
        ops.layer_norm_scale_shift(x, shift=mod, scale=mod, norm=["layer"])
    with pytest.raises(ValueError, match="shift must be a torch.Tensor|shift has unsupported"):
        ops.layer_norm_scale_shift(x, shift=True, scale=mod)
    assert len(checked) == 5 and counting["calls"] == 3


def test_plans_are_bounded_per_op(fresh_config, monkeypatch):
    monkeypatch.setattr(registry, "MAX_PLANS", 8)
    for length in range(1, 30):
        ops.rms_norm(torch.randn(length, 4), None)
    assert len(registry.plans("rms_norm")) <= 8


def test_equal_overrides_share_plans_and_set_config_drops_them(fresh_config):
    x = torch.randn(3, 8)
    with override_config(kernel={"strict": True}):
        ops.rms_norm(x, None)
        first = registry.plans("rms_norm")
    with override_config(kernel={"strict": True}):
        assert registry.plans("rms_norm") is first  # by value, not by object
    set_config(EngineConfig())
    with override_config(kernel={"strict": True}):
        assert registry.plans("rms_norm") is not first


def test_plan_for_names_what_runs():
    x = torch.randn(2, 3, 8)
    plan = ops.plan_for("scale_shift", x, shift=0.0, scale=torch.randn(8))
    assert plan.provider.name == "native" and plan.op == "scale_shift"
    assert ops.resolve("attention", *(torch.randn(1, 3, 2, 4),) * 3).name == "sdpa"


def test_in_place_ops_return_their_inputs():
    q, k = torch.randn(5, 2, 8), torch.randn(5, 1, 8)
    theta = torch.rand(5, 4)
    out = ops.rope_qk_(q, k, theta.cos(), theta.sin())
    assert out[0] is q and out[1] is k
    x = torch.randn(1, 5, 2, 8)
    assert ops.rms_norm_rope_(x, None, theta.cos(), theta.sin()) is x


# ---------------------------------------------------------------------------------------
# honesty
# ---------------------------------------------------------------------------------------
def test_requested_but_unavailable_provider_is_a_warning_once(fresh_config, caplog):
    registry._logged.clear()
    use(op_providers={"rms_norm": ("aiter",)})
    with caplog.at_level(logging.INFO, logger="fastdit.ops"):
        for length in (2, 3, 4):
            ops.rms_norm(torch.randn(length, 8), None)
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert warnings[0].startswith("rms_norm: provider 'aiter' was requested but is not available "
                                  "on this machine: it does not run on platform 'cpu'")
    use(op_providers={"rms_norm": ("aiter",)}, strict=True)
    with pytest.raises(ProviderError, match="'aiter' was requested but is not available.*strict"):
        ops.rms_norm(torch.randn(2, 8), None)


def test_requested_provider_that_declines(fake_op, caplog):
    use(op_providers={"fake_op": ("triton",)}, platform="cpu")
    with caplog.at_level(logging.INFO, logger="fastdit.ops"):
        registry.dispatch("fake_op", -1)
        registry.dispatch("fake_op", -2)
    assert fake_op == ["native", "native"]
    assert _warnings(caplog) == ["fake_op: provider 'triton' was requested but cannot take this "
                                 "call (-1); using the next provider"]
    use(op_providers={"fake_op": ("triton",)}, strict=True, platform="cpu")
    with pytest.raises(ProviderError, match="requested but cannot take.*strict mode forbids"):
        registry.dispatch("fake_op", -1)


def test_strict_mode_without_names_needs_the_first_available_provider(fake_op, caplog):
    use(platform="cuda")  # the platform order puts triton first; nothing named
    with caplog.at_level(logging.INFO, logger="fastdit.ops"):
        registry.dispatch("fake_op", -1)  # not strict: a logged fall-back
    assert fake_op == ["native"]
    assert any("fell back past triton" in w for w in _warnings(caplog))
    use(platform="cuda", strict=True)
    registry.dispatch("fake_op", 1)
    with pytest.raises(ProviderError, match="'triton', the first available one, cannot take"):
        registry.dispatch("fake_op", -1)


def test_lossy_providers_run_only_when_named(fake_op):
    registry.register("fake_op", "triton", lambda x: fake_op.append("lossy") or x, exact=False)
    use(platform="cuda")
    registry.dispatch("fake_op", 1)
    assert fake_op == ["native"]  # on the platform's list, but not exact: skipped
    assert [p.name for p in registry.priority("fake_op")] == ["native"]
    use(platform="cuda", op_providers={"fake_op": ("triton",)})
    registry.dispatch("fake_op", 1)
    assert fake_op[-1] == "lossy"
    use(platform="cuda", default_providers=("triton",))  # named for every op: also counts
    registry.dispatch("fake_op", 2)
    assert fake_op[-1] == "lossy"


def test_sage_attention_is_lossy():
    attention = registry.providers("attention")
    assert attention["sage"].exact is False
    assert attention["sdpa"].exact and attention["native"].exact
    rows = {r["op"]: r for r in ops.provider_table()}
    assert set(rows["attention"]["lossy"]) == {"sage", "int8_native", "int8_triton"}
    assert all(not attention[name].exact for name in rows["attention"]["lossy"])


def test_unknown_op_names_warn_or_raise_in_strict_mode(fresh_config, caplog):
    registry._logged.clear()
    use(op_providers={"rms_nrom": ("triton",)})
    with caplog.at_level(logging.WARNING, logger="fastdit.ops"):
        ops.rms_norm(torch.randn(2, 8), None)
    assert any("unknown op(s) rms_nrom" in w and "(ignored)" in w for w in _warnings(caplog))
    use(op_providers={"rms_nrom": ("triton",)}, strict=True)
    for _ in range(2):  # every call, not only the first
        with pytest.raises(ProviderError, match="unknown op.*rms_nrom.*known ops: attention"):
            ops.rms_norm(torch.randn(2, 8), None)


def test_unknown_provider_names_are_errors(fresh_config):
    use(op_providers={"rms_norm": ("warp",)})
    with pytest.raises(ProviderError, match=r"rms_norm: unknown provider\(s\) \['warp'\]"):
        ops.rms_norm(torch.randn(2, 8), None)
    use(default_providers=("wrap",))
    with pytest.raises(ProviderError, match=r"unknown provider\(s\) \['wrap'\]"):
        ops.rms_norm(torch.randn(2, 8), None)


def test_provider_table_says_why_a_provider_is_unavailable():
    rows = {r["op"]: r for r in ops.provider_table()}
    if torch.cuda.is_available():
        pytest.skip("the CPU table")
    reason = rows["linear_gelu_tanh"]["unavailable"]["cublaslt"]
    assert "platform 'cpu'" in reason and "cuBLASLt" in reason
    assert rows["rms_norm"]["first_available"] == "native"

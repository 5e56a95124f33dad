"""fastdit.config: parsing the environment, value semantics, and override scopes that are
context-local (threads and asyncio tasks see their own), nest, and leave bounded caches."""

import asyncio
import dataclasses
import threading

import pytest
import torch

from fastdit.config import (
    CompileConfig,
    EngineConfig,
    KernelConfig,
    config_from_env,
    get_config,
    override_config,
    parse_op_providers,
    set_config,
)


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


def test_configs_compare_and_hash_by_value():
    a = KernelConfig(op_providers={"rms_norm": ["triton", "native"]}, default_providers="triton")
    b = KernelConfig(op_providers={"rms_norm": ("triton", "native")}, default_providers=("triton",))
    assert a == b and hash(a) == hash(b)  # lists and strings become tuples of names
    assert a.op_providers["rms_norm"] == ("triton", "native") and a.default_providers == ("triton",)
    assert hash(EngineConfig(kernel=a)) == hash(EngineConfig(kernel=b))
    assert EngineConfig(kernel=a) != EngineConfig(kernel=KernelConfig(strict=True))
    assert CompileConfig().dynamic is None  # automatic dynamic shapes for the compiled provider


def test_override_is_scoped_and_nests(fresh_config):
    base = get_config()
    with override_config(kernel={"strict": True}) as outer:
        assert get_config() is outer and outer.kernel.strict
        with override_config(memory={"ffn_chunk_tokens": 3}) as inner:
            assert get_config() is inner
            assert inner.kernel.strict and inner.memory.ffn_chunk_tokens == 3  # composes
        assert get_config() is outer
    assert get_config() is base


def test_override_is_restored_after_an_exception(fresh_config):
    base = get_config()
    with pytest.raises(RuntimeError):
        with override_config(kernel={"strict": True}):
            raise RuntimeError("boom")
    assert get_config() is base


def test_set_config_is_process_wide_and_an_override_still_wins(fresh_config):
    with override_config(kernel={"strict": True}):
        set_config(EngineConfig(log_level="DEBUG"))
        assert get_config().kernel.strict  # the scope keeps its override
        seen = []
        thread = threading.Thread(target=lambda: seen.append(get_config().log_level))
        thread.start()
        thread.join()
        assert seen == ["DEBUG"]  # other threads see the new process-wide config
    assert get_config().log_level == "DEBUG"
    with pytest.raises(TypeError):
        set_config({"kernel": None})


def test_two_threads_overriding_differently_see_their_own_settings(fresh_config):
    barrier = threading.Barrier(2)
    seen = {}

    def worker(name, strict, backend):
        with override_config(kernel={"strict": strict, "attention_backend": backend}):
            barrier.wait()  # both scopes are open at once
            for _ in range(200):
                cfg = get_config()
                seen.setdefault(name, set()).add((cfg.kernel.strict, cfg.kernel.attention_backend))
            barrier.wait()

    threads = [threading.Thread(target=worker, args=("a", True, "math")),
               threading.Thread(target=worker, args=("b", False, "flash"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": {(True, "math")}, "b": {(False, "flash")}}
    assert get_config().kernel.attention_backend == "auto"  # the main thread saw neither


def test_asyncio_tasks_keep_their_own_overrides(fresh_config):
    async def task(chunk):
        with override_config(memory={"ffn_chunk_tokens": chunk}):
            await asyncio.sleep(0)  # the other task runs in between
            return get_config().memory.ffn_chunk_tokens

    async def both():
        return await asyncio.gather(task(1), task(2))

    assert asyncio.run(both()) == [1, 2]


def test_ops_follow_the_override_of_their_own_thread(fresh_config):
    """The registry reads the scope's configuration: a strict override with an unavailable
    provider raises in its thread only."""
    import fastdit.ops as ops
    from fastdit.errors import ProviderError

    x = torch.randn(2, 8)
    errors = {}
    barrier = threading.Barrier(2)

    def worker(name, kernel):
        with override_config(kernel=kernel):
            barrier.wait()
            try:
                ops.rms_norm(x, None)
                errors[name] = None
            except ProviderError as exc:
                errors[name] = exc

    strict = KernelConfig(op_providers={"rms_norm": ("aiter",)}, strict=True)
    threads = [threading.Thread(target=worker, args=("strict", strict)),
               threading.Thread(target=worker, args=("plain", KernelConfig()))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors["plain"] is None
    assert "aiter" in str(errors["strict"]) and "strict mode" in str(errors["strict"])


def test_a_thousand_overrides_leave_bounded_caches(fresh_config):
    import fastdit.ops as ops
    from fastdit.ops import registry

    x = torch.randn(2, 8)
    registry.clear_caches()
    for _ in range(1000):  # equal overrides: one cached state
        with override_config(kernel={"strict": True}):
            ops.rms_norm(x, None)
    assert len(registry._states) <= 2
    for i in range(1000):  # distinct overrides: the least recently used go
        with override_config(memory={"ffn_chunk_tokens": i}):
            ops.rms_norm(x, None)
    assert len(registry._states) <= registry.MAX_CONFIGS
    assert len(registry._by_id) <= 2 * registry.MAX_CONFIGS


def test_attention_backend_is_bound_into_the_plan(fresh_config):
    """FASTDIT_ATTENTION_BACKEND still forces an SDPA backend: the plan's function has it
    bound (on a GPU device; torch picks on the CPU), and no call reads the configuration."""
    from torch.nn.attention import SDPBackend

    from fastdit.kernels.attention import sdpa

    cfg = config_from_env({"FASTDIT_ATTENTION_BACKEND": "math"})
    assert cfg.kernel.attention_backend == "math"
    q_gpu = torch.empty(1, 4, 2, 8, device="meta")  # any non-CPU device
    bound = sdpa.specialize(cfg, q_gpu, q_gpu, q_gpu)
    assert bound.func is sdpa.attention_sdpa and bound.keywords == {"backend": SDPBackend.MATH}
    assert sdpa.specialize(EngineConfig(), q_gpu, q_gpu, q_gpu) is sdpa.attention_sdpa
    q = torch.randn(1, 4, 2, 8)
    assert sdpa.specialize(cfg, q, q, q) is sdpa.attention_sdpa
    import fastdit.ops as ops

    with override_config(kernel=cfg.kernel):
        plan = ops.plan_for("attention", q, q, q)
        torch.testing.assert_close(plan.fn(q, q, q), ops.attention(q, q, q))


def test_bad_config_types_are_rejected():
    with pytest.raises(ValueError, match="attention_backend"):
        KernelConfig(attention_backend="fastest")
    assert dataclasses.replace(KernelConfig(), strict=True).strict

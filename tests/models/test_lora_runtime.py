"""Runtime LoRA adapters equal merged weights (on a stand-in ``Linear`` with an ``adapters``
list, as seams.md specifies the real one), stack, and come off again."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdit.models.wan import WanTransformer
from fastdit.models.wan.lora import LoraAdapter, apply_loras, remove_lora_adapters
from tests.models.lora_helpers import (
    ATTENTION,
    EMBEDDERS,
    block_modules,
    fastdit_from,
    make_lora,
    use_stand_in_linears,
    write_lora,
)
from tests.models.wan_helpers import T2V, diffusers_model, inputs, rel_err


def _twins():
    """(runtime model with stand-in Linears, merged-mode model), the same weights."""
    reference = diffusers_model(T2V)
    runtime, merged = fastdit_from(reference, T2V), fastdit_from(reference, T2V)
    use_stand_in_linears(runtime)
    return runtime, merged


def _loras(tmp_path, modules=None):
    modules = modules or block_modules(T2V) + list(EMBEDDERS)
    first = make_lora(T2V, modules, rank=4, alpha=2.0, seed=1,
                      diff_b=["blocks.0.attn1.to_q", "proj_out"],
                      diff=["blocks.1.attn2.to_k.weight", "blocks.0.attn1.norm_q.weight"])
    second = make_lora(T2V, block_modules(T2V, ATTENTION), rank=2, seed=2)
    return [(write_lora(tmp_path / "a.safetensors", first, "original"), 0.8),
            (write_lora(tmp_path / "b.safetensors", second, "diffusers"), 1.5)]


def test_runtime_equals_merged_on_every_linear(tmp_path):
    runtime, merged = _twins()
    before = {k: v.clone() for k, v in runtime.state_dict().items()}
    files = _loras(tmp_path)
    result = apply_loras(runtime, files, mode="runtime")
    apply_loras(merged, files, mode="merge")
    assert result.adapters > 0 and result.merged == 1  # the norm weight: not in a Linear
    state = runtime.state_dict()
    assert torch.equal(state["blocks.0.attn1.norm_q.weight"], merged.state_dict()["blocks.0.attn1.norm_q.weight"])
    g = torch.Generator().manual_seed(0)
    checked = 0
    for name, module in runtime.named_modules():
        if not getattr(module, "adapters", None):
            continue
        assert torch.equal(state[name + ".weight"], before[name + ".weight"])  # weights untouched
        twin = merged.get_submodule(name)
        x = torch.randn(2, 5, module.in_features, generator=g)
        with torch.no_grad():
            expected = F.linear(x, twin.weight, twin.bias)
            got = module(x)
        assert rel_err(got, expected) <= 1e-5, name
        checked += 1
    assert checked == result.adapters


def test_stacked_loras_are_one_adapter_per_layer(tmp_path):
    runtime, _ = _twins()
    apply_loras(runtime, _loras(tmp_path), mode="runtime")
    adapters = runtime.blocks[0].attn1.to_v.adapters
    assert len(adapters) == 1 and isinstance(adapters[0], LoraAdapter)
    assert adapters[0].rank == 4 + 2


def test_remove_adapters_restores_the_layers(tmp_path):
    runtime, _ = _twins()
    x = torch.randn(3, T2V.dim)
    layer = runtime.blocks[1].attn1.to_out[0]
    with torch.no_grad():
        plain = layer(x)
        apply_loras(runtime, _loras(tmp_path), mode="runtime")
        assert not torch.allclose(layer(x), plain)
        assert remove_lora_adapters(runtime) > 0
        assert torch.equal(layer(x), plain)


def test_runtime_forward_equals_merged_forward(tmp_path):
    """The whole model. ``ffn.net.0.proj`` is left out: FeedForward.hidden calls the fused
    linear+GELU op on the weight directly, so only the real Linear (phase 2) routes it
    through the adapters."""
    runtime, merged = _twins()
    modules = block_modules(T2V, ATTENTION + ("ffn.net.2",)) + list(EMBEDDERS)
    files = _loras(tmp_path, modules)
    apply_loras(runtime, files, mode="runtime")
    apply_loras(merged, files)
    args = inputs(T2V)
    with torch.no_grad():
        assert rel_err(runtime(*args), merged(*args)) <= 1e-5


def test_runtime_forward_with_the_real_linear(tmp_path):
    """Phase 2: once fastdit.layers.linear.Linear exists every product takes adapters."""
    pytest.importorskip("fastdit.layers.linear")
    reference = diffusers_model(T2V)
    runtime, merged = fastdit_from(reference, T2V), fastdit_from(reference, T2V)
    files = _loras(tmp_path)
    apply_loras(runtime, files, mode="runtime")
    apply_loras(merged, files)
    args = inputs(T2V)
    with torch.no_grad():
        assert rel_err(runtime(*args), merged(*args)) <= 1e-5


def test_adapter_dtype_follows_the_layer(tmp_path):
    runtime = WanTransformer.from_config(T2V, dtype=torch.bfloat16, seed=0)
    use_stand_in_linears(runtime)
    apply_loras(runtime, _loras(tmp_path), mode="runtime")
    assert runtime.blocks[0].attn1.to_q.adapters[0].down.dtype == torch.bfloat16
    # the time embedder stays fp32 (FP32_PARTS), so does its adapter
    assert runtime.condition_embedder.time_embedder.linear_1.adapters[0].down.dtype == torch.float32
    x = torch.randn(2, T2V.dim, dtype=torch.bfloat16)
    assert runtime.blocks[0].attn1.to_q(x).dtype == torch.bfloat16

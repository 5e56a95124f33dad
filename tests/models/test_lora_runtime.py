"""Runtime LoRA adapters on the real model (``fastdit.layers.linear.Linear``) equal merged
weights, layer by layer and for a whole forward, including the FFN's fused GELU half
(``ffn.net.0.proj`` goes through ``Linear.gelu_tanh``) and its chunked second half
(``ffn.net.2`` through ``Linear.into``); they stack, move with the model and come off again."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdit.errors import LoraError
from fastdit.models.wan import WanTransformer
from fastdit.models.wan.lora import LoraAdapter, apply_loras, check_loras, remove_lora_adapters
from tests.models.lora_helpers import (
    ATTENTION,
    EMBEDDERS,
    FFN,
    block_modules,
    diffusers_merged,
    fastdit_from,
    make_lora,
    write_lora,
)
from tests.models.wan_helpers import T2V, diffusers_model, inputs, rel_err


def _twins(dtype=torch.float32):
    """(runtime-mode model, merge-mode model) holding the same diffusers weights."""
    reference = diffusers_model(T2V)
    return fastdit_from(reference, T2V, dtype), fastdit_from(reference, T2V, dtype)


def _loras(tmp_path, modules=None):
    modules = modules or block_modules(T2V) + list(EMBEDDERS)
    first = make_lora(T2V, modules, rank=4, alpha=2.0, seed=1,
                      diff_b=["blocks.0.attn1.to_q", "blocks.1.ffn.net.0.proj", "proj_out"],
                      diff=["blocks.1.attn2.to_k.weight", "blocks.0.attn1.norm_q.weight"])
    second = make_lora(T2V, block_modules(T2V, ATTENTION + FFN), rank=2, seed=2)
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
    assert state.keys() == before.keys()  # the adapters' tensors are not in the state dict
    assert torch.equal(state["blocks.0.attn1.norm_q.weight"], merged.state_dict()["blocks.0.attn1.norm_q.weight"])
    g = torch.Generator().manual_seed(0)
    checked = set()
    for name, module in runtime.named_modules():
        if not getattr(module, "adapters", None):
            continue
        assert torch.equal(state[name + ".weight"], before[name + ".weight"])  # weights untouched
        twin = merged.get_submodule(name)
        x = torch.randn(2, 5, module.in_features, generator=g)
        with torch.no_grad():
            expected = F.linear(x, twin.weight, twin.bias)
            assert rel_err(module(x), expected) <= 1e-5, name
            assert rel_err(module.gelu_tanh(x), F.gelu(expected, approximate="tanh")) <= 1e-5, name
            out = torch.empty_like(expected)
            assert module.into(x, out) is out and rel_err(out, expected) <= 1e-5, name
        checked.add(name)
    assert len(checked) == result.adapters
    assert {"blocks.1.ffn.net.0.proj", "blocks.1.ffn.net.2", "proj_out"} <= checked


@pytest.mark.parametrize("chunk_rows", [0, 7])
def test_runtime_forward_equals_merged_forward(tmp_path, chunk_rows):
    """The whole model, every product adapted (ffn.net.0.proj: the fused GELU path; with
    chunk_rows the FFN runs in slices and ffn.net.2 writes each into the output)."""
    runtime, merged = _twins()
    files = _loras(tmp_path)
    apply_loras(runtime, files, mode="runtime")
    apply_loras(merged, files)
    for model in (runtime, merged):
        for block in model.blocks:
            block.ffn_chunk_tokens = chunk_rows
    args = inputs(T2V)
    with torch.no_grad():
        got, expected = runtime(*args), merged(*args)
        plain = fastdit_from(diffusers_model(T2V), T2V)(*args)
    assert rel_err(got, expected) <= 1e-5
    assert rel_err(plain, expected) > 1e-3  # the LoRAs do change the output


def test_runtime_forward_equals_diffusers_fused(tmp_path):
    """Independent reference: diffusers' load_lora_weights + set_adapters + fuse_lora."""
    reference = diffusers_model(T2V)
    runtime = fastdit_from(reference, T2V)
    files = _loras(tmp_path, block_modules(T2V) + ["proj_out"])[1:]  # the PEFT-format one
    apply_loras(runtime, files, mode="runtime")
    fused = diffusers_merged(reference, files)
    merged = fastdit_from(reference, T2V)
    merged.load_state_dict(fused)
    args = inputs(T2V)
    with torch.no_grad():
        assert rel_err(runtime(*args), merged(*args)) <= 1e-5


def test_stacked_loras_are_one_adapter_per_layer(tmp_path):
    runtime, _ = _twins()
    apply_loras(runtime, _loras(tmp_path), mode="runtime")
    adapters = runtime.blocks[0].attn1.to_v.adapters
    assert len(adapters) == 1 and isinstance(adapters[0], LoraAdapter)
    assert adapters[0].rank == 4 + 2
    assert runtime.blocks[0].attn1.to_v.lora_adapter_0 is adapters[0]


def test_adapters_move_with_the_model_and_come_off(tmp_path):
    runtime, _ = _twins()
    x = torch.randn(3, T2V.dim)
    layer = runtime.blocks[1].attn1.to_out[0]
    with torch.no_grad():
        plain = layer(x)
        apply_loras(runtime, _loras(tmp_path), mode="runtime")
        adapted = layer(x)
        assert not torch.allclose(adapted, plain)
        runtime.to(torch.float64)  # a move: the adapter's buffers follow the layer
        assert layer.adapters[0].down.dtype == torch.float64
        runtime.to(torch.float32)
        assert torch.equal(layer(x), adapted)
        assert remove_lora_adapters(runtime) > 0
        assert not any("lora_adapter" in name for name, _ in runtime.named_modules())
        assert torch.equal(layer(x), plain)


def test_adapter_dtype_follows_the_layer(tmp_path):
    runtime = WanTransformer.from_config(T2V, dtype=torch.bfloat16, seed=0)
    apply_loras(runtime, _loras(tmp_path), mode="runtime")
    assert runtime.blocks[0].attn1.to_q.adapters[0].down.dtype == torch.bfloat16
    # the time embedder stays fp32 (FP32_PARTS), so does its adapter
    assert runtime.condition_embedder.time_embedder.linear_1.adapters[0].down.dtype == torch.float32
    x = torch.randn(2, T2V.dim, dtype=torch.bfloat16)
    assert runtime.blocks[0].attn1.to_q(x).dtype == torch.bfloat16


def test_runtime_mode_refuses_a_layer_that_is_not_a_fastdit_linear(tmp_path):
    """A plain nn.Linear has no adapters: a clear error (merge mode still works on it)."""
    model = WanTransformer.from_config(T2V, dtype=torch.float32, seed=0)
    old = model.blocks[0].attn1.to_q
    plain = nn.Linear(old.in_features, old.out_features)
    model.blocks[0].attn1.to_q = plain
    files = _loras(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LoraError, match=r"needs fastdit Linear layers .*'blocks\.0\.attn1\.to_q' is a "
                                        r"torch\.nn\.modules\.linear\.Linear \(use the merge mode\)"):
        apply_loras(model, files, mode="runtime")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(getattr(m, "adapters", None) for m in model.modules())
    apply_loras(model, files, mode="merge")
    assert not torch.equal(plain.weight, before["blocks.0.attn1.to_q.weight"])


def test_check_loras_on_a_meta_model(tmp_path):
    """The loader checks LoRAs against a model on the meta device (no weights in memory)."""
    with torch.device("meta"):
        shape_model = WanTransformer(T2V)
    files = _loras(tmp_path)
    plans = check_loras(shape_model, files, mode="runtime")
    assert [p.scale for p in plans] == [0.8, 1.5]
    model = WanTransformer.from_config(T2V, dtype=torch.float32, seed=0)
    twin = WanTransformer.from_config(T2V, dtype=torch.float32, seed=0)
    apply_loras(model, files, plans=plans)
    apply_loras(twin, files)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))

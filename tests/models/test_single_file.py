"""Distilled transformers from one safetensors file (original or diffusers names, LightX2V
fp8/int8 with per-channel scales, ComfyUI scaled fp8), on a base model's config."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from fastdit.models.wan import CheckpointError, WanTransformer, diffusers_to_original_key
from fastdit.models.wan.single_file import load_transformer_file, transformer_config
from tests.models.wan_helpers import I2V, T2V, diffusers_model, inputs, rel_err

FP8 = torch.float8_e4m3fn


@pytest.fixture
def state():
    return {k: v.detach().clone() for k, v in diffusers_model(T2V).state_dict().items()}


def _original(state, prefix=""):
    return {prefix + diffusers_to_original_key(k): v for k, v in state.items()}


def _is_block_linear(name: str) -> bool:  # what LightX2V's converter quantises
    return name.startswith("blocks.") and name.endswith(".weight") and any(
        p in name for p in ("self_attn.", "cross_attn.", "ffn.")) and "norm" not in name


def _lightx2v_quantised(original, kind="fp8"):
    """LightX2V's converter: per-output-channel scales ``amax / qmax`` as ``<key>_scale``."""
    out = {}
    for key, w in original.items():
        if w.dim() == 2 and _is_block_linear(key):
            if kind == "fp8":
                scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / torch.finfo(FP8).max
                out[key] = (w / scale).clamp(-448, 448).to(FP8)
            else:
                scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / 127
                out[key] = (w / scale).round().clamp(-128, 127).to(torch.int8)
            out[key + "_scale"] = scale.float()
        else:
            out[key] = w
    return out


def _comfy_scaled(original, prefix=""):
    """ComfyUI scaled fp8: one scale per tensor as ``<module>.scale_weight``, a marker named
    ``<prefix>scaled_fp8``."""
    out = {prefix + "scaled_fp8": torch.zeros(2, dtype=FP8)}
    for key, w in original.items():
        if w.dim() == 2 and _is_block_linear(key):
            scale = w.abs().max() / torch.finfo(FP8).max
            out[key] = (w / scale).to(FP8)
            out[key.replace(".weight", ".scale_weight")] = scale.reshape(())
            out[key.replace(".weight", ".scale_input")] = torch.tensor(1.0)
        else:
            out[key] = w
    return out


def _dequantised(tensors):
    """What the loader must produce: ``weight.float() * scale`` for every scaled weight."""
    out = {}
    for key, w in tensors.items():
        for suffix in ("_scale", ".scale_weight"):
            scale_key = key + suffix if suffix == "_scale" else key.replace(".weight", suffix)
            if scale_key in tensors and scale_key != key:
                s = tensors[scale_key]
                out[key] = w.float() * (s.reshape(-1, 1) if s.numel() > 1 else s)
                break
        else:
            out[key] = w
    return out


def _load(path, config=T2V, dtype=torch.float32):
    return load_transformer_file(path, config, dtype=dtype, device="cpu")


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model."])
def test_original_layout_single_file(tmp_path, state, prefix):
    path = tmp_path / "wan2.1_t2v_tiny_lightx2v_4step.safetensors"
    save_file(_original(state, prefix), str(path))
    model = _load(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_diffusers_layout_single_file_and_forward(tmp_path, state):
    path = tmp_path / "distilled.safetensors"
    save_file(state, str(path))
    model = _load(path)
    reference = WanTransformer.from_config(T2V, dtype=torch.float32)
    reference.load_state_dict(state)
    args = inputs(T2V)
    with torch.no_grad():
        assert rel_err(model(*args), reference(*args)) <= 1e-6


@pytest.mark.parametrize("kind", ["fp8", "int8"])
def test_lightx2v_quantised_per_channel(tmp_path, state, kind):
    tensors = _lightx2v_quantised(_original(state), kind)
    path = tmp_path / f"wan2.1_t2v_tiny_scaled_{kind}_lightx2v_4step.safetensors"
    save_file(tensors, str(path))
    model = _load(path)
    expected = _dequantised(tensors)
    loaded = model.state_dict()
    for name, tensor in loaded.items():
        assert torch.equal(tensor, expected[diffusers_to_original_key(name)].float()), name
    q = loaded["blocks.0.attn1.to_q.weight"]
    assert rel_err(q, state["blocks.0.attn1.to_q.weight"]) < (0.07 if kind == "fp8" else 0.01)
    assert not torch.equal(q, state["blocks.0.attn1.to_q.weight"])


@pytest.mark.parametrize("marker_prefix", ["", "model.diffusion_model."])
def test_comfyui_scaled_fp8(tmp_path, state, marker_prefix):
    tensors = _comfy_scaled(_original(state, "model.diffusion_model."), marker_prefix)
    path = tmp_path / "wan2.1_t2v_tiny_scaled_fp8_e4m3_lightx2v_4step_comfyui.safetensors"
    save_file(tensors, str(path))
    model = _load(path, dtype=torch.bfloat16)
    expected = _dequantised(tensors)
    key = "model.diffusion_model.blocks.1.ffn.0.weight"
    assert torch.equal(model.state_dict()["blocks.1.ffn.net.0.proj.weight"],
                       expected[key].to(torch.bfloat16))
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32  # FP32_PARTS


def test_base_folder_config(tmp_path):
    diffusers_model(I2V).save_pretrained(tmp_path / "base" / "transformer")
    (tmp_path / "base" / "model_index.json").write_text("{}")
    assert transformer_config(tmp_path / "base") == I2V
    model = WanTransformer.from_config(T2V, dtype=torch.float32)
    model.save_pretrained(tmp_path / "official", layout="original")
    assert transformer_config(tmp_path / "official") == T2V


# ---------------------------------------------------------------------------------------
def test_file_for_another_model(tmp_path, state):
    path = tmp_path / "t2v.safetensors"
    save_file(_original(state), str(path))
    with pytest.raises(CheckpointError, match=r"'patch_embedding\.weight'.*expects \[32, 8, 1, 2, 2\]"):
        _load(path, I2V)
    with_image = dataclasses.replace(T2V, image_dim=20, added_kv_proj_dim=32)
    with pytest.raises(CheckpointError, match=r"lacks tensor\(s\) .img_emb\.proj\.0\.weight.* and 13 more"):
        _load(path, with_image)  # image projections the T2V file lacks
    wider = dataclasses.replace(T2V, ffn_dim=64)
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.ffn\.0\.(weight|bias)'.* has shape \[48.*"
                                              r"expects \[64"):
        _load(path, wider)


def test_unexpected_and_missing_tensors(tmp_path, state):
    original = _original(state)
    original["blocks.0.self_attn.zz.weight"] = torch.zeros(2)
    path = tmp_path / "extra.safetensors"
    save_file(original, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'blocks\.0\.self_attn\.zz\.weight'"):
        _load(path)
    del original["blocks.0.self_attn.zz.weight"], original["head.head.bias"]
    save_file(original, str(path))
    with pytest.raises(CheckpointError, match=r"lacks tensor\(s\) 'head\.head\.bias'"):
        _load(path)


@pytest.mark.parametrize("damage", ["truncated", "missing", "empty"])
def test_damaged_file(tmp_path, state, damage):
    path = tmp_path / "damaged.safetensors"
    save_file(_original(state), str(path))
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="does not exist" if damage == "missing" else "safetensors"):
        _load(path)


def test_unsupported_quantisation_and_bad_scales(tmp_path, state):
    tensors = _lightx2v_quantised(_original(state))
    tensors["blocks.0.self_attn.q.weight_global_scale"] = torch.tensor(1.0)
    path = tmp_path / "nvfp4.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"NVFP4"):
        _load(path)
    del tensors["blocks.0.self_attn.q.weight_global_scale"]
    save_file(tensors, str(path), metadata={"_quantization_metadata": json.dumps(
        {"layers": {"blocks.0.self_attn.q": {"format": "nvfp4"}}})})
    with pytest.raises(CheckpointError, match=r"quantised as 'nvfp4'"):
        _load(path)
    tensors["blocks.0.self_attn.q.weight_scale"] = torch.ones(3)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"scale tensor 'blocks\.0\.self_attn\.q\.weight_scale'.*\[3\]"):
        _load(path)

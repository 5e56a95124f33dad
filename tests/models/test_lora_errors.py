"""Malformed LoRAs fail with one clear line naming the file and tensor, before any weight
changes; strict off skips unknown keys with a counted warning."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from safetensors.torch import save_file

from fastdit.errors import LoraError
from fastdit.models.wan import WAN_CONFIGS, WanTransformer
from fastdit.models.wan.lora import apply_loras
from tests.models.lora_helpers import ATTENTION, IMAGE_KV, block_modules, make_lora, write_lora
from tests.models.wan_helpers import I2V, T2V


@pytest.fixture
def model():
    return WanTransformer.from_config(T2V, dtype=torch.float32, seed=0)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _fails(model, files, match, **kwargs) -> str:
    before = _state(model)
    with pytest.raises(LoraError, match=match) as info:
        apply_loras(model, files, **kwargs)
    assert _unchanged(model, before), "a failed LoRA changed weights"
    message = str(info.value)
    assert "\n" not in message
    return message


def _good(tmp_path, name="good.safetensors"):
    return write_lora(tmp_path / name, make_lora(T2V, block_modules(T2V, ATTENTION), seed=1),
                      "original")


def test_unknown_key_names_key_and_file(tmp_path, model):
    tensors = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 32),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(32, 2),
               "diffusion_model.blocks.0.self_attn.zz.lora_down.weight": torch.zeros(2, 32),
               "diffusion_model.blocks.0.self_attn.zz.lora_up.weight": torch.zeros(32, 2)}
    path = tmp_path / "unknown.safetensors"
    save_file(tensors, str(path))
    message = _fails(model, [path], r"map to no parameter")
    assert "self_attn.zz" in message and str(path) in message


def test_unknown_key_with_strict_off_is_skipped_with_a_count(tmp_path, model, caplog):
    lora = make_lora(T2V, ["blocks.0.attn1.to_q"], seed=2)
    tensors = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": lora["blocks.0.attn1.to_q"]["down"],
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": lora["blocks.0.attn1.to_q"]["up"],
               "diffusion_model.blocks.0.nonsense.lora_down.weight": torch.zeros(2, 32),
               "diffusion_model.blocks.0.nonsense.lora_up.weight": torch.zeros(32, 2),
               "diffusion_model.blocks.1.what.ever": torch.zeros(3)}
    path = tmp_path / "lenient.safetensors"
    save_file(tensors, str(path))
    before = model.blocks[0].attn1.to_q.weight.clone()
    with caplog.at_level(logging.WARNING, logger="fastdit.lora"):
        result = apply_loras(model, [path], strict=False)
    assert "skipping 3 tensor(s)" in caplog.text
    assert len(result.plans[0].skipped) == 3
    assert not torch.equal(model.blocks[0].attn1.to_q.weight, before)


def test_rank_mismatch_names_both_tensors(tmp_path, model):
    path = tmp_path / "rank.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 32),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(32, 3)}, str(path))
    message = _fails(model, [path], r"rank mismatch")
    assert "self_attn.q.lora_down.weight" in message and "self_attn.q.lora_up.weight" in message


def test_shape_mismatch_names_tensor_and_parameter(tmp_path, model):
    path = tmp_path / "shape.safetensors"
    save_file({"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.zeros(4, 31),
               "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.zeros(48, 4)}, str(path))
    message = _fails(model, [path], r"do not fit the parameter 'blocks\.0\.ffn\.net\.0\.proj\.weight'")
    assert "[4, 31]" in message


def test_delta_shape_mismatch(tmp_path, model):
    path = tmp_path / "diff.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.diff_b": torch.zeros(31)}, str(path))
    _fails(model, [path], r"'diffusion_model\.blocks\.0\.self_attn\.q\.diff_b' has shape \[31\]")


def test_down_without_up(tmp_path, model):
    path = tmp_path / "half.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 32)}, str(path))
    _fails(model, [path], r"has no matching up factor")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_damaged_file(tmp_path, model, damage):
    path = _good(tmp_path)
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes({"truncated": data[: len(data) * 2 // 3], "garbage": b"\x07not safetensors" * 9,
                          "empty": b""}[damage])
    message = _fails(model, [path], "does not exist" if damage == "missing" else "cannot read LoRA file")
    assert str(path) in message


def test_no_half_applied_lora_when_a_later_file_is_bad(tmp_path, model):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    _fails(model, [_good(tmp_path), bad], "cannot read LoRA file")


def test_14b_lora_on_1_3b_model(tmp_path):
    """Real 1.3B architecture (on the meta device: only shapes are read) and a LoRA with 14B
    shapes: one line naming both sizes."""
    config = WAN_CONFIGS["Wan2.1-T2V-1.3B"]
    with torch.device("meta"):
        model = WanTransformer(config)
    path = tmp_path / "wan14b.safetensors"
    save_file({"diffusion_model.blocks.39.self_attn.q.lora_down.weight": torch.zeros(2, 5120),
               "diffusion_model.blocks.39.self_attn.q.lora_up.weight": torch.zeros(5120, 2)}, str(path))
    with pytest.raises(LoraError, match=r"is for Wan 14B / A14B \(width 5120, at least 40 blocks\); "
                                        r"this model has width 1536 and 30 blocks"):
        apply_loras(model, [path])


def test_lora_for_a_deeper_model(tmp_path, model):
    path = tmp_path / "deep.safetensors"
    save_file({"diffusion_model.blocks.5.cross_attn.k.lora_down.weight": torch.zeros(2, 32),
               "diffusion_model.blocks.5.cross_attn.k.lora_up.weight": torch.zeros(32, 2)}, str(path))
    _fails(model, [path], r"at least 6 blocks\); this model has width 32 and 2 blocks")


def test_i2v_lora_on_t2v_model_says_so(tmp_path, model):
    lora = make_lora(I2V, block_modules(dataclasses.replace(I2V, num_layers=2), ATTENTION + IMAGE_KV),
                     seed=3)
    path = write_lora(tmp_path / "i2v.safetensors", lora, "original")
    _fails(model, [path], r"k_img.*image-to-video model with CLIP input")


@pytest.mark.parametrize("suffix, variant", [(".dora_scale", "DoRA"), (".lora_mid.weight", "mid"),
                                             (".hada_w1_a", "LoHa")])
def test_unsupported_variants(tmp_path, model, suffix, variant):
    path = tmp_path / "variant.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 32),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(32, 2),
               "diffusion_model.blocks.0.self_attn.q" + suffix: torch.zeros(32)}, str(path))
    _fails(model, [path], variant)


def test_unrecognisable_keys(tmp_path, model):
    path = tmp_path / "other.safetensors"
    save_file({"unet.down.0.lora_down.weight": torch.zeros(2, 3)}, str(path))
    _fails(model, [path], r"cannot tell its format")


def test_bad_alpha_and_scale(tmp_path, model):
    path = tmp_path / "alpha.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 32),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(32, 2),
               "diffusion_model.blocks.0.self_attn.q.alpha": torch.zeros(3)}, str(path))
    _fails(model, [path], r"alpha tensor .* has shape \[3\]")
    _fails(model, [(_good(tmp_path), "strong")], r"scale must be a number")
    _fails(model, [(_good(tmp_path), float("nan"))], r"scale must be finite")
    _fails(model, [_good(tmp_path)], r"mode must be one of", mode="fused")


def test_merge_into_quantised_weights_is_refused(tmp_path, model):
    model.blocks[0].attn1.to_q.weight_scale = torch.ones(32)  # what the quant subsystem sets
    _fails(model, [_good(tmp_path)], r"cannot merge a LoRA into 'blocks\.0\.attn1\.to_q\.weight'.*runtime")

"""Wan checkpoint loading: bad checkpoints give clear errors; configs and key maps round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastdit.models.wan import (
    WAN_CONFIGS,
    CheckpointError,
    WanConfig,
    WanTransformer,
    diffusers_to_original_key,
    get_config,
    original_to_diffusers_key,
)
from tests.models.wan_helpers import I2V, T2V, diffusers_model, inputs

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture
def saved(tmp_path):
    """A tiny diffusers checkpoint: (transformer folder, its single weights file)."""
    folder = tmp_path / "transformer"
    diffusers_model(T2V).save_pretrained(folder)
    return folder, folder / WEIGHTS


def _rewrite(file, edit):
    state = load_file(str(file))
    edit(state)
    save_file(state, str(file))


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_missing_tensor(saved):
    folder, file = saved
    _rewrite(file, lambda s: s.pop("blocks.1.attn2.to_k.bias"))
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn2\.to_k\.bias") as info:
        WanTransformer.from_pretrained(folder, dtype=torch.float32)
    assert WEIGHTS in str(info.value)


def test_wrong_shape(saved):
    folder, file = saved
    _rewrite(file, lambda s: s.update({"proj_out.weight": torch.zeros(3, 3)}))
    with pytest.raises(CheckpointError, match=r"proj_out\.weight.*\[3, 3\].*expects") as info:
        WanTransformer.from_pretrained(folder, dtype=torch.float32)
    assert str(file) in str(info.value)


def test_unexpected_tensor(saved):
    folder, file = saved
    _rewrite(file, lambda s: s.update({"blocks.0.attn1.to_x.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'blocks\.0\.attn1\.to_x\.weight'") as info:
        WanTransformer.from_pretrained(folder, dtype=torch.float32)
    assert str(file) in str(info.value)


def test_ignores_norm_added_q_like_diffusers(saved):
    folder, file = saved
    _rewrite(file, lambda s: s.update({"blocks.0.attn2.norm_added_q.weight": torch.ones(32)}))
    WanTransformer.from_pretrained(folder, dtype=torch.float32)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_file(saved, damage):
    folder, file = saved
    data = file.read_bytes()
    file.write_bytes({"garbage": b"\x00not a safetensors file" * 10,
                      "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="safetensors") as info:
        WanTransformer.from_pretrained(folder, dtype=torch.float32)
    assert str(file) in str(info.value)


def test_missing_config(saved):
    folder, _ = saved
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json") as info:
        WanTransformer.from_pretrained(folder.parent, dtype=torch.float32)
    assert str(folder.parent) in str(info.value)


def test_bad_config_json(saved):
    folder, _ = saved
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        WanTransformer.from_pretrained(folder, dtype=torch.float32)


def test_unsupported_config_key(saved):
    folder, _ = saved
    raw = json.loads((folder / "config.json").read_text())
    raw["vace_layers"] = [0, 2]
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="vace_layers"):
        WanTransformer.from_pretrained(folder, dtype=torch.float32)


def test_missing_folder_and_subfolder(tmp_path, saved):
    with pytest.raises(CheckpointError, match="does not exist"):
        WanTransformer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="transformer_2"):
        WanTransformer.from_pretrained(tmp_path, subfolder="transformer_2")
    # an official Wan2.2 A14B root: the experts are in subfolders, which the error names
    saved[0].rename(tmp_path / "high_noise_model")
    with pytest.raises(CheckpointError, match=r"subfolder= one of \['high_noise_model'\]"):
        WanTransformer.from_pretrained(tmp_path)


def test_no_weights(saved):
    folder, file = saved
    file.unlink()
    with pytest.raises(CheckpointError, match="no .safetensors"):
        WanTransformer.from_pretrained(folder)


def test_index_lists_missing_shard(tmp_path):
    folder = tmp_path / "transformer"
    diffusers_model(T2V).save_pretrained(folder, max_shard_size="20KB")
    shard = sorted(folder.glob("*-of-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        WanTransformer.from_pretrained(tmp_path)


def test_index_names_tensor_not_in_its_file(tmp_path):
    folder = tmp_path / "transformer"
    diffusers_model(T2V).save_pretrained(folder, max_shard_size="20KB")
    index_file = folder / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["blocks.0.extra"] = next(iter(index["weight_map"].values()))
    index_file.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"index.*'blocks\.0\.extra'.*does not hold it"):
        WanTransformer.from_pretrained(tmp_path)


def test_original_layout_unknown_key(tmp_path):
    model = WanTransformer.from_config(T2V, dtype=torch.float32, seed=0)
    model.save_pretrained(tmp_path, layout="original")
    _rewrite(tmp_path / WEIGHTS, lambda s: s.update({"blocks.0.self_attn.qkv.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.self_attn\.qkv\.weight'"):
        WanTransformer.from_pretrained(tmp_path)


def test_original_layout_missing_tensor_uses_original_name(tmp_path):
    model = WanTransformer.from_config(T2V, dtype=torch.float32, seed=0)
    model.save_pretrained(tmp_path, layout="original")
    _rewrite(tmp_path / WEIGHTS, lambda s: s.pop("blocks.1.cross_attn.norm_k.weight"))
    with pytest.raises(CheckpointError, match=r"'blocks\.1\.cross_attn\.norm_k\.weight'"):
        WanTransformer.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------
# key map and configs
# ---------------------------------------------------------------------------------------
def test_key_map_round_trip_and_known_names():
    model = WanTransformer.from_config(dict(I2V.to_diffusers_config(), pos_embed_seq_len=514),
                                       dtype=torch.float32, device="meta")
    for name in model.state_dict():
        original = diffusers_to_original_key(name)
        assert original is not None, name
        assert original_to_diffusers_key(original) == name
    pairs = {
        "blocks.3.self_attn.q.weight": "blocks.3.attn1.to_q.weight",
        "blocks.3.self_attn.o.bias": "blocks.3.attn1.to_out.0.bias",
        "blocks.0.cross_attn.k_img.weight": "blocks.0.attn2.add_k_proj.weight",
        "blocks.0.cross_attn.norm_k_img.weight": "blocks.0.attn2.norm_added_k.weight",
        "blocks.0.norm3.weight": "blocks.0.norm2.weight",
        "blocks.0.ffn.0.weight": "blocks.0.ffn.net.0.proj.weight",
        "blocks.0.ffn.2.bias": "blocks.0.ffn.net.2.bias",
        "blocks.0.modulation": "blocks.0.scale_shift_table",
        "head.modulation": "scale_shift_table",
        "head.head.weight": "proj_out.weight",
        "patch_embedding.weight": "patch_embedding.weight",
        "text_embedding.2.bias": "condition_embedder.text_embedder.linear_2.bias",
        "time_embedding.0.weight": "condition_embedder.time_embedder.linear_1.weight",
        "time_projection.1.weight": "condition_embedder.time_proj.weight",
        "img_emb.proj.0.weight": "condition_embedder.image_embedder.norm1.weight",
        "img_emb.proj.1.weight": "condition_embedder.image_embedder.ff.net.0.proj.weight",
        "img_emb.proj.3.weight": "condition_embedder.image_embedder.ff.net.2.weight",
        "img_emb.proj.4.bias": "condition_embedder.image_embedder.norm2.bias",
        "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
    }
    for original, name in pairs.items():
        assert original_to_diffusers_key(original) == name
    assert original_to_diffusers_key("blocks.0.self_attn.qkv.weight") is None
    assert original_to_diffusers_key("freqs") is None


@pytest.mark.parametrize("name", list(WAN_CONFIGS))
def test_named_configs_build_diffusers_shapes(name):
    """Every named config gives the parameter names and shapes of diffusers' model."""
    from diffusers import WanTransformer3DModel

    config = WAN_CONFIGS[name]
    assert WanConfig.from_diffusers_config(config.to_diffusers_config()) == config
    with torch.device("meta"):
        ref = WanTransformer3DModel.from_config(config.to_diffusers_config())
    model = WanTransformer.from_config(config, device="meta")
    ours = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    assert ours == {n: tuple(t.shape) for n, t in ref.state_dict().items()}
    assert config.num_parameters() == sum(p.numel() for p in model.parameters())


def test_named_config_values():
    small, big, ti2v = (get_config(n) for n in ("Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B", "Wan2.2-TI2V-5B"))
    assert (small.dim, small.num_layers, small.ffn_dim) == (1536, 30, 8960)
    assert (big.dim, big.num_layers, big.ffn_dim) == (5120, 40, 13824)
    assert (ti2v.dim, ti2v.in_channels, ti2v.out_channels, ti2v.ffn_dim) == (3072, 48, 48, 14336)
    i2v = get_config("Wan2.1-I2V-14B-480P")
    assert (i2v.in_channels, i2v.image_dim, i2v.added_kv_proj_dim) == (36, 1280, 5120)
    a14b = get_config("Wan2.2-I2V-A14B")
    assert (a14b.in_channels, a14b.image_dim) == (36, None)
    with pytest.raises(KeyError, match="Wan2.1-T2V-1.3B"):
        get_config("Wan9")


def test_original_config_round_trip():
    for config in (T2V, I2V, get_config("Wan2.2-TI2V-5B")):
        raw = config.to_original_config()
        image = dict(image_dim=config.image_dim) if config.has_image_input else {}
        assert WanConfig.from_original_config(raw, cross_attn_norm=True, **image) == config


def test_config_validation():
    with pytest.raises(ValueError, match="image_dim and added_kv_proj_dim"):
        WanConfig(image_dim=1280)
    with pytest.raises(ValueError, match="attention_head_dim must be even"):
        WanConfig(attention_head_dim=15)
    with pytest.raises(ValueError, match="WanVACETransformer3DModel"):
        WanConfig.from_diffusers_config({"_class_name": "WanVACETransformer3DModel"})
    with pytest.raises(ValueError, match="lacks 'ffn_dim'"):
        WanConfig.from_original_config({"dim": 64, "num_heads": 4, "in_dim": 16, "num_layers": 2})


def test_from_config_dtypes_and_device():
    model = WanTransformer.from_config("Wan2.1-T2V-1.3B", dtype=torch.bfloat16, device="meta")
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["blocks.0.scale_shift_table"] == torch.float32
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert dtypes["blocks.0.norm2.weight"] == torch.float32
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["condition_embedder.time_proj.weight"] == torch.bfloat16
    assert not any(p.requires_grad for p in model.parameters())


def test_from_config_seed_is_reproducible():
    a = WanTransformer.from_config(T2V, dtype=torch.float32, seed=7)
    b = WanTransformer.from_config(T2V, dtype=torch.float32, seed=7)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert torch.isfinite(a(*inputs(T2V)[:3])).all()


# ---------------------------------------------------------------------------------------
# bad forward inputs
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    return (WanTransformer.from_config(T2V, dtype=torch.float32, seed=0),
            WanTransformer.from_config(I2V, dtype=torch.float32, seed=0))


def test_bad_inputs(models):
    t2v, i2v = models
    latents, timestep, text, _ = inputs(T2V, batch=2)
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, T, H, W\]"):
        t2v(latents[:, :3], timestep, text)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        t2v(latents[..., :5, :], timestep, text)
    with pytest.raises(ValueError, match="timestep must be"):
        t2v(latents, torch.zeros(3), text)
    with pytest.raises(ValueError, match="timestep must be"):
        t2v(latents, torch.zeros(2, 5), text)
    with pytest.raises(ValueError, match="text_embeds must be"):
        t2v(latents, timestep, text[..., :5])
    with pytest.raises(ValueError, match="no image embedder"):
        t2v(latents, timestep, text, torch.zeros(2, 257, 20))
    latents, timestep, text, image = inputs(I2V, batch=2)
    with pytest.raises(ValueError, match="needs image_embeds"):
        i2v(latents, timestep, text)
    with pytest.raises(ValueError, match="needs image_embeds"):
        i2v(latents, timestep, text, image[:1])
    with pytest.raises(ValueError, match="latents is on meta, the model on cpu"):
        i2v(latents.to("meta"), timestep, text, image)


def test_scalar_and_shared_timestep(models):
    t2v, _ = models
    latents, _, text, _ = inputs(T2V, batch=2)
    with torch.no_grad():
        a = t2v(latents, torch.tensor(500.0), text)
        b = t2v(latents, torch.tensor([500.0]), text)
        c = t2v(latents, torch.tensor([500.0, 500.0]), text)
    assert torch.equal(a, c) and torch.equal(b, c)

"""fastdit's WanTransformer against diffusers' WanTransformer3DModel, fp32 on the CPU.

Each test builds a tiny diffusers model, perturbs every parameter, saves it with
``save_pretrained`` and loads it with ``WanTransformer.from_pretrained``.
"""

from __future__ import annotations

import json

import pytest
import torch

from fastdit.models.wan import WanTransformer, diffusers_to_original_key
from tests.models.wan_helpers import (
    FLF2V,
    I2V,
    NO_CROSS_NORM,
    T2V,
    TI2V,
    diffusers_model,
    inputs,
    reference_output,
    rel_err,
)

TOL = 1e-4


def _check(tmp_path, config, *, batch=1, per_token=False, save_kwargs=None, load=None):
    ref = diffusers_model(config)
    ref.save_pretrained(tmp_path / "transformer", safe_serialization=True, **(save_kwargs or {}))
    model = (load or (lambda: WanTransformer.from_pretrained(tmp_path, dtype=torch.float32)))()
    args = inputs(config, batch=batch, per_token=per_token)
    expected = reference_output(ref, *args)
    with torch.no_grad():
        out = model(*args)
    assert out.shape == expected.shape
    assert out.dtype == torch.float32
    assert rel_err(out, expected) <= TOL
    return model, ref


def test_t2v(tmp_path):
    _check(tmp_path, T2V)


def test_t2v_batch2(tmp_path):
    _check(tmp_path, T2V, batch=2)


def test_i2v_image_tokens(tmp_path):
    _check(tmp_path, I2V, batch=2)


def test_flf2v_position_embedding(tmp_path):
    _check(tmp_path, FLF2V)


def test_ti2v_per_token_timesteps(tmp_path):
    _check(tmp_path, TI2V, batch=2, per_token=True)


def test_without_cross_attention_norm(tmp_path):
    _check(tmp_path, NO_CROSS_NORM)


@pytest.mark.parametrize("chunk", [0, 5])
def test_ffn_token_chunks(tmp_path, chunk):
    """The FFN over 5-token slices (48 tokens per row, two rows) and whole equal diffusers."""
    from fastdit.config import override_config

    with override_config(memory={"ffn_chunk_tokens": chunk}):
        _check(tmp_path, TI2V, batch=2, per_token=True)


def test_sharded_checkpoint(tmp_path):
    _check(tmp_path, T2V, save_kwargs={"max_shard_size": "20KB"})
    files = sorted(p.name for p in (tmp_path / "transformer").glob("*.safetensors"))
    assert len(files) > 2 and (tmp_path / "transformer" /
                               "diffusion_pytorch_model.safetensors.index.json").is_file()


def test_transformer_folder_path(tmp_path):
    _check(tmp_path, T2V, load=lambda: WanTransformer.from_pretrained(
        tmp_path / "transformer", dtype=torch.float32))


def test_subfolder(tmp_path):
    """Wan2.2 A14B: the second expert lives in transformer_2/."""
    ref = diffusers_model(T2V, seed=3)
    ref.save_pretrained(tmp_path / "transformer_2")
    diffusers_model(T2V, seed=4).save_pretrained(tmp_path / "transformer")
    (tmp_path / "model_index.json").write_text("{}")
    model = WanTransformer.from_pretrained(str(tmp_path), dtype=torch.float32,
                                           subfolder="transformer_2")
    args = inputs(T2V)
    with torch.no_grad():
        assert rel_err(model(*args), reference_output(ref, *args)) <= TOL


@pytest.mark.parametrize("config", [T2V, I2V], ids=["t2v", "i2v"])
def test_original_layout(tmp_path, config):
    """Official Wan key names and config.json, written through the inverse key map."""
    from safetensors.torch import save_file

    ref = diffusers_model(config)
    state = {diffusers_to_original_key(k): v.contiguous() for k, v in ref.state_dict().items()}
    assert None not in state
    assert "blocks.0.self_attn.q.weight" in state and "head.head.weight" in state
    assert "blocks.0.norm3.weight" in state and "blocks.0.modulation" in state
    if config.has_image_input:
        assert "blocks.0.cross_attn.k_img.weight" in state and "img_emb.proj.4.bias" in state
    half = len(state) // 2
    keys = list(state)
    save_file({k: state[k] for k in keys[:half]}, str(tmp_path / "part-1.safetensors"))
    save_file({k: state[k] for k in keys[half:]}, str(tmp_path / "part-2.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "model_type": "i2v" if config.has_image_input else "t2v",
        "text_len": 512, "in_dim": config.in_channels, "dim": config.dim,
        "ffn_dim": config.ffn_dim, "freq_dim": config.freq_dim, "text_dim": config.text_dim,
        "out_dim": config.out_channels, "num_heads": config.num_attention_heads,
        "num_layers": config.num_layers, "eps": 1e-6}))
    model = WanTransformer.from_pretrained(tmp_path, dtype=torch.float32)
    assert model.config == config
    args = inputs(config)
    with torch.no_grad():
        assert rel_err(model(*args), reference_output(ref, *args)) <= TOL


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_save_pretrained_round_trip(tmp_path, layout):
    model = WanTransformer.from_config(I2V, dtype=torch.float32, seed=0)
    model.save_pretrained(tmp_path, max_shard_size=30_000, layout=layout)
    loaded = WanTransformer.from_pretrained(tmp_path, dtype=torch.float32)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_state_dict_loads_into_diffusers_and_back():
    """Parameter names equal diffusers', both ways."""
    from fastdit.models.wan.reference import diffusers_reference

    model = WanTransformer.from_config(I2V, dtype=torch.float32, seed=0)
    ref = diffusers_reference(model)
    args = inputs(I2V)
    with torch.no_grad():
        assert rel_err(model(*args), reference_output(ref, *args)) <= TOL
    other = WanTransformer.from_config(I2V, dtype=torch.float32, seed=1)
    other.load_state_dict(diffusers_model(I2V).state_dict())
    assert set(other.state_dict()) == set(ref.state_dict())


def test_bf16_matches_diffusers_dtype_policy(tmp_path):
    """Loaded in bf16, the same parameters stay fp32 as in diffusers, and outputs agree."""
    from diffusers import WanTransformer3DModel

    diffusers_model(I2V).save_pretrained(tmp_path / "transformer")
    ref = WanTransformer3DModel.from_pretrained(tmp_path / "transformer", torch_dtype=torch.bfloat16)
    model = WanTransformer.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ref_dtypes = {n: p.dtype for n, p in ref.named_parameters()}
    assert {n: p.dtype for n, p in model.named_parameters()} == ref_dtypes
    assert torch.float32 in ref_dtypes.values() and torch.bfloat16 in ref_dtypes.values()
    latents, timestep, text, image = inputs(I2V)
    args = (latents.bfloat16(), timestep, text.bfloat16(), image.bfloat16())
    expected = reference_output(ref, *args)
    with torch.no_grad():
        out = model(*args)
    assert out.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(out.float().flatten(), expected.float().flatten(), 0)
    assert cos > 0.999


def test_ti2v_per_frame_timesteps_equal_per_token(tmp_path):
    """timestep [B, F] (one value per latent frame) == the per-token form diffusers takes."""
    model, ref = _check(tmp_path, TI2V, batch=2, per_token=True)
    latents, per_token, text, _ = inputs(TI2V, batch=2, per_token=True)
    frames = latents.shape[2]
    per_frame = per_token.view(2, frames, -1)[:, :, 0]  # (B, F)
    assert torch.equal(per_frame.repeat_interleave(per_token.shape[1] // frames, dim=1), per_token)
    with torch.no_grad():
        out = model(latents, per_frame, text)
        assert rel_err(out, reference_output(ref, latents, per_token, text, None)) <= TOL
        assert rel_err(out, model(latents, per_token, text)) <= 1e-6

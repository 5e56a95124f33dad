"""Tiny Wan configurations and diffusers reference models for the model tests."""

from __future__ import annotations

import dataclasses

import torch

from fastdit.models.wan import WanConfig

TEXT_LEN = 512  # diffusers' I2V attention splits image tokens off at encoder length - 512
IMAGE_TOKENS = 257

T2V = WanConfig(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                text_dim=24, freq_dim=32, ffn_dim=48, num_layers=2)
I2V = dataclasses.replace(T2V, in_channels=8, image_dim=20, added_kv_proj_dim=32, num_layers=3)
FLF2V = dataclasses.replace(I2V, pos_embed_seq_len=2 * IMAGE_TOKENS, num_layers=2)
TI2V = dataclasses.replace(T2V, in_channels=6, out_channels=6, attention_head_dim=24)
NO_CROSS_NORM = dataclasses.replace(T2V, cross_attn_norm=False)


def diffusers_model(config: WanConfig, seed: int = 0, noise: float = 0.05):
    """diffusers' WanTransformer3DModel for ``config``, fp32, with noise added to every
    parameter so that no zero- or one-initialised tensor hides a bug."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    kwargs = {k: v for k, v in config.to_diffusers_config().items() if not k.startswith("_")}
    model = WanTransformer3DModel(**kwargs).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * noise)
    return model


def inputs(config: WanConfig, batch: int = 1, frames: int = 3, height: int = 6, width: int = 8,
           text_len: int = 9, seed: int = 1, per_token: bool = False):
    """Random (latents, timestep, text_embeds, image_embeds)."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, config.in_channels, frames, height, width, generator=g)
    pt, ph, pw = config.patch_size
    tokens = (frames // pt) * (height // ph) * (width // pw)
    timestep = torch.rand(batch, generator=g) * 1000
    if per_token:  # Wan2.2 TI2V: the first latent frame is held at t = 0
        timestep = timestep[:, None].expand(batch, tokens).clone()
        timestep[:, : tokens // (frames // pt)] = 0.0
    image = None
    if config.has_image_input:
        text_len = TEXT_LEN
        images = 2 * batch if config.pos_embed_seq_len else batch
        image = torch.randn(images, IMAGE_TOKENS, config.image_dim, generator=g)
    text = torch.randn(batch, text_len, config.text_dim, generator=g)
    return latents, timestep, text, image


def reference_output(model, latents, timestep, text, image) -> torch.Tensor:
    with torch.no_grad():
        return model(latents, timestep, text, encoder_hidden_states_image=image).sample


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()

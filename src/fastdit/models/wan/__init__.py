"""The Wan transformer (Wan2.1, Wan2.2 T2V/I2V, TI2V-5B), its named configs and loading.

    from fastdit.models.wan import WanTransformer
    model = WanTransformer.from_pretrained(path, dtype=torch.bfloat16, device="cuda")
    out = model(latents, timestep, text_embeds, image_embeds=None)
"""

from fastdit.models.wan.checkpoint import (
    CheckpointError,
    diffusers_to_original_key,
    original_to_diffusers_key,
)
from fastdit.models.wan.configs import WAN_CONFIGS, WanConfig, get_config
from fastdit.models.wan.transformer import FP32_PARTS, WanBlock, WanTransformer

__all__ = [
    "FP32_PARTS",
    "CheckpointError",
    "WAN_CONFIGS",
    "WanBlock",
    "WanConfig",
    "WanTransformer",
    "diffusers_to_original_key",
    "get_config",
    "original_to_diffusers_key",
]

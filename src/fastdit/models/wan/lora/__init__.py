"""LoRA adapters for Wan transformers: every common file format, merged or at runtime.

    from fastdit.models.wan.lora import apply_loras
    apply_loras(model, [("wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors", 1.0)])

Formats (detected from the keys): original Wan / ComfyUI / LightX2V
(``diffusion_model.blocks.0.self_attn.q.lora_down.weight`` + ``lora_up.weight`` or
``lora_A``/``lora_B``, ``.alpha``, ``.diff``, ``.diff_b``, ``.diff_m``), diffusers / PEFT
(``transformer.blocks.0.attn1.to_q.lora_A.weight``, with or without the prefix, PEFT alpha
conventions from the file's metadata), musubi-tuner (``lora_unet_blocks_0_self_attn_q...``).
See ``docs/lora.md``.
"""

from fastdit.models.wan.lora.adapters import DeltaAdapter, LoraAdapter
from fastdit.models.wan.lora.apply import (
    MODES,
    LoraMerger,
    LoraResult,
    LoraSpec,
    apply_loras,
    as_spec,
    check_loras,
    loras_by_expert,
    parse_lora_arg,
    remove_lora_adapters,
)
from fastdit.models.wan.lora.names import FORMATS, ParameterNames
from fastdit.models.wan.lora.plan import LoraPlan, plan_lora

__all__ = [
    "FORMATS",
    "MODES",
    "DeltaAdapter",
    "LoraAdapter",
    "LoraMerger",
    "LoraPlan",
    "LoraResult",
    "LoraSpec",
    "ParameterNames",
    "apply_loras",
    "as_spec",
    "check_loras",
    "loras_by_expert",
    "parse_lora_arg",
    "plan_lora",
    "remove_lora_adapters",
]

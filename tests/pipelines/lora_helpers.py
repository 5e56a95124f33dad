"""Whole-pipeline LoRA / few-step references: random LoRAs for a tiny model folder, and
diffusers' pipeline with the LoRAs loaded and fused and FlowMatchEuler on fixed sigmas."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fastdit.models.wan import WanConfig
from fastdit.models.wan.checkpoint import read_json
from tests.models.lora_helpers import block_modules, make_lora, write_lora


def tiny_lora(model_path: Path, out: Path, *, subfolder: str = "transformer", layout: str = "original",
              rank: int = 4, alpha: float | None = 2.0, seed: int = 0, std: float = 0.2) -> Path:
    """A random LoRA on every block product of the tiny model's ``subfolder`` transformer."""
    config = WanConfig.from_diffusers_config(read_json(Path(model_path) / subfolder / "config.json"))
    lora = make_lora(config, block_modules(config), rank=rank, alpha=alpha, seed=seed, std=std)
    return write_lora(out, lora, layout)


def fixed_sigmas_euler(timesteps: Sequence[int], shift: float, num_train_timesteps: int = 1000):
    """diffusers' FlowMatchEulerDiscreteScheduler that always uses the sigmas ``t / T`` of
    ``timesteps`` (shifted by ``shift`` inside diffusers), whatever step count it is given."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sigmas = [t / num_train_timesteps for t in timesteps]

    class FixedSigmas(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            super().set_timesteps(device=device, sigmas=sigmas)

    return FixedSigmas(num_train_timesteps=num_train_timesteps, shift=shift)


def diffusers_few_step_frames(path: Path, *, prompt: str, seed: int, loras=(), loras_2=(),
                              timesteps=(1000, 750, 500, 250), shift: float = 5.0,
                              **kwargs) -> np.ndarray:
    """diffusers' WanPipeline (fp32, CPU) with ``loras`` (``[(file, scale)]``) loaded into
    ``transformer`` and ``loras_2`` into ``transformer_2``, fused with their scales, guidance 1,
    Euler on the fixed sigmas of ``timesteps``."""
    from diffusers import WanPipeline
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    pipe = WanPipeline.from_pretrained(str(path), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = fixed_sigmas_euler(timesteps, shift)
    for component, files in (("transformer", loras), ("transformer_2", loras_2)):
        names = []
        for i, (file, scale) in enumerate(files):
            name = f"{component}_{i}"
            pipe.load_lora_weights(str(file), adapter_name=name,
                                   load_into_transformer_2=component == "transformer_2")
            names.append((name, scale))
        if names:
            pipe.set_adapters([n for n, _ in names], [s for _, s in names])
            pipe.fuse_lora(components=[component], adapter_names=[n for n, _ in names])
    pipe.unload_lora_weights()
    generator = torch.Generator("cpu").manual_seed(seed)
    two = getattr(pipe, "transformer_2", None) is not None
    out = pipe(prompt=prompt, generator=generator, output_type="np", guidance_scale=1.0,
               num_inference_steps=len(timesteps), **({"guidance_scale_2": 1.0} if two else {}),
               **kwargs)
    return out.frames[0]

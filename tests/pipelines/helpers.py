"""Shared by tests/pipelines and tests/cli: tiny models built once per session, diffusers runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

_MODELS: dict[str, Path] = {}


def tiny_model(base: Path, task: str) -> Path:
    """The tiny random model for ``task``, built on first use (once per test session)."""
    if task not in _MODELS:
        from fastdit.pipelines.tiny import make_tiny_model

        _MODELS[task] = make_tiny_model(base / f"tiny-{task}", task=task)
    return _MODELS[task]


def sample_image(height: int = 40, width: int = 56, seed: int = 0):
    """A deterministic random RGB PIL image (not the generation size: it gets resized)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def diffusers_frames(path: Path, *, prompt: str, negative_prompt: str | None, image=None, seed: int,
                     **kwargs) -> np.ndarray:
    """The reference: diffusers' own pipeline on the same folder, fp32 on the CPU.

    Image-conditioned runs get their prompt embeddings from diffusers' ``WanPipeline.encode_prompt``:
    diffusers 0.42's ``WanImageToVideoPipeline`` calls ``ftfy`` unguarded in its prompt cleaning
    (``WanPipeline`` skips ftfy when it is not installed), and ftfy is not a dependency here.
    """
    from diffusers import WanImageToVideoPipeline, WanPipeline
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    generator = torch.Generator("cpu").manual_seed(seed)
    if image is None:
        pipe = WanPipeline.from_pretrained(str(path), torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(prompt=prompt, negative_prompt=negative_prompt, generator=generator, output_type="np",
                   **kwargs)
        return out.frames[0]
    pipe = WanImageToVideoPipeline.from_pretrained(str(path), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    text = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                       scheduler=pipe.scheduler)
    guided = kwargs.get("guidance_scale", 5.0) > 1.0
    embeds, negative = text.encode_prompt(prompt, negative_prompt, do_classifier_free_guidance=guided,
                                          max_sequence_length=kwargs.pop("max_sequence_length", 512),
                                          device=torch.device("cpu"))
    out = pipe(image=image, prompt_embeds=embeds, negative_prompt_embeds=negative, generator=generator,
               output_type="np", **kwargs)
    return out.frames[0]

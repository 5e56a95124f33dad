"""Wan video pipelines: ``load(path)`` reads a diffusers-format folder and returns a pipeline.

    import fastdit, torch
    pipe = fastdit.load("Wan2.1-T2V-1.3B-Diffusers", device="cuda", dtype=torch.bfloat16)
    result = pipe.generate("a red fox running through snow", seed=0)
    result.save("fox.mp4")

Stages live in :mod:`fastdit.pipelines.stages`, the pipeline in :mod:`fastdit.pipelines.wan`,
known models and folder checks in :mod:`fastdit.pipelines.spec`, tiny random models in
:mod:`fastdit.pipelines.tiny`. Nothing heavy is imported until it is used.
"""

from __future__ import annotations

from fastdit.pipelines.result import GenerationResult, write_video
from fastdit.pipelines.spec import (
    HUB_IDS,
    KNOWN_MODELS,
    InputError,
    ModelDefaults,
    ModelFolderError,
    ModelSpec,
    inspect_model,
)


def load(path, device=None, dtype=None, **kwargs):
    """Load a diffusers-format Wan model folder (or Hub id) as a :class:`WanVideoPipeline`.

    The task (T2V, I2V, TI2V, Wan2.2 A14B experts) comes from the folder's model_index.json.
    Keyword options are the fields of :class:`~fastdit.pipelines.loading.LoadOptions`:
    ``scheduler="unipc"|"euler"``, ``flow_shift``, ``offload="auto"|"none"|"experts"|"model"``,
    ``vae_dtype``, ``vae_tiling``, ``check_files``, ``cache`` (a step cache for every generation,
    e.g. ``"teacache:threshold=0.08"``; see docs/caching.md); LoRAs, distilled files and few-step
    sampling (docs/lora.md): ``loras=[(path, scale), ...]``, ``loras_2``,
    ``lora_mode="merge"|"runtime"``, ``lora_strict``, ``transformer=PATH``, ``transformer_2=PATH``,
    ``preset="lightx2v-4step"``, ``timesteps``, ``boundary_step``, ``parallel`` (the multi-GPU layout:
    ``"ulysses=2,cfg=2"``, a dict, a :class:`~fastdit.distributed.layout.ParallelConfig` or
    ``"auto"``; see ``docs/distributed.md``), ``quantize="none"|"fp8"`` (with per-part overrides,
    ``"fp8:attention=exact"``; docs/quantization.md).
    """
    from fastdit.pipelines.wan import WanVideoPipeline

    return WanVideoPipeline.from_pretrained(path, device=device, dtype=dtype, **kwargs)


def __getattr__(name):  # lazy: the pipeline module imports diffusers
    if name in ("WanVideoPipeline", "Request"):
        from fastdit.pipelines import wan

        return getattr(wan, name)
    if name in ("GenerationRequest", "ResolvedRequest", "resolve_request"):
        from fastdit.pipelines import request

        return getattr(request, name)
    if name in ("GenerationControl", "Progress"):
        from fastdit.pipelines import control

        return getattr(control, name)
    if name == "LoadOptions":
        from fastdit.pipelines.loading import LoadOptions

        return LoadOptions
    if name == "make_tiny_model":
        from fastdit.pipelines.tiny import make_tiny_model

        return make_tiny_model
    raise AttributeError(f"module 'fastdit.pipelines' has no attribute {name!r}")


__all__ = [
    "GenerationControl",
    "GenerationRequest",
    "GenerationResult",
    "HUB_IDS",
    "InputError",
    "KNOWN_MODELS",
    "LoadOptions",
    "ModelDefaults",
    "ModelFolderError",
    "ModelSpec",
    "Progress",
    "ResolvedRequest",
    "WanVideoPipeline",
    "inspect_model",
    "load",
    "make_tiny_model",
    "resolve_request",
    "write_video",
]

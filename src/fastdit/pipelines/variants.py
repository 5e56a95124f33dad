"""What the load options change in a base model, checked before anything heavy loads:
a few-step schedule (``preset`` / ``timesteps``), distilled transformer files
(``transformer`` / ``transformer_2``) and LoRAs (``loras`` / ``loras_2``).

    spec, variant = plan_variant(spec, options)   # headers only; one-line UserError on a problem
    ...                                            # tokenizer, text encoder, VAE
    model, result = load_expert(spec, variant.experts[0], device, dtype)   # in loading.py

:func:`plan_variant` reads JSON and safetensors headers only: an unknown preset, bad
timesteps, a transformer file that does not fit the base model's config, or a LoRA that does
not fit it (unknown keys, ranks, shapes, another model size) fail here, before the text
encoder loads and long before denoising.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastdit.errors import InputError
from fastdit.pipelines.spec import KNOWN_MODELS, ModelSpec, read_json

log = logging.getLogger("fastdit.pipelines")

EXPERTS = ("transformer", "transformer_2")


@dataclass
class ExpertWeights:
    """How one transformer of the pipeline is built: from the folder's ``subfolder`` or a
    single file, then the LoRAs (already checked against its config)."""

    subfolder: str  # "transformer" or "transformer_2"
    config: Any = None  # WanConfig (read only when a file or LoRAs need checking)
    file: Any = None  # a checked TransformerFile, or None: the folder's weights
    loras: list = field(default_factory=list)  # [LoraSpec]
    plans: list = field(default_factory=list)  # [LoraPlan], one per LoRA
    mode: str = "merge"
    strict: bool = True

    def settings(self) -> dict[str, Any]:
        return {"transformer": self.subfolder,
                "file": None if self.file is None else str(self.file.path),
                "loras": [{"path": str(s.path), "scale": s.scale, "format": p.format,
                           "skipped_keys": len(p.skipped)} for s, p in zip(self.loras, self.plans)],
                "lora_mode": self.mode if self.loras else None}


@dataclass
class Variant:
    """The few-step schedule and the per-expert weights of a pipeline."""

    few_step: Any = None  # FewStep or None
    experts: list[ExpertWeights] = field(default_factory=list)

    def expert(self, subfolder: str) -> ExpertWeights | None:
        return next((e for e in self.experts if e.subfolder == subfolder), None)

    def summary(self) -> list[str]:
        """One line per change from the base model, for logs and the CLI's summary."""
        lines = []
        two = len(self.experts) > 1
        for e in self.experts:
            who = {"transformer": "high-noise expert", "transformer_2": "low-noise expert"}[e.subfolder] \
                if two else "transformer"
            if e.file is not None:
                lines.append(f"{who}: {e.file.path.name}")
            if e.loras:
                files = ", ".join(f"{Path(s.path).name} x{s.scale:g}" for s in e.loras)
                lines.append(f"LoRA ({e.mode}) on the {who}: {files}")
        if self.few_step is not None:
            lines.append(f"sampler: {self.few_step.describe()}")
        return lines


def plan_variant(spec: ModelSpec, options) -> tuple[ModelSpec, Variant]:
    """``(spec with the few-step defaults, Variant)`` for :class:`~.loading.LoadOptions`
    ``options``; raises a one-line :class:`~fastdit.errors.UserError` (``InputError``,
    ``CheckpointError``, ``LoraError``) for anything that does not fit."""
    from fastdit.models.wan.lora import loras_by_expert
    from fastdit.schedulers.presets import resolve_few_step

    two = spec.two_experts
    few = resolve_few_step(options.preset, options.timesteps, options.flow_shift, options.boundary_step,
                           two_experts=two)
    spec = with_few_step(spec, few)
    if options.transformer_2 is not None and not two:
        raise InputError(f"transformer_2 ({options.transformer_2}) is for two-expert models (Wan2.2 "
                         f"A14B); {spec.name or 'this model'} has one transformer")
    firsts, seconds = loras_by_expert(options.loras, options.loras_2, two_experts=two)
    variant = Variant(few_step=few)
    for subfolder, file, loras in (("transformer", options.transformer, firsts),
                                   ("transformer_2", options.transformer_2, seconds)):
        if subfolder == "transformer_2" and not two:
            continue
        variant.experts.append(_plan_expert(spec, subfolder, file, loras, options))
    _hints(spec, variant, options)
    return spec, variant


def with_few_step(spec: ModelSpec, few) -> ModelSpec:
    """A copy of ``spec`` whose defaults run the few-step schedule ``few`` (its step count, its
    guidance for both experts); ``spec`` itself when ``few`` is None."""
    if few is None:
        return spec
    d = spec.defaults
    defaults = dataclasses.replace(
        d, num_inference_steps=few.num_inference_steps, guidance_scale=few.guidance_scale,
        guidance_scale_2=few.guidance_scale if spec.two_experts else d.guidance_scale_2, few_step=few)
    return dataclasses.replace(spec, defaults=defaults)


def expert_config(spec: ModelSpec, subfolder: str):
    """The :class:`~fastdit.models.wan.WanConfig` of the folder's ``subfolder`` transformer
    (its config.json; an in-memory spec's transformer config for both experts)."""
    from fastdit.models.wan.checkpoint import resolve_config

    raw = spec.transformer_config
    path = spec.root / subfolder / "config.json"
    if subfolder != "transformer" and path.is_file():
        raw = read_json(path)
    return resolve_config(dict(raw))


def _plan_expert(spec: ModelSpec, subfolder: str, file, loras, options) -> ExpertWeights:
    from fastdit.models.wan.single_file import check_transformer_file

    if file is None and not loras:  # the folder's weights as they are: nothing to check here
        return ExpertWeights(subfolder, None, mode=options.lora_mode, strict=options.lora_strict)
    config = expert_config(spec, subfolder)
    checked = check_transformer_file(file, config) if file is not None else None
    plans = []
    if loras:
        import torch

        from fastdit.models.wan import WanTransformer
        from fastdit.models.wan.lora import check_loras

        with torch.device("meta"):
            shape_model = WanTransformer(config)  # parameter names and shapes, no memory
        plans = check_loras(shape_model, loras, mode=options.lora_mode, strict=options.lora_strict)
    return ExpertWeights(subfolder, config, checked, list(loras), plans, options.lora_mode,
                         options.lora_strict)


def _hints(spec: ModelSpec, variant: Variant, options) -> None:
    """Say when a file is published for a preset that is not on, or a preset is used on a
    model it has no published files for."""
    from fastdit.schedulers.presets import get_preset, recipes_for_file

    if variant.few_step is None:
        for e in variant.experts:
            for path in [s.path for s in e.loras] + ([e.file.path] if e.file is not None else []):
                for preset, recipe in recipes_for_file(path)[:1]:
                    log.warning("%s is published for the %s preset (%s); without preset=%r (CLI: "
                                "--preset %s) the model's own %d-step schedule with guidance %g runs",
                                Path(path).name, preset.name, recipe.repo, preset.name, preset.name,
                                spec.defaults.num_inference_steps, spec.defaults.guidance_scale)
    elif variant.few_step.preset and spec.name in KNOWN_MODELS:
        preset = get_preset(variant.few_step.preset)
        if not preset.recipe_for(spec.name):
            models = sorted({r.model for r in preset.recipes})
            log.warning("preset %s is published for %s, not for %s: it only helps with weights "
                        "distilled for it", preset.name, ", ".join(models), spec.name)

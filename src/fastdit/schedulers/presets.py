"""Named few-step presets: the settings a step-distilled Wan model was trained for, and the
files (LoRAs, distilled transformers) that go with each base model.

    preset = get_preset("lightx2v-4step")
    scheduler = preset.scheduler(two_experts=True)   # FewStepScheduler, boundary at step 2
    recipe = preset.recipe_for("Wan2.2-I2V-A14B")

Sources: LightX2V's configs (``configs/distill/wan21/*_4step_cfg.json``,
``configs/distill/wan22/wan_moe_*_distill_*.json``: ``denoising_step_list [1000, 750, 500,
250]``, ``sample_shift 5``, ``enable_cfg false``, ``boundary_step_index 2``) and model cards
(lightx2v/Wan2.1-Distill-Loras, Wan2.1-Distill-Models, Wan2.2-Distill-Loras,
Wan2.2-Distill-Models); Wan2.2-Lightning's configs (``sample_steps 4``, ``sample_shift 5``,
``sample_guide_scale (1, 1)``, Euler, expert switch at t >= 875 (T2V) / 900 (I2V), which for
this schedule, timesteps 1000, 937.5, 833.3, 625, is the switch at step 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastdit.errors import InputError
from fastdit.schedulers.few_step import DEFAULT_TIMESTEPS, FewStepScheduler, parse_timesteps, positive_shift


@dataclass(frozen=True)
class FewStepRecipe:
    """The files of a distilled variant of one base model (names as published)."""

    model: str  # the base model, a name in fastdit.models.wan.WAN_CONFIGS
    repo: str  # the Hugging Face repository holding the files
    lora: str | None = None  # for ``transformer`` (Wan2.2 A14B: the high-noise expert)
    lora_2: str | None = None  # Wan2.2 A14B: for ``transformer_2`` (low noise)
    transformer: str | None = None  # a full distilled transformer (single file)
    transformer_2: str | None = None


@dataclass(frozen=True)
class FewStepPreset:
    """A few-step schedule: timesteps, shift, guidance off, the expert switch."""

    name: str
    description: str
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    flow_shift: float = 5.0
    guidance_scale: float = 1.0  # 1: guidance off, one forward per step
    boundary_step: int | None = 2  # two-expert models: first step of the low-noise expert
    recipes: tuple[FewStepRecipe, ...] = ()

    @property
    def num_inference_steps(self) -> int:
        return len(self.timesteps)

    def schedule(self, two_experts: bool = False) -> "FewStep":
        """This preset's schedule as a :class:`FewStep` (the expert switch only for two experts)."""
        return FewStep(self.timesteps, self.flow_shift, self.boundary_step if two_experts else None,
                       self.name, self.guidance_scale)

    def scheduler(self, two_experts: bool = False) -> FewStepScheduler:
        return self.schedule(two_experts).scheduler()

    def recipe_for(self, model: str | None) -> list[FewStepRecipe]:
        return [r for r in self.recipes if r.model == model]


_W21_LORAS = "lightx2v/Wan2.1-Distill-Loras"
_W21_MODELS = "lightx2v/Wan2.1-Distill-Models"
_W22_LORAS = "lightx2v/Wan2.2-Distill-Loras"
_W22_MODELS = "lightx2v/Wan2.2-Distill-Models"
_LIGHTNING = "lightx2v/Wan2.2-Lightning"

PRESETS: dict[str, FewStepPreset] = {
    "lightx2v-4step": FewStepPreset(
        name="lightx2v-4step",
        description="LightX2V step- and CFG-distilled Wan2.1/Wan2.2 14B: 4 steps, shift 5, no "
                    "guidance, A14B experts switch at step 2",
        recipes=(
            FewStepRecipe("Wan2.1-T2V-14B", _W21_LORAS,
                          lora="wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"),
            FewStepRecipe("Wan2.1-T2V-14B", _W21_MODELS,
                          transformer="wan2.1_t2v_14b_lightx2v_4step.safetensors"),
            FewStepRecipe("Wan2.1-T2V-14B", _W21_MODELS,
                          transformer="wan2.1_t2v_14b_scaled_fp8_e4m3_lightx2v_4step.safetensors"),
            FewStepRecipe("Wan2.1-I2V-14B-480P", _W21_LORAS,
                          lora="wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors"),
            FewStepRecipe("Wan2.1-I2V-14B-480P", _W21_MODELS,
                          transformer="wan2.1_i2v_480p_lightx2v_4step.safetensors"),
            FewStepRecipe("Wan2.1-I2V-14B-480P", _W21_MODELS,
                          transformer="wan2.1_i2v_480p_scaled_fp8_e4m3_lightx2v_4step.safetensors"),
            FewStepRecipe("Wan2.1-I2V-14B-720P", _W21_MODELS,
                          transformer="wan2.1_i2v_720p_lightx2v_4step.safetensors"),
            FewStepRecipe("Wan2.2-T2V-A14B", _W22_LORAS,
                          lora="wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors",
                          lora_2="wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors"),
            FewStepRecipe("Wan2.2-I2V-A14B", _W22_LORAS,
                          lora="wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors",
                          lora_2="wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"),
            FewStepRecipe("Wan2.2-I2V-A14B", _W22_MODELS,
                          transformer="wan2.2_i2v_A14b_high_noise_lightx2v_4step.safetensors",
                          transformer_2="wan2.2_i2v_A14b_low_noise_lightx2v_4step.safetensors"),
            FewStepRecipe("Wan2.2-I2V-A14B", _W22_MODELS,
                          transformer="wan2.2_i2v_A14b_high_noise_scaled_fp8_e4m3_lightx2v_4step.safetensors",
                          transformer_2="wan2.2_i2v_A14b_low_noise_scaled_fp8_e4m3_lightx2v_4step.safetensors"),
        )),
    "lightning-4step": FewStepPreset(
        name="lightning-4step",
        description="Wan2.2-Lightning (A14B) 4-step LoRAs: 4 steps, shift 5, no guidance, "
                    "Euler, experts switch at step 2",
        recipes=(
            FewStepRecipe("Wan2.2-T2V-A14B", _LIGHTNING,
                          lora="Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/high_noise_model.safetensors",
                          lora_2="Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/low_noise_model.safetensors"),
            FewStepRecipe("Wan2.2-I2V-A14B", _LIGHTNING,
                          lora="Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1/high_noise_model.safetensors",
                          lora_2="Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1/low_noise_model.safetensors"),
        )),
}


def get_preset(name: str) -> FewStepPreset:
    """A preset by name; the error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown few-step preset {name!r}; known: {', '.join(PRESETS)}") from None


#: LightX2V's shift, used for explicit timesteps when nothing else gives one
DEFAULT_FEW_STEP_SHIFT = 5.0


@dataclass(frozen=True)
class FewStep:
    """A resolved few-step schedule (plain data; :meth:`scheduler` builds the sampler).

    ``boundary_step``: for two experts, the index of the first step the low-noise expert runs
    (None for one transformer); ``preset``: the preset it came from, if any; ``guidance_scale``:
    the guidance the schedule is meant for (1: off)."""

    timesteps: tuple[int, ...]
    flow_shift: float
    boundary_step: int | None = None
    preset: str | None = None
    guidance_scale: float = 1.0

    @property
    def num_inference_steps(self) -> int:
        return len(self.timesteps)

    def scheduler(self, num_train_timesteps: int = 1000) -> FewStepScheduler:
        return FewStepScheduler(self.timesteps, self.flow_shift, num_train_timesteps,
                                boundary_step=self.boundary_step)

    def describe(self) -> str:
        what = f"preset {self.preset}: " if self.preset else ""
        switch = f", experts switch at step {self.boundary_step}" if self.boundary_step else ""
        return (f"{what}few-step Euler, timesteps {','.join(map(str, self.timesteps))}, "
                f"shift {self.flow_shift:g}{switch}")


def preset_schedule(name: str, two_experts: bool = False) -> FewStep:
    """A preset's schedule as a :class:`FewStep`."""
    return get_preset(name).schedule(two_experts)


def resolve_few_step(preset: str | FewStep | None = None, timesteps=None, flow_shift=None,
                     boundary_step=None, *, two_experts: bool = False) -> FewStep | None:
    """The few-step schedule of ``preset`` / ``timesteps`` / ``flow_shift`` / ``boundary_step``:
    the preset's values (a name, or an already resolved :class:`FewStep`), each overridden by
    an explicit one; None when neither a preset nor timesteps are given (the model's own
    scheduler then runs, and ``flow_shift`` is its shift). Without a preset the shift is 5
    (LightX2V's) and, for two experts, the switch halfway through the list (LightX2V: step 2
    of 4); explicit timesteps that differ from the preset's get the halfway switch too.
    ``boundary_step`` is an error on a one-transformer model. Raises :class:`InputError`."""
    if preset is None and timesteps is None:
        if boundary_step is not None:
            raise InputError("boundary_step needs a few-step schedule (a preset or timesteps)", field="boundary_step")
        return None
    if boundary_step is not None and not two_experts:
        raise InputError("boundary_step is only for two-expert models (Wan2.2 A14B)", field="boundary_step")
    base = preset_schedule(preset, two_experts) if isinstance(preset, str) else preset
    steps = parse_timesteps(timesteps) if timesteps is not None else base.timesteps
    same = base is not None and steps == base.timesteps
    shift = positive_shift(flow_shift if flow_shift is not None else
                   base.flow_shift if base is not None else DEFAULT_FEW_STEP_SHIFT)
    if not two_experts:
        boundary_step = None
    elif boundary_step is None:
        boundary_step = base.boundary_step if same else len(steps) // 2 or None
    elif isinstance(boundary_step, bool) or not isinstance(boundary_step, int) or not (
            0 < boundary_step < len(steps)):
        raise InputError(f"boundary_step must be an integer in 1..{len(steps) - 1} (the first step "
                         f"of the low-noise expert) for {len(steps)} timesteps, got {boundary_step!r}",
                         field="boundary_step")
    return FewStep(steps, shift, boundary_step, base.preset if same else None,
                   base.guidance_scale if base is not None else 1.0)


def recipes_for_file(path) -> list[tuple[FewStepPreset, FewStepRecipe]]:
    """The (preset, recipe) pairs that publish a file of this name (a LoRA or a distilled
    transformer), matched on the file name: for hints when no preset is given."""
    from pathlib import PurePath

    given = PurePath(str(path))
    out = []
    for preset in PRESETS.values():
        for recipe in preset.recipes:
            files = [PurePath(f) for f in (recipe.lora, recipe.lora_2, recipe.transformer,
                                           recipe.transformer_2) if f]
            # generic names (Lightning's high_noise_model.safetensors) count with their folder
            if any(f.name == given.name and (f.parent.name in ("", given.parent.name)) for f in files):
                out.append((preset, recipe))
    return out

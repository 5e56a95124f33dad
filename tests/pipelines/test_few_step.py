"""The few-step Euler schedule against a float64 reference of its formulas, LightX2V's float32
computation and diffusers' FlowMatchEulerDiscreteScheduler with explicit sigmas; the denoise
stage drives it (and its expert switch) through the pipeline's scheduler interface."""

from __future__ import annotations

import pytest
import torch

from fastdit.errors import InputError
from fastdit.models.wan import WAN_CONFIGS
from fastdit.pipelines import stages
from fastdit.schedulers.few_step import FewStepScheduler, parse_timesteps
from fastdit.schedulers.presets import PRESETS, get_preset

T = 1000


def _reference_sigmas(timesteps, shift):
    """float64: base[T - t] of linspace(1, 0, T + 1) is t / T; then the shift."""
    out = []
    for t in timesteps:
        b = t / T
        out.append(shift * b / (1 + (shift - 1) * b))
    return out


def _lightx2v_sigmas(timesteps, shift):
    """LightX2V's WanStepDistillScheduler.set_denoising_timesteps, float32 torch."""
    sigmas = torch.linspace(1.0, 0.0, T + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    index = [T - t for t in timesteps]
    return sigmas[index], (sigmas * T)[index]


def _model(x: torch.Tensor, t: float) -> torch.Tensor:
    """A deterministic stand-in for the transformer's flow prediction."""
    return torch.tanh(x * 0.7 + t / T) - 0.2 * x


@pytest.mark.parametrize("timesteps, shift", [((1000, 750, 500, 250), 5.0), ((1000, 757, 522), 8.0),
                                              ((999, 500, 1), 3.0), ((1000,), 1.0)])
def test_sigmas_and_timesteps_equal_the_formulas(timesteps, shift):
    sched = FewStepScheduler(timesteps, shift)
    sched.set_timesteps(len(timesteps))
    ref = torch.tensor(_reference_sigmas(timesteps, shift), dtype=torch.float64)
    assert torch.allclose(torch.tensor(sched.sigmas[:-1], dtype=torch.float64), ref, rtol=1.2e-7, atol=0)
    assert sched.sigmas[-1] == 0.0
    assert sched.timesteps.dtype == torch.float32
    assert torch.allclose(sched.timesteps.double(), ref * T, rtol=1.2e-7, atol=0)
    lx_sigmas, lx_timesteps = _lightx2v_sigmas(timesteps, shift)
    assert torch.allclose(torch.tensor(sched.sigmas[:-1]), lx_sigmas, rtol=0, atol=2e-7)
    assert torch.allclose(sched.timesteps, lx_timesteps, rtol=0, atol=1e-4)


def test_default_schedule_values():
    sched = FewStepScheduler()
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == pytest.approx([1000.0, 937.5, 833.3333, 625.0], rel=1e-6)


def _run(sched, x, steps):
    sched.set_timesteps(steps)
    sched.set_begin_index(0)
    for t in sched.timesteps:
        x = sched.step(_model(x, float(t)), t, x, return_dict=False)[0]
    return x


def test_steps_equal_a_float64_reference():
    timesteps, shift = (1000, 750, 500, 250), 5.0
    x0 = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    ours = _run(FewStepScheduler(timesteps, shift), x0.clone(), 4)
    sigmas = _reference_sigmas(timesteps, shift) + [0.0]
    x = x0.double()
    for i, t in enumerate(timesteps):
        v = _model(x.float(), sigmas[i] * T).double()
        clean = x - sigmas[i] * v
        x = clean if i == len(timesteps) - 1 else clean + sigmas[i + 1] * v
    assert ours.dtype == torch.float32
    assert torch.allclose(ours.double(), x, rtol=0, atol=2e-6)


def test_equal_to_diffusers_flow_match_euler_with_explicit_sigmas():
    from diffusers import FlowMatchEulerDiscreteScheduler

    timesteps, shift = (1000, 750, 500, 250), 5.0
    theirs = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    theirs.set_timesteps(sigmas=[t / T for t in timesteps])  # diffusers applies the shift
    ours = FewStepScheduler(timesteps, shift)
    ours.set_timesteps(4)
    assert torch.allclose(ours.timesteps, theirs.timesteps, rtol=0, atol=1e-4)
    assert torch.allclose(torch.tensor(ours.sigmas), theirs.sigmas, rtol=0, atol=1e-7)
    x0 = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    x_ours, x_theirs = x0.clone(), x0.clone()
    for t_ours, t_theirs in zip(ours.timesteps, theirs.timesteps):
        x_ours = ours.step(_model(x_ours, float(t_ours)), t_ours, x_ours)[0]
        x_theirs = theirs.step(_model(x_theirs, float(t_theirs)), t_theirs, x_theirs, return_dict=False)[0]
    assert torch.allclose(x_ours, x_theirs, rtol=0, atol=2e-6)


def test_denoise_stage_drives_it_and_switches_experts_at_the_boundary_step():
    sched = FewStepScheduler(boundary_step=2)
    calls = []

    def expert(index):
        def run(x, t, text, image):
            calls.append((index, float(t[0])))
            return _model(x, float(t[0]))
        return run

    latents = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    texts = [torch.zeros(1, 3, 8)]
    out = stages.denoise(latents.clone(), sched, 4, [stages.Expert(expert(0)), stages.Expert(expert(1))],
                         texts, dtype=torch.float32, boundary_timestep=sched.boundary_timestep)
    assert [c[0] for c in calls] == [0, 0, 1, 1]
    assert [sched.expert_for_step(i) for i in range(4)] == [0, 0, 1, 1]
    assert [c[1] for c in calls] == pytest.approx([1000.0, 937.5, 833.3333, 625.0], rel=1e-6)
    assert torch.equal(out, _run(FewStepScheduler(), latents.clone(), 4))


def test_lightning_timestep_boundaries_are_the_step_2_switch():
    """Wan2.2-Lightning switches experts at t >= 875 (T2V) / 900 (I2V): the same split."""
    sched = FewStepScheduler(boundary_step=2)
    sched.set_timesteps(4)
    for ratio in (0.875, 0.9):
        split = [0 if float(t) >= ratio * T else 1 for t in sched.timesteps]
        assert split == [sched.expert_for_step(i) for i in range(4)]


# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, match", [("1000,abc", "integers separated"), ("1000,750.5", "integers"),
                                         ("1000,1000", "strictly decreasing"), ("250,500", "strictly"),
                                         ("1001,500", r"1\.\.1000"), ("0", r"1\.\.1000"), ("", "integers")])
def test_bad_timesteps(text, match):
    with pytest.raises(InputError, match=match):
        parse_timesteps(text)


def test_bad_settings():
    with pytest.raises(InputError, match="flow_shift must be a positive"):
        FewStepScheduler(flow_shift=0)
    with pytest.raises(InputError, match=r"boundary_step must be an integer in 1\.\.3"):
        FewStepScheduler(boundary_step=4)
    sched = FewStepScheduler()
    with pytest.raises(InputError, match="has 4 steps"):
        sched.set_timesteps(50)
    with pytest.raises(ValueError, match="set_timesteps first"):
        FewStepScheduler().step(torch.zeros(1), 1000.0, torch.zeros(1))
    assert parse_timesteps("1000, 750,500 ,250") == (1000, 750, 500, 250)


def test_presets():
    preset = get_preset("lightx2v-4step")
    assert (preset.timesteps, preset.flow_shift, preset.guidance_scale) == ((1000, 750, 500, 250), 5.0, 1.0)
    assert preset.scheduler().boundary_timestep is None
    assert preset.scheduler(two_experts=True).boundary_timestep == 937.5
    for p in PRESETS.values():
        for recipe in p.recipes:
            assert recipe.model in WAN_CONFIGS
            assert (recipe.lora or recipe.transformer or "").endswith(".safetensors")
            if recipe.model.startswith("Wan2.2") and (recipe.lora or recipe.transformer_2):
                assert bool(recipe.lora) == bool(recipe.lora_2)
    assert get_preset("lightning-4step").recipe_for("Wan2.2-T2V-A14B")[0].lora_2.endswith(
        "low_noise_model.safetensors")
    with pytest.raises(InputError, match="known: lightx2v-4step, lightning-4step"):
        get_preset("turbo")


def test_resolve_few_step():
    from fastdit.schedulers.presets import FewStep, resolve_few_step

    assert resolve_few_step() is None
    assert resolve_few_step(flow_shift=3.0) is None  # a shift alone is the model scheduler's
    settings = resolve_few_step("lightx2v-4step", two_experts=True)
    assert settings == FewStep((1000, 750, 500, 250), 5.0, 2, "lightx2v-4step", 1.0)
    assert settings.scheduler().boundary_timestep == 937.5
    assert resolve_few_step("lightx2v-4step").boundary_step is None
    custom = resolve_few_step(timesteps="1000,500", flow_shift=3, boundary_step=1, two_experts=True)
    assert (custom.timesteps, custom.flow_shift, custom.boundary_step, custom.preset) == ((1000, 500), 3.0, 1, None)
    assert custom.scheduler().config.timesteps == (1000, 500)
    assert resolve_few_step("lightning-4step", flow_shift=8).flow_shift == 8.0
    assert resolve_few_step(timesteps=[1000, 800, 600, 400, 200, 100], two_experts=True).boundary_step == 3
    assert resolve_few_step(timesteps="1000", two_experts=True).boundary_step is None
    # a resolved schedule as the base: a request overriding some of its values
    assert resolve_few_step(settings, flow_shift=7.0, two_experts=True) == FewStep(
        (1000, 750, 500, 250), 7.0, 2, "lightx2v-4step", 1.0)
    assert resolve_few_step(settings, timesteps=[1000, 500], two_experts=True).boundary_step == 1
    with pytest.raises(InputError, match="only for two-expert"):
        resolve_few_step("lightx2v-4step", boundary_step=2)
    with pytest.raises(InputError, match="needs a few-step schedule"):
        resolve_few_step(boundary_step=2, two_experts=True)
    with pytest.raises(InputError, match=r"integer in 1\.\.3"):
        resolve_few_step("lightx2v-4step", boundary_step=True, two_experts=True)


def test_recipes_for_file():
    from fastdit.schedulers.presets import recipes_for_file

    [(preset, recipe)] = recipes_for_file("/m/wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors")
    assert preset.name == "lightx2v-4step" and recipe.model == "Wan2.1-T2V-14B"
    lightning = recipes_for_file("x/Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/high_noise_model.safetensors")
    assert [(p.name, r.model) for p, r in lightning] == [("lightning-4step", "Wan2.2-T2V-A14B")]
    assert recipes_for_file("my/high_noise_model.safetensors") == []  # a generic name alone

"""End to end through the public API: ``fastdit.load(..., loras=..., preset=...)`` against
diffusers' pipeline with the same LoRAs loaded and fused and FlowMatchEuler on the same sigmas
(guidance 1), and against fastdit's own pieces set up by hand (``apply_loras`` +
``FewStepScheduler``).

The tiny A14B model's boundary_ratio 0.875 splits the schedule 1000, 937.5 | 833.3, 625 exactly
where ``boundary_step=2`` does, so both pipelines switch experts at step 2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastdit
from fastdit.models.wan.lora import apply_loras
from fastdit.schedulers.few_step import FewStepScheduler
from tests.pipelines.lora_helpers import diffusers_few_step_frames, tiny_lora

ATOL = 2e-3
STRICT = 1e-4
PROMPT = "a small robot walks on the moon at night"
SETTINGS = dict(height=32, width=32, num_frames=5, max_sequence_length=32)


def _loras(path, tmp_path, task):
    loras = [(tiny_lora(path, tmp_path / "a.safetensors", seed=1), 0.9),
             (tiny_lora(path, tmp_path / "b.safetensors", layout="diffusers", alpha=None, seed=2), 0.6)]
    loras_2 = []
    if task == "a14b":
        loras_2 = [(tiny_lora(path, tmp_path / "low.safetensors", subfolder="transformer_2", seed=3), 1.0)]
    return loras, loras_2


def _max_diff(a, b) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


@pytest.mark.parametrize("task", ["t2v", "a14b"])
def test_api_lora_preset_frames_equal_diffusers(tiny_model, tmp_path, task):
    path = tiny_model(task)
    loras, loras_2 = _loras(path, tmp_path, task)
    # the second expert's LoRA as a "low:PATH:SCALE" string, the first's as (path, scale)
    options = dict(loras=loras + [f"low:{p}:{s}" for p, s in loras_2]) if task == "a14b" else dict(loras=loras)
    pipe = fastdit.load(path, device="cpu", dtype=torch.float32, preset="lightx2v-4step", **options)
    result = pipe.generate(PROMPT, seed=3, **SETTINGS)
    assert result.settings["num_inference_steps"] == 4
    assert result.settings["guidance"] == ["NoGuidance()"] * (2 if task == "a14b" else 1)
    assert "lightx2v-4step" in result.settings["sampler"]
    assert [len(w["loras"]) for w in result.settings["weights"]] == ([2, 1] if task == "a14b" else [2])
    theirs = diffusers_few_step_frames(path, prompt=PROMPT, seed=3, loras=loras, loras_2=loras_2, **SETTINGS)
    err = _max_diff(result.frames, theirs)
    assert err <= STRICT <= ATOL, f"max frame difference {err:.3g}"
    if task == "t2v":  # the LoRAs do change the video (one extra run, on the cheaper model)
        plain = diffusers_few_step_frames(path, prompt=PROMPT, seed=3, **SETTINGS)
        assert _max_diff(plain, theirs) > 100 * STRICT


def _by_hand(path, loras, loras_2=(), boundary_step=None, **kwargs):
    """fastdit's pieces set up by hand: apply_loras on the loaded transformers, a
    FewStepScheduler as the pipeline's scheduler, guidance 1."""
    pipe = fastdit.load(path, device="cpu", dtype=torch.float32)
    apply_loras(pipe.transformer, loras)
    if loras_2:
        apply_loras(pipe.transformer_2, loras_2)
    pipe.scheduler = FewStepScheduler((1000, 750, 500, 250), 5.0, boundary_step=boundary_step)
    two = pipe.transformer_2 is not None
    return pipe.generate(PROMPT, seed=3, num_inference_steps=4, guidance_scale=1.0,
                         **({"guidance_scale_2": 1.0} if two else {}), **SETTINGS, **kwargs).frames


def test_api_equals_the_pieces_by_hand_and_runtime_equals_merge(tiny_model, tmp_path):
    path = tiny_model("a14b")
    loras, loras_2 = _loras(path, tmp_path, "a14b")
    expected = _by_hand(path, loras, loras_2, boundary_step=2)
    merged = fastdit.load(path, device="cpu", dtype=torch.float32, loras=loras, loras_2=loras_2,
                          preset="lightx2v-4step").generate(PROMPT, seed=3, **SETTINGS).frames
    assert np.array_equal(merged, expected)
    runtime = fastdit.load(path, device="cpu", dtype=torch.float32, loras=loras, loras_2=loras_2,
                           preset="lightx2v-4step", lora_mode="runtime")
    assert runtime.transformer.blocks[0].ffn.net[0].proj.adapters  # the weights were left alone
    frames = runtime.generate(PROMPT, seed=3, **SETTINGS).frames
    assert _max_diff(frames, expected) <= STRICT


def test_timesteps_per_generation_and_at_load(tiny_model):
    """A request's timesteps/flow_shift/boundary_step override the pipeline's for one
    generation; the same values given at load give the same frames."""
    path = tiny_model("a14b")
    plain = fastdit.load(path, device="cpu", dtype=torch.float32)
    custom = dict(timesteps=[1000, 800, 400], flow_shift=3.0, boundary_step=1)
    per_request = plain.generate(PROMPT, seed=3, **SETTINGS, **custom)
    assert per_request.settings["num_inference_steps"] == 3
    assert per_request.settings["guidance"] == ["NoGuidance()", "NoGuidance()"]  # few-step: off
    at_load = fastdit.load(path, device="cpu", dtype=torch.float32, timesteps="1000,800,400",
                           flow_shift=3.0, boundary_step=1)
    assert np.array_equal(at_load.generate(PROMPT, seed=3, **SETTINGS).frames, per_request.frames)
    # the model's own schedule is back for the next request
    default = plain.generate(PROMPT, seed=3, num_inference_steps=2, **SETTINGS)
    assert default.settings["sampler"] == "FlowUniPCScheduler"
    assert default.settings["guidance"][0].startswith("CFG")


def test_distilled_transformer_file_with_a_lora(tiny_model, tmp_path):
    """``transformer=FILE`` (official names, as LightX2V ships) replaces the folder's weights."""
    from safetensors.torch import save_file

    from fastdit.models.wan import diffusers_to_original_key

    path = tiny_model("t2v")
    base = fastdit.load(path, device="cpu", dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    distilled = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.transformer.state_dict().items()}
    file = tmp_path / "wan_tiny_distill_4step.safetensors"
    save_file({"model.diffusion_model." + diffusers_to_original_key(k): v.contiguous()
               for k, v in distilled.items()}, str(file))
    lora = [(tiny_lora(path, tmp_path / "style.safetensors", seed=4), 0.7)]

    pipe = fastdit.load(path, device="cpu", dtype=torch.float32, transformer=str(file), loras=lora,
                        preset="lightx2v-4step")
    got = pipe.generate(PROMPT, seed=3, **SETTINGS)
    assert got.settings["weights"][0]["file"] == str(file)
    few_step = dict(timesteps=[1000, 750, 500, 250], flow_shift=5.0)
    apply_loras(base.transformer, lora)
    with_base_weights = base.generate(PROMPT, seed=3, **SETTINGS, **few_step).frames
    base.transformer.load_state_dict(distilled)
    apply_loras(base.transformer, lora)
    expected = base.generate(PROMPT, seed=3, **SETTINGS, **few_step).frames
    # fp32 rounding only (the two copies of the weights sit at different memory alignments)
    assert _max_diff(got.frames, expected) <= STRICT
    assert _max_diff(with_base_weights, expected) > 100 * STRICT


@pytest.mark.parametrize("task, size", [("i2v", 32), ("ti2v", 64)])
def test_image_models_with_a_lora_and_the_preset(tiny_model, tmp_path, task, size):
    """Image-to-video (CLIP image tokens; TI2V's per-frame timesteps) with a LoRA and the
    preset: runtime adapters give the merged LoRA's frames."""
    from tests.pipelines.helpers import sample_image

    path = tiny_model(task)
    lora = [(tiny_lora(path, tmp_path / "a.safetensors", seed=1), 0.9)]
    settings = dict(SETTINGS, height=size, width=size)
    frames = {}
    for mode in ("merge", "runtime"):
        pipe = fastdit.load(path, device="cpu", dtype=torch.float32, loras=lora, lora_mode=mode,
                            preset="lightx2v-4step")
        result = pipe.generate(PROMPT, image=sample_image(), seed=3, **settings)
        assert result.settings["num_inference_steps"] == 4
        frames[mode] = result.frames
    assert _max_diff(frames["runtime"], frames["merge"]) <= STRICT

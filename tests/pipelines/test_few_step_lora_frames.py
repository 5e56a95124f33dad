"""Phase 1 end to end: fastdit's pipeline with LoRAs merged by ``apply_loras`` and the
FewStepScheduler set on it by hand, against diffusers' pipeline with the same LoRAs loaded and
fused and FlowMatchEuler on the same sigmas (guidance 1), frames within the equivalence bar.

(Phase 2 replaces the hand set-up with ``fastdit.load(..., loras=..., preset=...)``.) The
tiny A14B model's boundary_ratio 0.875 splits the schedule 1000, 937.5 | 833.3, 625 exactly
where ``boundary_step=2`` does, so both pipelines switch experts at step 2.
"""

from __future__ import annotations

import numpy as np
import torch
import pytest

import fastdit
from fastdit.models.wan.lora import apply_loras
from fastdit.schedulers.few_step import FewStepScheduler
from tests.pipelines.lora_helpers import diffusers_few_step_frames, tiny_lora

ATOL = 2e-3
STRICT = 1e-4
PROMPT = "a small robot walks on the moon at night"
SETTINGS = dict(height=32, width=32, num_frames=5, max_sequence_length=32)


def _fastdit_frames(path, loras, loras_2=(), boundary_step=None):
    pipe = fastdit.load(path, device="cpu", dtype=torch.float32)
    apply_loras(pipe.transformer, loras)
    if loras_2:
        apply_loras(pipe.transformer_2, loras_2)
    pipe.scheduler = FewStepScheduler((1000, 750, 500, 250), 5.0, boundary_step=boundary_step)
    two = getattr(pipe, "transformer_2", None) is not None
    result = pipe.generate(PROMPT, seed=3, num_inference_steps=4, guidance_scale=1.0,
                           **({"guidance_scale_2": 1.0} if two else {}), **SETTINGS)
    return result.frames


@pytest.mark.parametrize("task", ["t2v", "a14b"])
def test_few_step_lora_frames_equal_diffusers(tiny_model, tmp_path, task):
    path = tiny_model(task)
    loras = [(tiny_lora(path, tmp_path / "a.safetensors", seed=1), 0.9),
             (tiny_lora(path, tmp_path / "b.safetensors", layout="diffusers", alpha=None, seed=2), 0.6)]
    loras_2 = []
    if task == "a14b":
        loras_2 = [(tiny_lora(path, tmp_path / "low.safetensors", subfolder="transformer_2", seed=3), 1.0)]
    ours = _fastdit_frames(path, loras, loras_2, boundary_step=2 if task == "a14b" else None)
    theirs = diffusers_few_step_frames(path, prompt=PROMPT, seed=3, loras=loras, loras_2=loras_2,
                                       **SETTINGS)
    assert ours.shape == theirs.shape
    err = float(np.abs(ours - theirs).max())
    assert err <= STRICT <= ATOL, f"max frame difference {err:.3g}"
    if task == "t2v":  # the LoRAs do change the video (one extra run, on the cheaper model)
        plain = diffusers_few_step_frames(path, prompt=PROMPT, seed=3, **SETTINGS)
        assert float(np.abs(plain - theirs).max()) > 100 * STRICT

"""The whole-pipeline cases run on spawned gloo ranks, and what both sides of the comparison
(the ranks and the single-process reference) run for them.

Requests are small but cover the paths: 48x48 T2V/A14B with 9 frames is 3x3x3 = 27 tokens
(padded over 2 and 4 ranks); the A14B runs take 2 steps (t = 999 on the high-noise expert,
750 on the low-noise one); I2V is Wan2.1 with CLIP tokens; TI2V holds the image's first frame
at t = 0 (per-frame timesteps: 4 tokens a frame, so 6-token shards get 2-token modulation rows).
"""

from __future__ import annotations

from typing import Any

import torch

#: scheduler outputs of every step of the generations in this process (see Recorder)
STEPS: list[torch.Tensor] = []

PROMPT, NEGATIVE = "a red fox runs in the snow", "blurry"
T2V = dict(height=48, width=48, num_frames=9, num_inference_steps=2, seed=3)
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "t2v": ("t2v", T2V),
    "a14b": ("a14b", T2V),
    "a14b-unguided-low": ("a14b", dict(T2V, guidance_scale_2=1.0)),  # expert 2: NoGuidance
    "i2v": ("i2v", dict(height=48, width=32, num_frames=5, num_inference_steps=2, seed=4, image=True)),
    "ti2v": ("ti2v", dict(height=64, width=64, num_frames=9, num_inference_steps=2, seed=5, image=True)),
}
# case -> (request, parallel spec, world size)
CASES: dict[str, tuple[str, str, int]] = {
    "t2v/ulysses2": ("t2v", "ulysses=2", 2),  # vae 2 (every rank decodes)
    "t2v/ring2-vae1": ("t2v", "ring=2,vae=1", 2),  # rank 0 decodes alone
    "t2v/cfg2": ("t2v", "cfg=2", 2),
    "a14b/ulysses2": ("a14b", "ulysses=2", 2),
    "i2v/ring2": ("i2v", "ring=2", 2),
    "ti2v/ulysses2": ("ti2v", "ulysses=2", 2),
    "t2v/usp2x2": ("t2v", "ulysses=2,ring=2", 4),
    "t2v/cfg2xulysses2": ("t2v", "cfg=2,ulysses=2", 4),
    "a14b-unguided-low/cfg2xring2": ("a14b-unguided-low", "cfg=2,ring=2", 4),
}


class Recorder:
    """A scheduler that records every step's output in :data:`STEPS` (the pipeline deep-copies
    its scheduler per generation; the list is module-level, so the copies share it)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def step(self, *args, **kwargs):
        out = self.inner.step(*args, **kwargs)
        STEPS.append(out[0].detach().clone())
        return out


def generate(pipe, request: str) -> dict[str, torch.Tensor | None]:
    """``{"frames": [F, H, W, 3] or None, "steps": [steps, *latent shape]}`` for one request."""
    from tests.pipelines.helpers import sample_image

    _, kwargs = REQUESTS[request]
    kwargs = dict(kwargs)
    if kwargs.pop("image", False):
        kwargs["image"] = sample_image()
    pipe.scheduler = pipe.scheduler if isinstance(pipe.scheduler, Recorder) else Recorder(pipe.scheduler)
    STEPS.clear()
    result = pipe.generate(PROMPT, negative_prompt=NEGATIVE, **kwargs)
    frames = None if result.frames is None else torch.from_numpy(result.frames)
    return {"frames": frames, "steps": torch.stack(STEPS)}

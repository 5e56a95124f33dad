"""Per-generation state: guidance strategies, progress, cancellation, two requests on one pipeline."""

import threading

import numpy as np
import pytest
import torch

import fastdit
from fastdit.errors import Cancelled
from fastdit.pipelines import GenerationControl, GenerationRequest
from fastdit.pipelines.guidance import CFG, BranchModel, NoGuidance

SMALL = dict(height=32, width=32, num_frames=5, num_inference_steps=3)


@pytest.fixture(scope="module")
def t2v(tiny_model):
    return fastdit.load(tiny_model("t2v"), device="cpu", dtype=torch.float32)


def test_branch_model_batches_branches_in_order():
    seen = []

    def model(x, t, text, image):
        seen.append((x.shape[0], text[:, 0, 0].tolist()))
        return x * text[:, :1, :1, None, None]

    texts = [torch.full((1, 2, 3), 2.0), torch.full((1, 2, 3), 5.0)]
    branches = BranchModel(model, texts)
    x, t = torch.ones(1, 4, 1, 2, 2), torch.tensor([3.0])
    cond, uncond = branches(x, t, (0, 1))
    assert seen == [(2, [2.0, 5.0])] and torch.all(cond == 2) and torch.all(uncond == 5)
    assert torch.all(NoGuidance()(branches, x, t, 0) == 2)
    torch.testing.assert_close(CFG(4.0)(branches, x, t, 0), 5 + 4.0 * (2 - 5) * torch.ones_like(x))
    torch.testing.assert_close(CFG(4.0, mode="sequential")(branches, x, t, 0), CFG(4.0)(branches, x, t, 0))
    with pytest.raises(ValueError, match="guidance mode"):
        CFG(2.0, mode="parallel")


def test_sequential_guidance_equals_batched(t2v):
    batched = t2v.generate("a red fox", seed=4, guidance_scale=5.0, **SMALL).frames
    experts, boundary = t2v._experts_for(t2v.check_request(guidance_scale=5.0, **SMALL))
    assert isinstance(experts[0].guidance, CFG) and boundary is None
    original = t2v._experts_for
    t2v._experts_for = lambda req: ([type(e)(e.model, CFG(e.guidance.scale, "sequential")) for e in
                                     original(req)[0]], None)
    try:
        sequential = t2v.generate("a red fox", seed=4, guidance_scale=5.0, **SMALL).frames
    finally:
        t2v._experts_for = original
    np.testing.assert_allclose(sequential, batched, atol=2e-5)


def test_progress_reports_every_step(t2v):
    reports, old_style = [], []
    control = GenerationControl(on_progress=reports.append)
    t2v.run(GenerationRequest("a boat", **SMALL), control=control, callback=lambda i, n: old_style.append((i, n)))
    assert [(p.step, p.total) for p in reports] == [(i, 3) for i in range(4)]
    assert all(p.elapsed >= 0 and p.step_seconds >= 0 for p in reports)
    assert reports[-1].fraction == 1.0
    assert old_style == [(0, 3), (1, 3), (2, 3)]


def test_cancel_stops_before_the_next_step(t2v):
    steps = []

    def on_progress(p):
        steps.append(p.step)
        if p.step == 1:
            control.cancel()

    control = GenerationControl(on_progress=on_progress)
    with pytest.raises(Cancelled):
        t2v.run(GenerationRequest("a boat", **SMALL), control=control)
    assert steps == [0, 1]  # step 2 never ran


def test_two_requests_on_one_pipeline_do_not_interfere(t2v):
    """Each generation has its own scheduler: concurrent runs equal the same runs one by one."""
    requests = [GenerationRequest("a boat", seed=1, **SMALL),
                GenerationRequest("a cat in a city", seed=2, guidance_scale=3.0,
                                  **dict(SMALL, num_inference_steps=4))]
    alone = [t2v.run(r).frames for r in requests]
    together: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i, r=r: together.__setitem__(i, t2v.run(r).frames))
               for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for i in range(2):
        np.testing.assert_array_equal(together[i], alone[i])

"""fastdit's FlowUniPCScheduler against diffusers' UniPCMultistepScheduler, step by step."""

from __future__ import annotations

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from fastdit.schedulers.unipc import FlowUniPCScheduler


def _flow(**kw):
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, **kw)


def _run(scheduler, steps, dtype, begin_index=True, seed=0):
    scheduler.set_timesteps(steps)
    if begin_index:
        scheduler.set_begin_index(0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 3, 5, generator=g)
    for t in scheduler.timesteps:
        velocity = torch.randn(2, 4, 3, 5, generator=g).to(dtype)
        x = scheduler.step(velocity, t, x, return_dict=False)[0]
    return x, scheduler.timesteps


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 50])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("shift,final", [(1.0, "zero"), (3.0, "zero"), (5.0, "sigma_min")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_diffusers(steps, order, shift, final, dtype):
    ref = _flow(flow_shift=shift, solver_order=order, final_sigmas_type=final)
    expected, ref_timesteps = _run(ref, steps, dtype)
    out, timesteps = _run(FlowUniPCScheduler(ref.config), steps, dtype)
    assert torch.equal(timesteps, ref_timesteps)
    assert out.dtype == expected.dtype
    # diffusers computes the coefficients in float32 (order 3 solves a 3x3 system in float32),
    # fastdit in float64 from the same float32 sigmas
    tolerance = 1e-5 if order <= 2 else 1e-4
    assert float((out - expected).abs().max() / expected.abs().max()) < tolerance


def test_disabled_corrector_and_lookup_by_timestep():
    ref = _flow(flow_shift=3.0, disable_corrector=[0, 2])
    expected, _ = _run(ref, 6, torch.float32, begin_index=False)
    out, _ = _run(FlowUniPCScheduler(ref.config), 6, torch.float32, begin_index=False)
    assert float((out - expected).abs().max() / expected.abs().max()) < 1e-5


@pytest.mark.parametrize("change", [dict(use_karras_sigmas=True), dict(thresholding=True),
                                    dict(solver_type="bh1"), dict(prediction_type="epsilon"),
                                    dict(use_flow_sigmas=False), dict(lower_order_final=False)])
def test_other_configurations_are_left_to_diffusers(change):
    config = dict(_flow(flow_shift=3.0).config)
    assert FlowUniPCScheduler.takes(config)
    config.update(change)
    assert not FlowUniPCScheduler.takes(config)
    with pytest.raises(ValueError, match="not supported"):
        FlowUniPCScheduler(config)


def test_misuse_is_an_error():
    scheduler = FlowUniPCScheduler(_flow(flow_shift=3.0).config)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 999, x)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="return_dict=False"):
        scheduler.step(x, scheduler.timesteps[0], x, return_dict=True)
    with pytest.raises(ValueError, match="not in the schedule"):
        scheduler.step(x, 12345, x)


def test_pipelines_use_it_for_wan_checkpoints(tiny_model):
    import fastdit

    pipe = fastdit.load(tiny_model("t2v"), device="cpu", dtype=torch.float32)
    assert isinstance(pipe.scheduler, FlowUniPCScheduler)
    assert pipe.scheduler.config.flow_shift == 3.0

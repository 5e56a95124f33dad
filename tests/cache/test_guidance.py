"""Guidance shortcuts: CFG until a step fraction, CFG-Zero*."""

import numpy as np
import pytest
import torch

from fastdit.cache import CacheConfig, CachedGuidance, CacheSession
from fastdit.pipelines.guidance import CFGZeroStar, GuidanceUntil, optimized_scale
from fastdit.errors import UserError

from .stand_in import CFGStrategy, denoise, make_branch_model


class Counting:
    def __init__(self, model):
        self.model, self.transformer, self.calls = model, model.transformer, []

    def __call__(self, x, t, which):
        self.calls.append(list(which))
        return self.model(x, t, which)


@pytest.mark.parametrize("mode", ["batched", "sequential"])
def test_guidance_until_drops_the_negative_branch_after_the_fraction(mode):
    model = make_branch_model()
    counting = Counting(model)
    strategy = GuidanceUntil(5.0, until=0.6, num_steps=10, mode=mode)
    assert [strategy.guided(i) for i in range(10)] == [True] * 6 + [False] * 4
    x, t = torch.randn(1, 4, 2, 4, 4, dtype=torch.float64), torch.tensor(300.0, dtype=torch.float64)
    cond, uncond = model(x, t, [0, 1])
    torch.testing.assert_close(strategy(counting, x, t, 5), uncond + 5.0 * (cond - uncond))
    torch.testing.assert_close(strategy(counting, x, t, 6), model(x, t, [0])[0])
    assert counting.calls == ([[0, 1], [0]] if mode == "batched" else [[0], [1], [0]])
    full = denoise(GuidanceUntil(5.0, until=1.0, num_steps=10), [model], 10)
    assert torch.equal(full, denoise(CFGStrategy(), [model], 10))


def test_guidance_until_with_a_cache():
    model = make_branch_model()
    session = CacheSession(CacheConfig.parse("fbcache:threshold=0.2"), 10)
    denoise(CachedGuidance(GuidanceUntil(5.0, 0.5, 10), session), [model], 10)
    data = session.stats.to_dict()["branches"]
    assert data["uncond"]["run"] + data["uncond"]["reused"] == 5
    assert data["cond"]["run"] + data["cond"]["reused"] == 10


def test_optimized_scale_against_float64():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    c, u = cond.double().numpy().reshape(2, -1), uncond.double().numpy().reshape(2, -1)
    expected = (c * u).sum(1) / ((u * u).sum(1) + 1e-8)
    alpha = optimized_scale(cond, uncond)
    assert alpha.shape == (2, 1, 1)
    np.testing.assert_allclose(alpha.flatten().numpy(), expected, rtol=1e-6)


def test_cfg_zero_star():
    model = make_branch_model()
    counting = Counting(model)
    strategy = CFGZeroStar(5.0, num_steps=10, zero_init_steps=2)
    x, t = torch.randn(1, 4, 2, 4, 4, dtype=torch.float64), torch.tensor(300.0, dtype=torch.float64)
    for step in (0, 1):
        zero = strategy(counting, x, t, step)
        assert zero.shape == (1, 4, 2, 4, 4) and not zero.any()
    assert counting.calls == []  # zero-init runs no forward
    cond, uncond = (v.numpy() for v in model(x, t, [0, 1]))
    alpha = (cond * uncond).sum() / ((uncond * uncond).sum() + 1e-8)
    expected = alpha * uncond + 5.0 * (cond - alpha * uncond)
    np.testing.assert_allclose(strategy(counting, x, t, 2).numpy(), expected, rtol=1e-10)
    plain = CFGZeroStar(5.0, 10, zero_init_steps=0, optimized=False)
    torch.testing.assert_close(plain(model, x, t, 0), CFGStrategy()(model, x, t, 0))


def test_cfg_zero_star_with_a_cache_counts_from_the_real_step():
    model = make_branch_model()
    session = CacheSession(CacheConfig.parse("teacache:threshold=0.3,model=Wan2.1-T2V-1.3B"), 10)
    denoise(CachedGuidance(CFGZeroStar(5.0, 10, zero_init_steps=1), session), [model], 10)
    steps = [s for s, _, b, _ in session.stats.decisions if b == 0]
    assert steps == list(range(1, 10))
    assert (9, 0, 0, False) in session.stats.decisions  # the last step computes (TeaCache rule)


@pytest.mark.parametrize("make, message", [
    (lambda: GuidanceUntil(5.0, 1.5, 10), r"guidance_until must be a fraction"),
    (lambda: GuidanceUntil(5.0, 0.5, 0), "num_steps must be a positive integer"),
    (lambda: GuidanceUntil(5.0, 0.5, 10, mode="parallel"), "guidance mode must be one of"),
    (lambda: CFGZeroStar(5.0, 10, zero_init_steps=11), r"zero_init_steps must be an integer in 0..10"),
    (lambda: CFGZeroStar("5", 10), "guidance scale must be a number"),
])
def test_bad_guidance_settings(make, message):
    with pytest.raises(UserError, match=message):
        make()

"""TeaCache for Wan2.1: reuse the blocks' residual while the timestep embedding barely moves.

Per branch, at step s (``e_s`` = ``ctx.temb``, or the modulation ``ctx.temb6`` with
``ret_steps``)::

    forced compute if s < W (W = 1, or 5 with ret_steps) or s >= C (C = S - 1, or S with
    ret_steps: the last step is computed only without ret_steps); the accumulator resets to 0
    otherwise  acc += poly(mean|e_s - e_{s-1}| / mean|e_{s-1}|)
               reuse if acc < threshold, else compute and acc = 0
    e_{s-1} := e_s on every step, reused or not

``poly`` is the published fourth-degree fit for the model. This is ``teacache_forward`` of
ali-vilab/TeaCache, ``TeaCache4Wan2.1/teacache_generate.py`` (commit 7c10efc4702c6b619f47805f7abe4a7a08085aa0,
file last changed 2025-03-13), with its ``cnt`` counter (cond and uncond calls alternating, so
``ret_steps = 5*2``, ``cutoff_steps = 2*S - 2``) written per branch and per step. fastdit's
additions: ``threshold=0`` never reuses (the published polynomials can be negative near 0,
which would reuse at threshold 0), and with two experts the warm-up counts from each expert's
first step (its state starts empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fastdit.cache.base import BranchState, Gate, Policy, StepInfo
from fastdit.cache.indicators import relative_l1_sums, rescale
from fastdit.errors import CacheError

#: model -> (coefficients on temb, coefficients on temb6 with ret_steps), highest degree
#: first, as published (teacache_generate.py lines 883-892 for T2V, 966-976 for I2V).
TEACACHE_COEFFICIENTS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "Wan2.1-T2V-1.3B": (
        (2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01),
        (-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02),
    ),
    "Wan2.1-T2V-14B": (
        (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
        (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01),
    ),
    "Wan2.1-I2V-14B-480P": (
        (-3.02331670e+02, 2.23948934e+02, -5.25463970e+01, 5.87348440e+00, -2.01973289e-01),
        (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
    ),
    "Wan2.1-I2V-14B-720P": (
        (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
        (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
    ),
}

#: The thresholds of the published README's example commands (``TeaCache4Wan2.1/README.md``).
TEACACHE_THRESHOLDS = {"Wan2.1-T2V-1.3B": 0.08, "Wan2.1-T2V-14B": 0.2,
                       "Wan2.1-I2V-14B-480P": 0.26, "Wan2.1-I2V-14B-720P": 0.3}

WARMUP_STEPS = {False: 1, True: 5}  # ret_steps = 1*2 / 5*2 calls


@dataclass
class TeaCacheState(BranchState):
    previous: torch.Tensor | None = None  # e_{s-1}
    accumulated: float = 0.0


class TeaCache(Policy):
    name = "teacache"
    uses_feature = True  # e_s is remembered on every step

    def __init__(self, settings: dict[str, Any], model: str | None) -> None:
        source = settings.get("model") or model
        if source not in TEACACHE_COEFFICIENTS:
            known = ", ".join(TEACACHE_COEFFICIENTS)
            what = f"model {source!r}" if source else "this model (not recognised)"
            raise CacheError(f"cache teacache: no published coefficients for {what}; they exist "
                            f"for {known}. Pass model=NAME to borrow one model's polynomial, or "
                            f"use magcache (Wan2.1 and Wan2.2 tables, or calibrate) or fbcache")
        settings = {"ret_steps": False, **settings, "model": source}
        settings.setdefault("threshold", TEACACHE_THRESHOLDS[source])
        super().__init__(settings)
        self.ret_steps = bool(settings["ret_steps"])
        self.coefficients = TEACACHE_COEFFICIENTS[source][1 if self.ret_steps else 0]
        self.warmup = WARMUP_STEPS[self.ret_steps]

    def new_state(self, branch: int) -> TeaCacheState:
        return TeaCacheState(branch)

    def forced(self, step: StepInfo) -> bool:
        cutoff = step.num_steps if self.ret_steps else step.num_steps - 1
        return step.local_step < self.warmup or step.step >= cutoff

    def gate(self, state: TeaCacheState, step: StepInfo) -> Gate:
        if self.forced(step) or state.previous is None or state.residual is None:
            state.accumulated = 0.0
            return Gate.COMPUTE
        return Gate.MEASURE

    def feature(self, ctx, x_in, x_head, rows: slice) -> torch.Tensor:
        emb = ctx.temb6 if self.ret_steps else ctx.temb  # (B, [T,] 6, D) / (B, [T,] D)
        return emb[rows]

    def measure(self, state: TeaCacheState, feature: torch.Tensor) -> torch.Tensor:
        return relative_l1_sums(feature, state.previous)

    def decide(self, state: TeaCacheState, step: StepInfo, change: float) -> bool:
        state.accumulated += rescale(self.coefficients, change)
        if self.threshold > 0 and state.accumulated < self.threshold:
            return True
        state.accumulated = 0.0
        return False

    def observe(self, state: TeaCacheState, step: StepInfo, feature, computed: bool) -> None:
        state.previous = feature.detach().clone()

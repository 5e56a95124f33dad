"""First-block cache and DBCache: decide from the residual of the first n blocks.

Per branch, at step k (counted within the expert)::

    h_n = blocks[:n](x);  f_k = h_n - x                            (always computed)
    compute if k < warmup, or max_cached reuses were made, or max_continuous in a row,
            or there is no reference yet, or threshold = 0
    else    change = mean|f_k - f_ref| / mean|f_ref|;   reuse if change < threshold
    computed:  h = blocks[n:N-m](h_n);  R := h - h_n;  f_ref := f_k
    reused:    h = h_n + R     (TaylorSeer: h_n + R + dR (k - k_R), dR = (R - R_prev) / (k_R - k_prev))
    h = blocks[N-m:](h)                                            (always computed)

The reference ``f_ref`` moves only on computed steps. These are cache-dit's DBCache rules
(vipshop/cache-dit, ``src/cache_dit/caching/cache_blocks/pattern_base.py`` and
``cache_contexts/cache_manager.py`` ``can_cache`` / ``similarity``; TaylorSeer order 1 from
``cache_contexts/calibrators/taylorseer.py``, whose derivative needs the step counter past 1;
commit f86744af7daa0f569fe4324e73e3e50cebf70f4c) and, with n = 1, m = 0, no warm-up, diffusers'
``FirstBlockCache`` hook (``diffusers/hooks/first_block_cache.py``, 0.42.1; it reuses on
``change <= threshold``, cache-dit and fastdit on ``<``). ``max_continuous`` counts reused
steps in a row and resets on a computed step (cache-dit's counter has its own quirks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fastdit.cache.base import BranchState, Gate, Policy, StepInfo
from fastdit.cache.indicators import relative_l1_sums
from fastdit.errors import CacheError

#: Defaults: fbcache = diffusers' FirstBlockCacheConfig (threshold 0.05, first block only);
#: dbcache = cache-dit's DBCacheConfig (F8B0, residual_diff_threshold 0.08, max_warmup_steps 8).
BLOCK_DEFAULTS: dict[str, dict[str, Any]] = {
    "fbcache": {"threshold": 0.05, "n": 1, "m": 0, "warmup": 0, "max_cached": -1,
                "max_continuous": -1, "taylorseer": False},
    "dbcache": {"threshold": 0.08, "n": 8, "m": 0, "warmup": 8, "max_cached": -1,
                "max_continuous": -1, "taylorseer": False},
}


@dataclass
class BlockCacheState(BranchState):
    reference: torch.Tensor | None = None  # f_ref: the first blocks' residual at the last computed step
    residual_step: int = -1  # k_R
    derivative: torch.Tensor | None = None  # dR (TaylorSeer)


class BlockCache(Policy):
    uses_feature = True
    sharded_feature = True  # a residual over the tokens this rank holds

    def __init__(self, name: str, settings: dict[str, Any], num_blocks: int) -> None:
        super().__init__({**BLOCK_DEFAULTS[name], **settings})
        self.name = name
        s = self.settings
        self.head_blocks, self.tail_blocks = int(s["n"]), int(s["m"])
        if self.head_blocks + self.tail_blocks >= num_blocks:
            raise CacheError(f"cache {name}: n={self.head_blocks} first and m={self.tail_blocks} last "
                            f"blocks leave nothing to cache in a model of {num_blocks} blocks")
        self.warmup, self.taylorseer = int(s["warmup"]), bool(s["taylorseer"])
        self.max_cached, self.max_continuous = int(s["max_cached"]), int(s["max_continuous"])

    def new_state(self, branch: int) -> BlockCacheState:
        return BlockCacheState(branch)

    def gate(self, state: BlockCacheState, step: StepInfo) -> Gate:
        if (step.local_step < self.warmup or self.threshold <= 0 or state.reference is None
                or state.residual is None
                or 0 <= self.max_cached <= state.reused_total
                or 0 <= self.max_continuous <= state.reused_in_a_row):
            return Gate.COMPUTE
        return Gate.MEASURE

    def feature(self, ctx, x_in: torch.Tensor, x_head: torch.Tensor, rows: slice) -> torch.Tensor:
        return x_head[rows] - x_in[rows]  # (B, L, D)

    def measure(self, state: BlockCacheState, feature: torch.Tensor) -> torch.Tensor:
        return relative_l1_sums(feature, state.reference)

    def decide(self, state: BlockCacheState, step: StepInfo, change: float) -> bool:
        return change < self.threshold

    def observe(self, state: BlockCacheState, step: StepInfo, feature, computed: bool) -> None:
        if computed:
            state.reference = feature

    def store(self, state: BlockCacheState, step: StepInfo, residual: torch.Tensor) -> None:
        k = step.local_step
        if self.taylorseer:
            state.derivative = None
            if state.residual is not None and state.residual.shape == residual.shape and k > 1:
                window = k - state.residual_step
                state.derivative = ((_wide(residual) - _wide(state.residual)) / window).to(residual.dtype)
        state.residual_step = k
        super().store(state, step, residual)

    def cached_residual(self, state: BlockCacheState, step: StepInfo) -> torch.Tensor:
        residual = super().cached_residual(state, step)
        if state.derivative is None:
            return residual
        elapsed = step.local_step - state.residual_step
        return (_wide(residual) + _wide(state.derivative) * elapsed).to(residual.dtype)


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16 residuals are extrapolated in fp32, fp64 ones stay fp64)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))

"""MagCache: reuse the residual while the accumulated magnitude-ratio error stays small.

Per branch b at step s, with ``r[b][s]`` the model's ratio table (``||R_s|| / ||R_{s-1}||``,
calibrated once per model and resampled to the step count)::

    retained (always computed): 2k + b < int(2 n rho)    (k = step within the expert, n = its
                                                          steps, rho = retention; the published
                                                          counter runs over cond/uncond calls)
    otherwise  A *= r[b][s];  k_skip += 1;  E += |1 - A|
               reuse if E < threshold and k_skip <= K, else compute and (A, k_skip, E) = (1, 0, 0)

This is ``magcache_forward`` of Zehong-Ma/MagCache (as of commit df81cb181776c2c61477c08e1d21f87fda1cd938,
2025-11-17): ``MagCache4Wan2.1/magcache_generate.py`` and, for the experts of Wan2.2,
``MagCache4Wan2.2/magcache_generate.py``, whose rules per expert are: T2V-A14B retains the
first ``int(2 n_1 rho)`` calls of the high-noise expert and the calls ``c <= 2 n_2 rho`` of the
low-noise one; I2V-A14B computes the whole high-noise expert and retains ``int(2 n_2 rho)``
calls of the low-noise one. fastdit keeps each expert's state apart and empties it at the
switch (the published code carries the accumulators over), and a branch with no cached
residual yet always computes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastdit.cache.base import BranchState, Gate, Policy, StepInfo
from fastdit.cache.calibration import RatioTable, save_ratio_file
from fastdit.cache.indicators import magnitude_stats, nearest_interp
from fastdit.cache.tables import MAGCACHE_TABLES
from fastdit.errors import CacheError

#: Published settings per model (README example commands; E024K6R02 = threshold 0.24, K 6,
#: retention 0.2). ``retention_1 = 1`` for I2V-A14B: its high-noise expert is never cached.
MAGCACHE_PRESETS: dict[str, dict[str, Any]] = {
    "Wan2.1-T2V-1.3B": {"threshold": 0.12, "K": 4, "retention": 0.2},
    "Wan2.1-T2V-14B": {"threshold": 0.24, "K": 6, "retention": 0.2},
    "Wan2.1-I2V-14B-480P": {"threshold": 0.24, "K": 6, "retention": 0.2},
    "Wan2.1-I2V-14B-720P": {"threshold": 0.24, "K": 6, "retention": 0.2},
    "Wan2.2-T2V-A14B": {"threshold": 0.06, "K": 2, "retention": 0.4},
    "Wan2.2-I2V-A14B": {"threshold": 0.06, "K": 2, "retention": 0.1, "retention_1": 1.0},
    "Wan2.2-TI2V-5B": {"threshold": 0.06, "K": 2, "retention": 0.2},
}
#: The scripts' argparse defaults, for a calibrated model without a preset.
DEFAULT_SETTINGS = {"threshold": 0.12, "K": 2, "retention": 0.2}
#: Experts whose retained calls are counted with ``<=`` (the T2V-A14B low-noise expert).
INCLUSIVE_RETENTION = {("Wan2.2-T2V-A14B", 1)}


def table_name(model: str | None, has_image: bool = False) -> str | None:
    """The published table of a model: TI2V-5B has one for text and one for image input."""
    if model == "Wan2.2-TI2V-5B" and has_image:
        return "Wan2.2-TI2V-5B:i2v"
    return model


def published_table(name: str, num_steps: int) -> RatioTable:
    """A published table as ``ratios[branch][step]`` for ``num_steps`` steps: the two branches
    de-interleaved after the ``[1.0, 1.0]`` step-0 padding, each resampled with
    :func:`nearest_interp` when the step count differs (as the published scripts do)."""
    if name not in MAGCACHE_TABLES:
        known = ", ".join(n for n in MAGCACHE_TABLES if ":" not in n)
        raise CacheError(f"cache magcache: no published ratio table for {name!r}; tables exist for "
                        f"{known}. Record one with magcache:calibrate=FILE, then use "
                        f"magcache:table=FILE")
    steps, file, line, values = MAGCACHE_TABLES[name]
    padded = (1.0, 1.0) + tuple(values)
    if len(padded) != 2 * steps:
        raise CacheError(f"cache magcache: table {name} has {len(padded)} entries, expected "
                        f"{2 * steps} (2 branches x {steps} steps)")
    rows = tuple(tuple(float(v) for v in (padded[b::2] if steps == num_steps
                                          else nearest_interp(padded[b::2], num_steps)))
                 for b in (0, 1))
    return RatioTable(rows, num_steps, model=name.split(":")[0], source=f"{file}:{line}")


@dataclass
class MagCacheState(BranchState):
    accumulated_ratio: float = 1.0
    accumulated_steps: int = 0
    accumulated_error: float = 0.0

    def reset(self) -> None:
        self.accumulated_ratio, self.accumulated_steps, self.accumulated_error = 1.0, 0, 0.0


@dataclass
class Calibration:
    """Records every computed step's ratio statistics; writes the ratio file at the end."""

    path: str
    experts: list[int]  # the expert of each step
    model: str | None = None
    fingerprint: str | None = None
    stats: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # (branch, step) -> stats

    def __post_init__(self) -> None:
        folder = Path(self.path).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise CacheError(f"cache magcache: cannot write the calibration file {self.path} "
                            f"({folder} is not a writable folder)")

    @property
    def num_steps(self) -> int:
        return len(self.experts)

    def record(self, branch: int, step: StepInfo, residual: torch.Tensor,
               previous: torch.Tensor | None) -> None:
        if previous is not None and previous.shape == residual.shape:
            self.stats[(branch, step.step)] = magnitude_stats(residual, previous).tolist()

    def write(self) -> None:
        """Write the file: one list per branch that ran, 1.0 / 0.0 where nothing was measured."""
        branches = 1 + max((b for b, _ in self.stats), default=0)
        defaults = (1.0, 0.0, 0.0)

        def column(i: int) -> list[list[float]]:
            return [[round(self.stats.get((b, s), defaults)[i], 5) for s in range(self.num_steps)]
                    for b in range(branches)]

        save_ratio_file(self.path, model=self.model, fingerprint=self.fingerprint,
                        num_steps=self.num_steps, experts=list(self.experts),
                        ratios=column(0), std=column(1), cos_dis=column(2))


class MagCache(Policy):
    name = "magcache"

    def __init__(self, settings: dict[str, Any], table: RatioTable | None, expert: int = 0,
                 calibration: Calibration | None = None, model: str | None = None) -> None:
        settings = {**DEFAULT_SETTINGS, **settings}
        super().__init__({k: v for k, v in settings.items() if k in ("threshold", "K", "retention")})
        self.table, self.calibration = table, calibration
        self.K, self.retention = int(settings["K"]), float(settings["retention"])
        self.inclusive = (model, expert) in INCLUSIVE_RETENTION
        if table is None and calibration is None:
            raise CacheError("cache magcache: needs a ratio table (a published model, table=FILE) "
                            "or calibrate=FILE")

    def describe(self) -> str:
        return "calibrate" if self.calibration else super().describe()

    def new_state(self, branch: int) -> MagCacheState:
        return MagCacheState(branch)

    def retained(self, branch: int, step: StepInfo) -> bool:
        call, calls = 2 * step.local_step + branch, 2 * step.expert_steps * self.retention
        return call <= calls if self.inclusive else call < int(calls)

    def gate(self, state: MagCacheState, step: StepInfo) -> Gate:
        if self.calibration is not None or state.residual is None:
            state.reset()
            return Gate.COMPUTE
        if self.retained(state.branch, step):
            return Gate.COMPUTE
        state.accumulated_ratio *= self.table.ratio(state.branch, step.step)
        state.accumulated_steps += 1
        state.accumulated_error += abs(1.0 - state.accumulated_ratio)
        if state.accumulated_error < self.threshold and state.accumulated_steps <= self.K:
            return Gate.REUSE
        state.reset()
        return Gate.COMPUTE

    def store(self, state: MagCacheState, step: StepInfo, residual: torch.Tensor) -> None:
        if self.calibration is not None:
            self.calibration.record(state.branch, step, residual, state.residual)
        super().store(state, step, residual)

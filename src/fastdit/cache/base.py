"""What every policy shares: the step a decision is made at, the decision kinds, the interface.

A policy decides, per guidance branch, whether this step's transformer blocks run or the
branch's cached residual is reused. The cached model (:mod:`.model`) asks it in this order::

    gate(state, step)            -> COMPUTE | REUSE | MEASURE       (host only, no sync)
    feature(ctx, x_in, x_head, rows) -> the quantity it watches      (device)
    measure(state, feature)      -> [sum|f - ref|, sum|ref|]         (device; one sync for all branches)
    decide(state, step, change)  -> reuse?                           (host)
    observe(state, step, feature, computed)                          (after the decision)
    store(state, step, residual) on a computed step; cached_residual(state, step) on a reused one

``x_in`` is the embedded input, ``x_head`` the output of the first ``head_blocks`` blocks (the
same tensor when there are none), ``rows`` the slice of the batch that holds the branch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import torch


class Gate(enum.Enum):
    COMPUTE = "compute"
    REUSE = "reuse"
    MEASURE = "measure"


@dataclass(frozen=True)
class StepInfo:
    """Where a decision is made: the global step, and the step within the current expert."""

    step: int  # 0 .. num_steps - 1
    num_steps: int
    expert: int = 0
    local_step: int = 0  # step - the expert's first step
    expert_steps: int = 0  # how many steps this expert runs (in its contiguous segment)

    @property
    def is_last(self) -> bool:
        return self.step == self.num_steps - 1


@dataclass
class BranchState:
    """What one (expert, branch) remembers between steps; policies subclass it."""

    branch: int
    residual: torch.Tensor | None = None  # output - input of the blocks the policy skips
    reused_in_a_row: int = 0
    reused_total: int = 0


class Policy:
    """One expert's policy with its settings resolved. Subclasses override what they use."""

    name = "policy"
    head_blocks = 0  # blocks before the decision (first-block / DBCache: n)
    tail_blocks = 0  # blocks always run after the cached middle (DBCache: m)
    uses_feature = False  # feature() is called for every branch on every step
    sharded_feature = False  # the feature is split over sequence-parallel ranks (needs a reduce)

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    @property
    def threshold(self) -> float:
        return float(self.settings["threshold"])

    def describe(self) -> str:
        return ",".join(f"{k}={_fmt(v)}" for k, v in sorted(self.settings.items()))

    def new_state(self, branch: int) -> BranchState:
        return BranchState(branch)

    def gate(self, state: BranchState, step: StepInfo) -> Gate:
        raise NotImplementedError

    def feature(self, ctx: Any, x_in: torch.Tensor, x_head: torch.Tensor, rows: slice
                ) -> torch.Tensor | None:
        return None

    def measure(self, state: BranchState, feature: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decide(self, state: BranchState, step: StepInfo, change: float) -> bool:
        raise NotImplementedError

    def observe(self, state: BranchState, step: StepInfo, feature: torch.Tensor | None,
                computed: bool) -> None:
        pass

    def store(self, state: BranchState, step: StepInfo, residual: torch.Tensor) -> None:
        state.residual = residual
        state.reused_in_a_row = 0

    def cached_residual(self, state: BranchState, step: StepInfo) -> torch.Tensor:
        state.reused_in_a_row += 1
        state.reused_total += 1
        return state.residual


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "/".join(_fmt(v) for v in value)
    return str(value)

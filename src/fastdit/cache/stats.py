"""What a step cache did: forwards run and reused per expert and guidance branch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

BRANCH_NAMES = ("cond", "uncond")


def branch_name(branch: int) -> str:
    return BRANCH_NAMES[branch] if branch < len(BRANCH_NAMES) else f"branch{branch}"


@dataclass
class BranchCount:
    run: int = 0  # steps whose cached blocks ran for this branch
    reused: int = 0  # steps that reused the branch's cached residual


@dataclass
class CacheStats:
    """Counts per (expert, branch); ``batched_forwards`` counts runs of the cached blocks (a
    batch of 2 counts once), ``calls`` the cached model's calls. ``decisions`` lists
    ``(step, expert, branch, reused)`` in order; ``changes`` lists ``(step, expert, branch,
    value)`` for every decision that measured its indicator (the value the policy compared with
    its threshold, before any accumulation: what a threshold is chosen from)."""

    policy: str
    spec: str
    settings: dict[int, str] = field(default_factory=dict)  # expert -> resolved settings
    counts: dict[tuple[int, int], BranchCount] = field(default_factory=dict)
    calls: int = 0
    batched_forwards: int = 0
    decisions: list[tuple[int, int, int, bool]] = field(default_factory=list)
    changes: list[tuple[int, int, int, float]] = field(default_factory=list)

    def record(self, step: int, expert: int, branch: int, reused: bool, change: float | None = None) -> None:
        count = self.counts.setdefault((expert, branch), BranchCount())
        if reused:
            count.reused += 1
        else:
            count.run += 1
        self.decisions.append((step, expert, branch, reused))
        if change is not None:
            self.changes.append((step, expert, branch, float(change)))

    @property
    def run(self) -> int:
        return sum(c.run for c in self.counts.values())

    @property
    def reused(self) -> int:
        return sum(c.reused for c in self.counts.values())

    def reused_steps(self, expert: int = 0, branch: int = 0) -> list[int]:
        return [s for s, e, b, r in self.decisions if e == expert and b == branch and r]

    def measured(self, expert: int = 0, branch: int = 0) -> list[list[float]]:
        """``[[step, change], ...]`` of the (expert, branch)'s measured decisions."""
        return [[s, v if math.isfinite(v) else None] for s, e, b, v in self.changes
                if e == expert and b == branch]  # None: an infinite change (a zero reference)

    def _key(self, expert: int, branch: int) -> str:
        experts = {e for e, _ in self.counts}
        return branch_name(branch) if len(experts) <= 1 else f"expert{expert + 1}.{branch_name(branch)}"

    def to_dict(self) -> dict[str, Any]:
        """For ``GenerationResult.stats["cache"]`` (JSON-ready)."""
        return {
            "policy": self.policy,
            "spec": self.spec,
            "settings": {f"expert{e + 1}": s for e, s in sorted(self.settings.items())},
            "forwards_run": self.run,
            "forwards_reused": self.reused,
            "batched_forwards": self.batched_forwards,
            "calls": self.calls,
            "branches": {self._key(e, b): {"run": c.run, "reused": c.reused,
                                           "reused_steps": self.reused_steps(e, b),
                                           "changes": self.measured(e, b)}
                         for (e, b), c in sorted(self.counts.items())},
            "summary": self.summary(),
        }

    def summary(self) -> str:
        """One line for the generation summary, e.g. ``cache teacache: 62/100 branch forwards
        run, 38 reused (cond 31+19, uncond 31+19)``."""
        total = self.run + self.reused
        parts = ", ".join(f"{self._key(e, b)} {c.run}+{c.reused}"
                          for (e, b), c in sorted(self.counts.items()))
        return (f"cache {self.spec}: {self.run}/{total} branch forwards run, {self.reused} reused"
                + (f" ({parts} run+reused)" if parts else ""))

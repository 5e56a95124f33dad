"""CFG parallelism: the two classifier-free guidance branches on two rank groups.

A guidance strategy in the denoise stage's sense (``strategy(model, x, t, step) -> noise``,
seams section 4): the ranks with CFG coordinate 0 run the prompt branch (branch 0), those with
coordinate 1 the negative branch (branch 1), each as a batch of one, and one all-gather over
the rank's CFG group (its two members) per step brings both predictions to both sides, where
the same formula as single-device CFG combines them::

    noise = uncond + scale * (cond - uncond)

Both ranks therefore hold identical noise (and, after the replicated scheduler step,
identical latents).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from fastdit.distributed.groups import ParallelState, group_rank, group_size
from fastdit.pipelines.guidance import combine_cfg


class CFGParallel:
    """Classifier-free guidance with the branches split over the CFG group.

    ``model`` is a :class:`fastdit.pipelines.guidance.BranchModel` (``model(x, t, which) ->
    list[Tensor]``); ``scale`` the guidance scale (one strategy per expert). ``branches`` names
    the one branch this rank runs (a step cache keeps state for it only).
    """

    def __init__(self, scale: float, state: ParallelState):
        if state.config.cfg != 2 or group_size(state.cfg_group) != 2:
            raise ValueError("CFGParallel needs a layout with cfg=2 (two rank groups)")
        self.scale = float(scale)
        self.group = state.cfg_group
        self.branch = group_rank(state.cfg_group)  # == the CFG coordinate: 0 prompt, 1 negative
        self.branches = (self.branch,)

    def __call__(self, model, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        (mine,) = model(x, t, self.branches)
        cond, uncond = exchange_branches(mine.contiguous(), self.group)
        return combine_cfg(cond, uncond, self.scale)

    def __repr__(self) -> str:
        return f"CFGParallel(scale={self.scale}, branch={self.branch})"


def exchange_branches(mine: torch.Tensor, group) -> Sequence[torch.Tensor]:
    """One all-gather over the two-rank CFG group: ``[prediction of rank 0, of rank 1]``."""
    parts = [torch.empty_like(mine) for _ in range(2)]
    dist.all_gather(parts, mine, group=group)
    return parts

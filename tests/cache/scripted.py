"""A transformer whose measured quantities follow a script, to replay decision sequences
through the real cached model (embed / run_blocks / head, one batch per call).

Row r of a call carries its branch b and step s in ``ctx.text[r] = [b, s]``. ``embed`` gives
``temb = temb6[:, 0] = script.temb[b][s]``; ``run_blocks(x, ctx, 0, n)`` adds
``script.head[b][s]`` (the first blocks' residual that first-block / DBCache measure); the
middle blocks add ``script.middle[b][s]`` and log ``(s, branches)``; the tail blocks add 0.5;
``head`` returns x. So the output of a branch shows which residual it got.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

TOKENS, DIM = 3, 4


@dataclass
class Ctx:
    grid: Any
    temb: torch.Tensor
    temb6: torch.Tensor
    text: torch.Tensor
    image: Any = None
    rope: Any = None
    tokens: Any = None
    self_attention: Any = None
    block_hooks: Any = None


class Script:
    def __init__(self, temb=None, head=None, middle=None) -> None:
        self.temb, self.head, self.middle = temb, head, middle  # [b][s] -> tensors


class ScriptedTransformer:
    def __init__(self, script: Script, num_blocks: int = 6, n: int = 0, m: int = 0,
                 config: Any = None) -> None:
        self.script, self.blocks, self.config = script, [None] * num_blocks, config
        self.n, self.m = n, m  # the first / last blocks the policy under test runs apart
        self.middle_runs: list[tuple[int, tuple[int, ...]]] = []

    def _ids(self, ctx: Ctx) -> list[tuple[int, int]]:
        return [(int(b), int(s)) for b, s in ctx.text[:, 0].tolist()]

    def embed(self, latents, timestep, text, image=None):
        ids = [(int(b), int(s)) for b, s in text[:, 0].tolist()]
        if self.script.temb is not None:
            temb = torch.stack([self.script.temb[b][s] for b, s in ids])  # (nB, D)
        else:
            temb = torch.ones(len(ids), DIM, dtype=torch.float64)
        x = torch.zeros(len(ids), TOKENS, DIM, dtype=torch.float64)
        return x, Ctx(None, temb, temb.unsqueeze(1).expand(-1, 6, -1).clone(), text)

    def run_blocks(self, x, ctx, start=0, stop=None):
        stop = len(self.blocks) if stop is None else stop
        ids = self._ids(ctx)
        if self.n and (start, stop) == (0, self.n):
            return x + torch.stack([self.script.head[b][s] for b, s in ids])
        if self.m and (start, stop) == (len(self.blocks) - self.m, len(self.blocks)):
            return x + 0.5  # tail blocks
        self.middle_runs.append((ids[0][1], tuple(b for b, _ in ids)))
        if self.script.middle is not None:
            return x + torch.stack([self.script.middle[b][s] for b, s in ids])
        return x + 1.0

    def head(self, x, ctx):
        return x


class ScriptedBranchModel:
    def __init__(self, transformer: ScriptedTransformer) -> None:
        self.transformer = transformer

    def inputs(self, x, t, which):
        step = float(t)
        text = torch.tensor([[[float(b), step]] for b in which], dtype=torch.float64)  # (n, 1, 2)
        return torch.cat([x] * len(which)), t.reshape(1).expand(len(which)), text, None

    def __call__(self, x, t, which):
        h, ctx = self.transformer.embed(*self.inputs(x, t, which))
        return list(self.transformer.head(self.transformer.run_blocks(h, ctx), ctx).split(1))


def replay(session, models, num_steps: int, which=(0, 1), plan=None) -> list[list[torch.Tensor]]:
    """Run every step through the session's cached models; returns the outputs per step."""
    plan = plan or [0] * num_steps
    cached = [session.wrap(m, expert=e) for e, m in enumerate(models)]
    x = torch.zeros(1, 1, dtype=torch.float64)
    outs = []
    for s in range(num_steps):
        session.begin_step(s)
        outs.append(cached[plan[s]](x, torch.tensor(float(s)), list(which)))
    return outs


def reused(session, branch: int, expert: int | None = None) -> list[int]:
    return [s for s, e, b, r in session.stats.decisions if b == branch and r
            and (expert is None or e == expert)]

"""The cached model: a ``BranchModel`` look-alike that runs ``embed / run_blocks / head`` itself.

``cached(x, t, which) -> list[Tensor]`` as ``BranchModel`` (one noise prediction per branch
asked for). The branches of one call go through the transformer as one batch, and each branch
keeps its own cache state (cond and uncond change differently)::

    h0, ctx = embed(inputs of all branches)              # (nB, L, D)
    h = run_blocks(h0, ctx, 0, n)                        # first-block / DBCache only
    per branch: the policy decides (one host sync for all branches, when it measures)
    the branches that compute: run_blocks(h[rows], ctx[rows], n, N - m)   (a batch of 1 when
                               only one computes; nothing when none does)
    the branches that reuse:   h[rows] + their cached residual
    run_blocks(., ctx, N - m, N) -> head                 # all branches

With nothing reused the calls are those of the plain forward, so the output is the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from fastdit.cache.base import Gate
from fastdit.cache.indicators import ratio

def per_row(value: Any, batch: int) -> bool:
    """Whether a context value holds one row per batch element: a tensor whose leading
    dimension is the batch. Everything else is shared by every row: the grid and token range
    (tuples of ints), the RoPE tables (a tuple of per-token tensors), the attention function,
    the block hooks."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch


def select_rows(ctx: Any, rows: Sequence[slice], batch: int) -> Any:
    """``ctx`` (a dataclass such as ``WanContext``) for the sub-batch ``rows`` (slices of the
    ``batch`` rows, in order).

    Which fields are per row is read from their values, not from a list of names, so a field
    added to the context later is sliced when it has a row per batch element (:func:`per_row`):
    on ``WanContext`` that is ``temb``, ``temb6``, ``text`` and ``image``; the entries of a dict
    field (``extras``) follow the same rule. ``rows`` covering the whole batch returns ``ctx``.
    """
    if [(r.start, r.stop) for r in rows] == [(0, batch)]:
        return ctx
    changes = {}
    for f in dataclasses.fields(ctx):
        value = getattr(ctx, f.name)
        if per_row(value, batch):
            changes[f.name] = _take(value, rows)
        elif isinstance(value, dict) and any(per_row(v, batch) for v in value.values()):
            changes[f.name] = {k: _take(v, rows) if per_row(v, batch) else v for k, v in value.items()}
    return dataclasses.replace(ctx, **changes)


def _take(tensor: torch.Tensor, rows: Sequence[slice]) -> torch.Tensor:
    return tensor[rows[0]] if len(rows) == 1 else torch.cat([tensor[r] for r in rows])


class CachedBranchModel:
    """One expert's ``BranchModel`` behind a step cache (see :class:`.CacheSession`)."""

    def __init__(self, model: Any, session: Any, expert: int = 0) -> None:
        self.model, self.session, self.expert = model, session, expert

    @property
    def transformer(self) -> Any:
        return self.model.transformer

    def inputs(self, x: torch.Tensor, t: torch.Tensor, which: Sequence[int]):
        return self.model.inputs(x, t, which)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, which: Sequence[int]) -> list[torch.Tensor]:
        which = list(which)
        session, transformer = self.session, self.model.transformer
        step = session.current_step(self.expert)
        policy = session.policy(self.expert, transformer)
        states = [session.state(self.expert, b) for b in which]
        per_branch = x.shape[0]
        rows = [slice(k * per_branch, (k + 1) * per_branch) for k in range(len(which))]
        num_blocks = len(transformer.blocks)
        first, last = policy.head_blocks, num_blocks - policy.tail_blocks

        h0, ctx = transformer.embed(*self.model.inputs(x, t, which))  # (nB, L, D)
        h = transformer.run_blocks(h0, ctx, 0, first) if first else h0
        reuse, changes = self._decide(policy, states, step, ctx, h0, h, rows)
        h = self._middle(policy, states, step, ctx, h, rows, reuse, first, last)
        if last < num_blocks:
            h = transformer.run_blocks(h, ctx, last, num_blocks)
        out = transformer.head(h, ctx)  # (nB, C, T, H, W)

        session.stats.calls += 1
        for k, (branch, reused) in enumerate(zip(which, reuse)):
            session.stats.record(step.step, self.expert, branch, reused, change=changes.get(k))
        return list(out.split(per_branch))

    # ---------------------------------------------------------------------------------------
    def _decide(self, policy, states, step, ctx, h0, h, rows) -> tuple[list[bool], dict[int, float]]:
        """Each branch's decision, and the change measured for the branches that measured
        (by position in ``rows``); the measured branches share one device -> host copy."""
        gates = [policy.gate(state, step) for state in states]
        features = ([policy.feature(ctx, h0, h, r) for r in rows] if policy.uses_feature
                    else [None] * len(rows))
        measured = [k for k, g in enumerate(gates) if g is Gate.MEASURE]
        changes: dict[int, float] = {}
        if measured:
            sums = torch.stack([policy.measure(states[k], features[k]) for k in measured])  # (K, 2)
            if policy.sharded_feature and self.session.all_reduce is not None:
                self.session.all_reduce(sums)
            changes = {k: ratio(d, r) for k, (d, r) in zip(measured, sums.tolist())}
        reuse = [g is Gate.REUSE or (g is Gate.MEASURE and policy.decide(states[k], step, changes[k]))
                 for k, g in enumerate(gates)]
        for k, state in enumerate(states):
            policy.observe(state, step, features[k], computed=not reuse[k])
        return reuse, changes

    def _middle(self, policy, states, step, ctx, h, rows, reuse, first, last) -> torch.Tensor:
        """Blocks ``first:last`` for the computing branches, cached residuals for the others."""
        run_blocks = self.model.transformer.run_blocks
        computing = [k for k, r in enumerate(reuse) if not r]
        if len(computing) == len(rows):  # nothing reused: the plain forward's blocks
            out = run_blocks(h, ctx, first, last)
            self.session.stats.batched_forwards += 1
            for k, r in enumerate(rows):
                policy.store(states[k], step, out[r] - h[r])
            return out
        per_branch = rows[0].stop - rows[0].start
        pieces: list[torch.Tensor] = [h] * len(rows)
        if computing:
            sub_rows = [rows[k] for k in computing]
            sub_out = run_blocks(_take(h, sub_rows), select_rows(ctx, sub_rows, h.shape[0]), first, last)
            self.session.stats.batched_forwards += 1
            for j, k in enumerate(computing):
                pieces[k] = sub_out[j * per_branch:(j + 1) * per_branch]
                policy.store(states[k], step, pieces[k] - h[rows[k]])
        for k, r in enumerate(rows):
            if reuse[k]:
                pieces[k] = h[r] + policy.cached_residual(states[k], step)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

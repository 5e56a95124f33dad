"""Sequence parallelism through the transformer's seams (no model code changes).

``WanTransformer.PLAN`` says where: the hidden state ``x (B, L, D)`` is split along
``PLAN.sequence_dim`` after ``embed`` and gathered before ``head``; the blocks call
``ctx.self_attention`` for their self-attention, which becomes a
:class:`~fastdit.distributed.attention.SequenceParallelAttention`; cross-attention to the text
(and image) tokens stays local. RoPE tables are built for the shard's global positions with
``model.rope_for(grid, device, tokens=...)``; per-token or per-frame modulations are cut to
the shard's tokens as shard-local rows (see :func:`local_modulation`).

    x, ctx = model.embed(latents, timestep, text, image)
    x, local_ctx, shard = shard_context(model, x, ctx, state)
    x = model.run_blocks(x, local_ctx)
    out = model.head(gather_sequence(x, shard, state.sp_group, dim), ctx)

:class:`SequenceParallelTransformer` packages the same as an object with the model's call
signature and its ``embed / run_blocks / head`` split (what the denoise loop's
:class:`~fastdit.pipelines.guidance.BranchModel` and a step cache call).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from fastdit.distributed.attention import SequenceParallelAttention
from fastdit.distributed.groups import ParallelState
from fastdit.distributed.sequence import SequenceShard, gather_sequence

#: ``WanContext.extras`` key of a shard's context: ``(SequenceShard, the whole-sequence context)``
SHARD_KEY = "sequence_parallel"


def local_modulation(t: torch.Tensor, shard: SequenceShard, tokens: int) -> torch.Tensor:
    """``temb6`` for the shard's tokens, as few rows as the shard allows.

    ``(B, 6, D)`` (one timestep per sample) stays. Per-frame ``(B, F, 6, D)`` (or per-token,
    ``F = L``) rows become ``(B, S/g, 6, D)`` with ``g = gcd(S, L/F)``: each local row covers
    ``g`` consecutive tokens of one frame (``g`` divides both the shard length ``S`` and the
    frame's ``L/F`` tokens, and shards start at multiples of ``S``), which is the ops'
    per-frame broadcast mode on the shard. Padding rows repeat the last frame's row.
    """
    if t.dim() != 4:
        return t
    per = t.shape[1]
    if tokens % per:
        raise ValueError(f"sequence parallelism: {per} modulation rows for {tokens} tokens")
    run = tokens // per  # tokens of one row (a frame, or 1 per token)
    group = math.gcd(shard.shard_length, run)  # tokens of one shard-local row
    start, stop = shard.bounds()
    first = torch.arange(start, stop, group, device=t.device).clamp_(max=tokens - 1)  # (S/g,)
    return t.index_select(1, first // run)  # (B, S/g, 6, D)


def shard_context(model, x: torch.Tensor, ctx, state: ParallelState):
    """``(x_local, local_ctx, shard)``: this rank's part of the sequence and the context its
    blocks run with (``rope``, ``tokens``, ``temb6`` and ``self_attention`` replaced;
    ``extras[SHARD_KEY]`` holds the shard and the whole-sequence context for the head)."""
    dim = model.PLAN.sequence_dim
    shard = SequenceShard.for_group(x.shape[dim], state.sp_group)
    cos, sin = model.rope_for(ctx.grid, x.device, tokens=shard.tokens)  # (valid, D_head/2)
    local = dataclasses.replace(
        ctx, rope=(shard.pad_rows(cos), shard.pad_rows(sin)), tokens=shard.tokens,
        temb6=local_modulation(ctx.temb6, shard, x.shape[dim]),
        self_attention=SequenceParallelAttention(state, shard),
        extras={**ctx.extras, SHARD_KEY: (shard, ctx)})
    return shard.split(x, dim), local, shard


class SequenceParallelTransformer:
    """``model`` with its sequence split over ``state.sp_group`` between ``embed`` and ``head``.

    Called like the model (``(latents, timestep, text_embeds, image_embeds) -> (B, C_out, T, H,
    W)``, the whole output on every rank of the group). ``embed`` returns this rank's shard
    ``(B, S, D)`` and its context, ``run_blocks`` runs blocks on the shard, ``head`` gathers the
    sequence (one all-gather) and applies the model's head. A step cache that works per token
    between ``embed`` and ``head`` works unchanged on the shard; one that decides from the
    hidden state must make the same decision on every rank (all-reduce its signal).
    """

    def __init__(self, model, state: ParallelState):
        if state.sp_group is None:
            raise ValueError("SequenceParallelTransformer needs a layout with ulysses * ring > 1")
        self.model, self.state = model, state
        self.PLAN = model.PLAN

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    def embed(self, latents: torch.Tensor, timestep: torch.Tensor, text_embeds: torch.Tensor,
              image_embeds: torch.Tensor | None = None):
        x, ctx = self.model.embed(latents, timestep, text_embeds, image_embeds)  # (B, L, D)
        x, local, _ = shard_context(self.model, x, ctx, self.state)  # (B, S, D)
        return x, local

    def run_blocks(self, x: torch.Tensor, ctx, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.model.run_blocks(x, ctx, start, stop)

    def head(self, x: torch.Tensor, ctx) -> torch.Tensor:
        shard, whole = ctx.extras[SHARD_KEY]
        x = gather_sequence(x, shard, self.state.sp_group, dim=self.PLAN.sequence_dim)  # (B, L, D)
        return self.model.head(x, whole)

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, text_embeds: torch.Tensor,
                 image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        x, ctx = self.embed(latents, timestep, text_embeds, image_embeds)
        return self.head(self.run_blocks(x, ctx), ctx)

    def __repr__(self) -> str:
        return f"SequenceParallelTransformer({type(self.model).__name__}, {self.state.config.describe()})"


def sequence_parallel_forward(model, state: ParallelState, latents: torch.Tensor,
                              timestep: torch.Tensor, text_embeds: torch.Tensor,
                              image_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """``model(latents, timestep, text_embeds, image_embeds)`` with the sequence split over
    ``state.sp_group``; every rank of the group returns the whole output."""
    if state.sp_group is None:
        return model(latents, timestep, text_embeds, image_embeds)
    return SequenceParallelTransformer(model, state)(latents, timestep, text_embeds, image_embeds)

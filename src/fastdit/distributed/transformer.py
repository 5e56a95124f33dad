"""Sequence parallelism through the transformer's seams (no model code changes).

``WanTransformer.PLAN`` says where: the hidden state ``x (B, L, D)`` is split along
``PLAN.sequence_dim`` after ``embed`` and gathered before ``head``; the blocks call
``ctx.self_attention`` for their self-attention, which becomes a
:class:`~fastdit.distributed.attention.SequenceParallelAttention`; cross-attention to the text
(and image) tokens stays local. RoPE tables are built for the shard's global positions with
``model.rope_for(grid, device, tokens=...)``; per-token (or per-frame) modulations are cut to
the shard's tokens.

    x, ctx = model.embed(latents, timestep, text, image)
    x, local_ctx, shard = shard_context(model, x, ctx, state)
    x = model.run_blocks(x, local_ctx)
    out = model.head(gather_sequence(x, shard, state.sp_group, dim), ctx)
"""

from __future__ import annotations

import dataclasses

import torch

from fastdit.distributed.attention import SequenceParallelAttention
from fastdit.distributed.groups import ParallelState
from fastdit.distributed.sequence import SequenceShard, gather_sequence


def _local_modulation(t: torch.Tensor, shard: SequenceShard, tokens: int) -> torch.Tensor:
    """``temb6`` for the shard's tokens: ``(B, 6, D)`` stays; per token ``(B, L, 6, D)`` or per
    frame ``(B, F, 6, D)`` becomes per token ``(B, S, 6, D)`` (padding rows repeat the last)."""
    if t.dim() != 4:
        return t
    per = t.shape[1]
    if tokens % per:
        raise ValueError(f"sequence parallelism: {per} modulation rows for {tokens} tokens")
    start, stop = shard.bounds()
    positions = torch.arange(start, stop, device=t.device).clamp_(max=tokens - 1)
    return t.index_select(1, positions // (tokens // per))  # (B, S, 6, D)


def shard_context(model, x: torch.Tensor, ctx, state: ParallelState):
    """``(x_local, local_ctx, shard)``: this rank's part of the sequence and the context its
    blocks run with (``rope``, ``tokens``, ``temb6`` and ``self_attention`` replaced)."""
    dim = model.PLAN.sequence_dim
    shard = SequenceShard.for_group(x.shape[dim], state.sp_group)
    cos, sin = model.rope_for(ctx.grid, x.device, tokens=shard.tokens)  # (valid, D_head/2)
    local = dataclasses.replace(
        ctx, rope=(shard.pad_rows(cos), shard.pad_rows(sin)), tokens=shard.tokens,
        temb6=_local_modulation(ctx.temb6, shard, x.shape[dim]),
        self_attention=SequenceParallelAttention(state, shard))
    return shard.split(x, dim), local, shard


def sequence_parallel_forward(model, state: ParallelState, latents: torch.Tensor,
                              timestep: torch.Tensor, text_embeds: torch.Tensor,
                              image_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """``model(latents, timestep, text_embeds, image_embeds)`` with the sequence split over
    ``state.sp_group``; every rank of the group returns the whole output."""
    if state.sp_group is None:
        return model(latents, timestep, text_embeds, image_embeds)
    x, ctx = model.embed(latents, timestep, text_embeds, image_embeds)
    x, local_ctx, shard = shard_context(model, x, ctx, state)
    x = model.run_blocks(x, local_ctx)
    x = gather_sequence(x, shard, state.sp_group, dim=model.PLAN.sequence_dim)
    return model.head(x, ctx)

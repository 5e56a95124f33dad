"""Sequence-parallel self-attention: Ulysses, Ring, and the two combined (USP).

Each rank holds ``q, k, v [B, S, H, D]``: its shard of the sequence (see
:mod:`fastdit.distributed.sequence`). The result is this rank's shard of
``softmax(q k^T / sqrt(D)) v`` over the WHOLE sequence, padding left out of the keys.

* **Ulysses** (degree U, ``H % U == 0``): an all-to-all turns sequence shards into head shards,
  ``[B, S, H, D] -> [B, U*S, H/U, D]``; each rank runs ordinary attention
  (:func:`fastdit.ops.attention`, any provider) over the whole sequence for its heads, and a
  second all-to-all turns the result back.
* **Ring** (degree R, any head count): K/V chunks travel around the ring (R - 1 exchanges,
  each overlapped with the attention on the chunk in hand); each rank merges its partial
  results with the log-sum-exp (:func:`fastdit.ops.attention_lse.merge_partial`, fp32).
* **USP** (U x R): Ulysses inside groups of U neighbouring ranks, Ring across the groups on the
  Ulysses-gathered chunks of ``U*S`` tokens.

:class:`SequenceParallelAttention` is the callable ``attend(q, k, v) -> out`` that a
``WanContext.self_attention`` takes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from fastdit import ops
from fastdit.distributed.groups import ParallelState, global_rank, group_rank, group_size
from fastdit.distributed.sequence import SequenceShard
from fastdit.ops.attention_lse import attention_lse, merge_partial


# ---------------------------------------------------------------------------------------
# Ulysses all-to-all
# ---------------------------------------------------------------------------------------
def sequence_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """``[B, S, H, D]`` sequence shard -> ``[B, U*S, H/U, D]`` head shard (global token order).

    Rank j of the group receives heads ``[j*H/U, (j+1)*H/U)`` of every member's tokens.
    """
    ranks = group_size(group)
    if ranks == 1:
        return x
    batch, tokens, heads, dim = x.shape
    if heads % ranks:
        raise ValueError(f"Ulysses: {heads} heads do not split over {ranks} ranks")
    send = x.reshape(batch, tokens, ranks, heads // ranks, dim).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)  # (U, B, S, H/U, D): [j] = member j's tokens, my heads
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 0, 2, 3, 4).reshape(batch, ranks * tokens, heads // ranks, dim)


def heads_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """``[B, U*S, H/U, D]`` head shard -> ``[B, S, H, D]`` sequence shard (inverse of
    :func:`sequence_to_heads`)."""
    ranks = group_size(group)
    if ranks == 1:
        return x
    batch, length, heads_local, dim = x.shape
    tokens = length // ranks
    send = x.reshape(batch, ranks, tokens, heads_local, dim).transpose(0, 1).contiguous()
    recv = torch.empty_like(send)  # (U, B, S, H/U, D): [j] = my tokens, member j's heads
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(batch, tokens, ranks * heads_local, dim)


def ulysses_attention(q, k, v, *, group, valid_length: int, scale=None) -> torch.Tensor:
    """Ulysses attention for this rank's shard. ``valid_length``: the real tokens of the
    (Ulysses-gathered) sequence; keys past it are padding and are cut off."""
    q, k, v = (sequence_to_heads(t, group) for t in (q, k, v))  # (B, U*S, H/U, D)
    if valid_length < k.shape[1]:
        k, v = k[:, :valid_length], v[:, :valid_length]
    out = ops.attention(q, k, v, scale=scale)  # (B, U*S, H/U, D)
    return heads_to_sequence(out, group)


# ---------------------------------------------------------------------------------------
# Ring
# ---------------------------------------------------------------------------------------
def ring_attention(q, k, v, *, group, chunk_valid: list[int], scale=None) -> torch.Tensor:
    """Ring attention: ``q`` stays, the ``(k, v)`` chunks go round the ring.

    ``chunk_valid[j]``: real tokens (a prefix) in member j's chunk; chunks with none are
    skipped. Partial results merge in fp32; the result is in q's dtype.
    """
    ranks, me = group_size(group), group_rank(group)
    if len(chunk_valid) != ranks:
        raise ValueError(f"ring_attention: {len(chunk_valid)} chunk lengths for {ranks} ranks")
    send_to, recv_from = global_rank(group, (me + 1) % ranks), global_rank(group, (me - 1) % ranks)
    out = lse = None
    # Heads-first buffers, seen through [B, L, H, D] views: the fused kernels' (B, H, L, D)
    # layout is then a free transpose, not a copy per step.
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, S, H, D) view of (B, H, S, D)
    kv = torch.stack([k.transpose(1, 2), v.transpose(1, 2)])  # (2, B, Hk, S, D): one message per step
    for step in range(ranks):
        owner = (me - step) % ranks  # whose chunk kv is now
        requests, incoming = [], None
        if step < ranks - 1:  # pass this chunk on while attending to it
            incoming = torch.empty_like(kv)
            requests = dist.batch_isend_irecv([dist.P2POp(dist.isend, kv, send_to, group),
                                               dist.P2POp(dist.irecv, incoming, recv_from, group)])
        valid = chunk_valid[owner]
        if valid > 0:
            k_chunk, v_chunk = (kv[i, :, :, :valid].transpose(1, 2) for i in (0, 1))  # (B, valid, Hk, D)
            part, part_lse = attention_lse(q, k_chunk, v_chunk, scale=scale)
            out, lse = merge_partial(out, lse, part, part_lse)
        for request in requests:
            request.wait()
        if incoming is not None:
            kv = incoming
    return out.to(q.dtype)


# ---------------------------------------------------------------------------------------
# The callable a WanContext takes
# ---------------------------------------------------------------------------------------
class SequenceParallelAttention:
    """``attend(q, k, v) -> out`` on this rank's shard, over the whole sequence.

    ``shard``: this rank's :class:`SequenceShard` over the sequence-parallel group (Ulysses
    rank fastest). Pure Ulysses, pure Ring or USP follows from the state's groups.
    """

    def __init__(self, state: ParallelState, shard: SequenceShard, scale: float | None = None):
        config = state.config
        if shard.ranks != config.sequence:
            raise ValueError(f"SequenceParallelAttention: the shard spans {shard.ranks} ranks, the "
                             f"layout's sequence parallelism {config.sequence}")
        self.state, self.shard, self.scale = state, shard, scale
        block = shard.shard_length * config.ulysses  # tokens of one Ulysses group
        ring_lengths = [max(0, min(block, shard.length - j * block)) for j in range(config.ring)]
        self.ring_valid = ring_lengths
        self.ulysses_valid = ring_lengths[state.ring_rank]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q, k, v (B, S, H, D) -> (B, S, H, D)
        state = self.state
        if q.shape[1] != self.shard.shard_length:
            raise ValueError(f"sequence-parallel attention: q holds {q.shape[1]} tokens, the "
                             f"shard {self.shard.shard_length}")
        if state.ring_group is None:
            return ulysses_attention(q, k, v, group=state.ulysses_group,
                                     valid_length=self.ulysses_valid, scale=self.scale)
        q, k, v = (sequence_to_heads(t, state.ulysses_group) for t in (q, k, v))  # (B, U*S, H/U, D)
        out = ring_attention(q, k, v, group=state.ring_group, chunk_valid=self.ring_valid,
                             scale=self.scale)
        return heads_to_sequence(out, state.ulysses_group)

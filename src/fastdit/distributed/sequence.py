"""Splitting a token sequence across the sequence-parallel ranks, and gathering it back.

A sequence of ``L`` tokens is padded at its end to ``L_pad = ceil(L / N) * N`` and cut into
``N`` equal shards of ``S = L_pad / N`` tokens; sequence-parallel rank ``i`` holds the global
positions ``[i * S, (i + 1) * S)``, of which those ``>= L`` are padding (only the last ranks
hold any). Padded rows are zeros; attention leaves them out of its keys (Ulysses cuts them
off, Ring skips them per chunk), and every other layer of a DiT block works per token, so
they never reach a real token. :func:`gather_sequence` drops them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fastdit.distributed.groups import group_rank, group_size


@dataclass(frozen=True)
class SequenceShard:
    """Rank ``index`` of ``ranks`` holding its shard of a ``length``-token sequence."""

    length: int
    ranks: int = 1
    index: int = 0

    def __post_init__(self) -> None:
        if self.length < 1 or self.ranks < 1 or not 0 <= self.index < self.ranks:
            raise ValueError(f"SequenceShard: need length >= 1, ranks >= 1, 0 <= index < ranks; "
                             f"got length={self.length}, ranks={self.ranks}, index={self.index}")

    @classmethod
    def for_group(cls, length: int, group) -> "SequenceShard":
        """This rank's shard of ``length`` tokens split over ``group`` (None: one rank)."""
        return cls(length, group_size(group), group_rank(group))

    @property
    def shard_length(self) -> int:
        """Tokens per rank, padding included: ``S = ceil(L / N)``."""
        return -(-self.length // self.ranks)

    @property
    def padded_length(self) -> int:
        return self.shard_length * self.ranks

    @property
    def padding(self) -> int:
        return self.padded_length - self.length

    def bounds(self, index: int | None = None) -> tuple[int, int]:
        """Global positions ``[start, stop)`` of rank ``index``'s shard (padding included)."""
        index = self.index if index is None else index
        return index * self.shard_length, (index + 1) * self.shard_length

    def valid(self, index: int | None = None) -> int:
        """Real (non-padding) tokens in rank ``index``'s shard: a prefix of it."""
        start, stop = self.bounds(index)
        return max(0, min(stop, self.length) - start)

    @property
    def tokens(self) -> tuple[int, int]:
        """The global range of the real tokens this rank holds (``WanContext.tokens``; empty
        ``(L, L)`` on a rank that holds only padding)."""
        start, _ = self.bounds()
        start = min(start, self.length)
        return start, start + self.valid()

    def valid_mask(self, device=None) -> torch.Tensor:
        """``[S]`` bool: True for this rank's real tokens."""
        return torch.arange(self.shard_length, device=device) < self.valid()

    def pad_rows(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Pad this rank's ``valid()`` rows of ``t`` along ``dim`` with zeros to ``S`` rows (e.g.
        RoPE tables built for :attr:`tokens`)."""
        missing = self.shard_length - t.shape[dim]
        if missing < 0:
            raise ValueError(f"pad_rows: {t.shape[dim]} rows along dim {dim} exceed the shard's "
                             f"{self.shard_length}")
        if missing == 0:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t, t.new_zeros(shape)], dim=dim)

    def split(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's shard of the whole sequence ``x`` (``L`` along ``dim``), zero-padded to ``S``."""
        if x.shape[dim] != self.length:
            raise ValueError(f"split: x has {x.shape[dim]} tokens along dim {dim}, the shard "
                             f"plan {self.length}")
        start, _ = self.bounds()
        return self.pad_rows(x.narrow(dim, min(start, self.length), self.valid()), dim)


def split_sequence(x: torch.Tensor, group, dim: int = 1) -> tuple[torch.Tensor, SequenceShard]:
    """``x [B, L, D]`` -> (this rank's ``[B, S, D]`` shard, its :class:`SequenceShard`)."""
    shard = SequenceShard.for_group(x.shape[dim], group)
    return shard.split(x, dim), shard


def gather_sequence(x: torch.Tensor, shard: SequenceShard, group, dim: int = 1) -> torch.Tensor:
    """Every rank's ``[B, S, D]`` shard -> the whole ``[B, L, D]`` sequence, padding dropped.

    One all-gather over ``group`` (the identity when ``group`` is None).
    """
    if x.shape[dim] != shard.shard_length:
        raise ValueError(f"gather_sequence: the shard has {x.shape[dim]} tokens along dim {dim}, "
                         f"expected {shard.shard_length}")
    if group is None:
        return x.narrow(dim, 0, shard.length)
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(shard.ranks)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim).narrow(dim, 0, shard.length)


def pad_to(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Zero-pad ``x`` at the end of ``dim`` to ``size``."""
    missing = size - x.shape[dim]
    if missing <= 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, missing]
    return F.pad(x, pad)

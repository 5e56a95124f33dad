"""Sequence shards (one process: the split/gather arithmetic; the collectives are in
test_parallel.py) and the log-sum-exp attention with its merge."""

from __future__ import annotations

import math

import pytest
import torch

from fastdit.distributed.sequence import SequenceShard, gather_sequence, split_sequence
from fastdit.errors import ProviderError
from fastdit.ops.attention_lse import attention_lse, attention_lse_native, merge_partial


@pytest.mark.parametrize("length,ranks", [(16, 4), (13, 4), (9, 4), (1, 2), (45, 2)])
def test_shards_cover_the_sequence_once(length, ranks):
    x = torch.arange(length, dtype=torch.float32).view(1, length, 1)
    pieces, positions = [], []
    for index in range(ranks):
        shard = SequenceShard(length, ranks, index)
        local = shard.split(x)
        assert local.shape[1] == shard.shard_length == math.ceil(length / ranks)
        valid = shard.valid()
        start, stop = shard.tokens
        assert stop - start == valid
        assert torch.equal(local[0, :valid, 0], torch.arange(start, stop, dtype=torch.float32))
        assert torch.equal(local[0, valid:], torch.zeros_like(local[0, valid:]))  # padding
        assert torch.equal(shard.valid_mask(), torch.arange(shard.shard_length) < valid)
        pieces.append(local)
        positions += list(range(start, stop))
    assert positions == list(range(length))
    joined = torch.cat(pieces, dim=1)[:, :length]
    assert torch.equal(joined, x)


def test_one_rank_split_and_gather_are_identity():
    x = torch.randn(2, 7, 3)
    local, shard = split_sequence(x, None)
    assert torch.equal(local, x) and shard.ranks == 1
    assert torch.equal(gather_sequence(local, shard, None), x)


def test_shard_checks():
    with pytest.raises(ValueError, match="SequenceShard"):
        SequenceShard(5, 2, 2)
    with pytest.raises(ValueError, match="split: x has 4 tokens"):
        SequenceShard(5, 2, 0).split(torch.zeros(1, 4, 1))
    with pytest.raises(ValueError, match="gather_sequence: the shard has 2 tokens"):
        gather_sequence(torch.zeros(1, 2, 1), SequenceShard(5, 2, 0), None)


def _float64_reference(q, k, v):
    scores = torch.einsum("blhd,bmhd->bhlm", q.double(), k.double()) / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("bhlm,bmhd->blhd", torch.softmax(scores, dim=-1), v.double())
    return out, lse


def test_attention_lse_native_is_attention_and_logsumexp():
    q, k, v = (torch.randn(2, 9, 3, 16) for _ in range(3))
    out, lse = attention_lse_native(q, k, v)
    ref_out, ref_lse = _float64_reference(q, k, v)
    assert out.dtype == torch.float32 and lse.shape == (2, 3, 9)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    out2, lse2 = attention_lse(q, k, v)  # on the CPU the sdpa provider maps to the native spec
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(lse2, lse)


def test_attention_lse_checks_inputs():
    with pytest.raises(ValueError, match="attention_lse"):
        attention_lse(torch.zeros(1, 4, 2, 8), torch.zeros(1, 0, 2, 8), torch.zeros(1, 0, 2, 8))
    with pytest.raises(ValueError, match="attention_lse"):
        attention_lse(torch.zeros(1, 4, 2, 8), torch.zeros(1, 3, 2, 4), torch.zeros(1, 3, 2, 4))


@pytest.mark.parametrize("cuts", [[5], [1, 7], [3, 4, 9]])
def test_merging_key_chunks_gives_full_attention(cuts):
    q, k, v = torch.randn(1, 6, 2, 8), torch.randn(1, 11, 2, 8), torch.randn(1, 11, 2, 8)
    out = lse = None
    for start, stop in zip([0] + cuts, cuts + [11]):
        part, part_lse = attention_lse_native(q, k[:, start:stop], v[:, start:stop])
        out, lse = merge_partial(out, lse, part, part_lse)
    ref_out, ref_lse = _float64_reference(q, k, v)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


def test_a_provider_without_lse_cannot_serve_ring(monkeypatch):
    from fastdit.ops import registry

    sage = registry.Provider("attention", "sage", lambda *a, **k: None)
    monkeypatch.setattr(registry, "resolve", lambda *args, **kwargs: sage)
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ProviderError, match="'sage' does not return the log-sum-exp.*Ulysses"):
        attention_lse(q, q, q)

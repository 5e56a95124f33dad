"""In-process pieces of the pipeline wiring: the parallel= option's forms, the API's layout
errors before any weights load, shard-local modulation rows, one-process identities."""

from __future__ import annotations

import math

import pytest
import torch

import fastdit
from fastdit.distributed import ParallelConfig, SequenceShard, single_process
from fastdit.distributed.layout import AUTO, parallel_option
from fastdit.distributed.groups import ParallelState
from fastdit.distributed.pipeline import check_request, parallel_experts, plan_layout, share_from_writer
from fastdit.distributed.transformer import SequenceParallelTransformer, local_modulation
from fastdit.errors import UserError
from fastdit.pipelines.loading import LoadOptions


def test_parallel_option_forms():
    expected = ParallelConfig(ulysses=2, cfg=2)
    assert parallel_option("ulysses=2,cfg=2") == expected
    assert parallel_option(" cfg = 2 , ulysses=2 ") == expected
    assert parallel_option({"ulysses": 2, "cfg": 2}) == expected
    assert parallel_option(expected) is expected
    assert parallel_option("AUTO") == AUTO and parallel_option(None) is None
    assert LoadOptions(parallel="ring=4,vae=2").parallel == ParallelConfig(ring=4, vae=2)
    with pytest.raises(UserError, match="unknown field"):
        parallel_option({"tensor": 2})
    with pytest.raises(UserError, match="given twice"):
        parallel_option("ring=2,ring=2")
    with pytest.raises(UserError, match="a ParallelConfig, a dict"):
        LoadOptions(parallel=4)


def test_load_with_a_layout_but_one_process_fails_before_loading(tiny_model, monkeypatch):
    from fastdit.pipelines import loading

    monkeypatch.setattr(loading, "load_transformer", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(UserError, match=r"needs 2 processes; start them with .*--gpus 2.*torchrun"):
        fastdit.load(tiny_model("t2v"), device="cpu", parallel="ulysses=2")


def test_auto_and_plain_layouts_in_one_process(tiny_model):
    from fastdit.pipelines.spec import inspect_model

    spec = inspect_model(tiny_model("t2v"))
    assert plan_layout(None, spec, 1) is None and plan_layout("auto", spec, 1) is None
    assert plan_layout(ParallelConfig(), spec, 1) is None
    assert plan_layout("auto", spec, 4, guided=True) == ParallelConfig(ulysses=2, cfg=2, world_size=4)
    assert plan_layout("auto", spec, 2, guided=False, vae_tiling=True) == ParallelConfig(
        ulysses=2, vae=1, world_size=2)  # tiling: rank 0 decodes alone


@pytest.mark.parametrize("length,ranks,frames", [(27, 2, 3), (27, 4, 3), (12, 2, 3), (45, 4, 3),
                                                 (45, 2, 45), (7, 4, 1)])
def test_local_modulation_rows_equal_per_token_rows(length, ranks, frames):
    """Expanded over their tokens, the shard-local rows are the per-token rows of the shard."""
    per_frame = torch.randn(2, frames, 6, 5)  # (B, F, 6, D)
    per_token = per_frame.repeat_interleave(length // frames, dim=1)  # (B, L, 6, D)
    for index in range(ranks):
        shard = SequenceShard(length, ranks, index)
        rows = local_modulation(per_frame, shard, length)
        group = math.gcd(shard.shard_length, length // frames)
        assert rows.shape[1] == shard.shard_length // group  # fewer rows than tokens when it can
        expanded = rows.repeat_interleave(group, dim=1)  # (B, S, 6, D)
        valid = shard.valid()
        start = shard.bounds()[0]
        assert torch.equal(expanded[:, :valid], per_token[:, start:start + valid])
    assert local_modulation(torch.randn(2, 6, 5), SequenceShard(length, ranks), length).shape == (2, 6, 5)


def test_one_process_identities():
    state = single_process("cpu")
    value = torch.randn(3)
    assert share_from_writer(lambda: value, state) is value
    experts = [object()]
    assert parallel_experts(experts, state) == experts
    with pytest.raises(ValueError, match="ulysses \\* ring > 1"):
        SequenceParallelTransformer(torch.nn.Identity(), state)


def test_a_cfg_layout_refuses_an_unguided_request():
    state = ParallelState(config=ParallelConfig(cfg=2))
    check_request(state, guided=True)
    with pytest.raises(UserError, match="cfg=2 .* no guidance"):
        check_request(state, guided=False)

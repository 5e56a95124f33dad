"""Layout checks (before any weights load) and the rank mesh."""

from __future__ import annotations

import pytest

from fastdit.config import DistributedEnv
from fastdit.distributed import ParallelConfig, check_layout, init_parallel
from fastdit.errors import UserError, exit_code


def test_degrees_that_do_not_multiply_to_the_world():
    with pytest.raises(UserError, match=r"ulysses=2 x ring=2 x cfg=1 = 4 rank\(s\), but 8 process"):
        check_layout(ParallelConfig(ulysses=2, ring=2), world_size=8)
    with pytest.raises(UserError, match="must multiply to the number of processes"):
        ParallelConfig(ulysses=3, world_size=4)


@pytest.mark.parametrize("heads,ulysses,model", [(12, 8, "Wan2.1-1.3B"), (40, 3, "Wan2.1-14B")])
def test_more_ulysses_ranks_than_heads_allow(heads, ulysses, model):
    with pytest.raises(UserError, match=f"ulysses={ulysses} does not divide the {heads} attention "
                                        f"heads of {model}") as info:
        check_layout(ParallelConfig(ulysses=ulysses), heads=heads, model=model)
    assert "use ring" in str(info.value)
    assert exit_code(info.value) == 2  # a UserError: the CLI exits with 2


def test_heads_that_divide_pass():
    config = check_layout(ParallelConfig(ulysses=4, ring=2), world_size=8, heads=12, guided=True)
    assert config.world_size == 8 and config.sequence == 8
    check_layout(ParallelConfig(ulysses=8), heads=40)


def test_cfg_needs_guidance_and_is_1_or_2():
    with pytest.raises(UserError, match="cfg=2 .* no guidance"):
        check_layout(ParallelConfig(cfg=2), guided=False)
    check_layout(ParallelConfig(cfg=2), guided=True)
    with pytest.raises(UserError, match="cfg must be 1 or 2"):
        ParallelConfig(cfg=4)


@pytest.mark.parametrize("fields", [dict(ulysses=0), dict(ring=-1), dict(cfg=True), dict(ring=1.5),
                                    dict(vae=0), dict(world_size=0), dict(vae=5, ring=4)])
def test_bad_degrees(fields):
    with pytest.raises(UserError, match="parallel layout"):
        ParallelConfig(**fields)


def test_multi_rank_layout_without_a_launch_says_how_to_start_one():
    with pytest.raises(UserError, match="--nproc-per-node 4 .*--gpus 4"):
        init_parallel(ParallelConfig(ulysses=2, ring=2), env=DistributedEnv(), backend="gloo")


def test_single_process_needs_no_process_group():
    state = init_parallel(ParallelConfig(), env=DistributedEnv(), device="cpu")
    assert state.world_size == 1 and state.is_writer and state.sp_group is None
    assert state.vae_rank == 0


def test_mesh_coordinates_round_trip():
    config = ParallelConfig(ulysses=2, ring=2, cfg=2)
    seen = set()
    for rank in range(8):
        c, r, u = config.coordinates(rank)
        assert config.rank_of(c, r, u) == rank
        seen.add((c, r, u))
    assert len(seen) == 8
    assert config.coordinates(1) == (0, 0, 1)  # Ulysses varies fastest
    assert config.coordinates(2) == (0, 1, 0)
    assert config.coordinates(4) == (1, 0, 0)


@pytest.mark.parametrize("world,heads,guided,expected", [
    (8, 12, True, (4, 1, 2)), (8, 40, False, (8, 1, 1)), (8, 12, False, (4, 2, 1)),
    (4, 2, True, (2, 1, 2)), (6, 40, True, (1, 3, 2)), (1, 12, True, (1, 1, 1))])
def test_auto_layout(world, heads, guided, expected):
    config = ParallelConfig.auto(world, heads=heads, guided=guided)
    assert (config.ulysses, config.ring, config.cfg) == expected
    check_layout(config, world_size=world, heads=heads, guided=guided)


def test_describe():
    assert ParallelConfig(ulysses=2, cfg=2).describe() == "ulysses 2 x cfg 2 (4 ranks), vae 4"
    assert ParallelConfig().describe() == "1 rank (1 ranks), vae 1"

"""What each spawned rank runs (module-level functions, so spawn can import them)."""

from __future__ import annotations

from pathlib import Path

import torch

from fastdit.distributed import (
    CFGParallel,
    ParallelConfig,
    SequenceParallelAttention,
    SequenceShard,
    gather_sequence,
    init_parallel,
    parallel_vae_decode,
    sequence_parallel_forward,
)
from fastdit.distributed.groups import close_parallel
from tests.distributed import cases


def _state(env, **fields):
    return init_parallel(ParallelConfig(**fields), env=env, backend="gloo", device="cpu")


def _attention(env, world: int) -> dict:
    out = {}
    for name, (fields, size, length, heads) in cases.ATTENTION_CASES.items():
        if size != world:
            continue
        state = _state(env, **fields)
        q, k, v = cases.attention_inputs(length, heads)
        shard = SequenceShard.for_group(length, state.sp_group)
        local = SequenceParallelAttention(state, shard)(shard.split(q), shard.split(k), shard.split(v))
        out[name] = gather_sequence(local, shard, state.sp_group)
    return out


def _models(workdir: Path):
    vaes, model = cases.empty_models()
    saved = torch.load(workdir / "models.pt")
    for name, vae in vaes.items():
        vae.load_state_dict(saved[name])
    model.load_state_dict(saved["transformer"])
    return vaes, model


def _transformer(env, world: int, model) -> dict:
    out = {}
    inputs = cases.transformer_inputs()
    for name, (fields, size) in cases.TRANSFORMER_CASES.items():
        if size == world:
            state = _state(env, **fields)
            out["transformer/" + name] = sequence_parallel_forward(
                model, state, inputs["latents"], inputs["timestep"], inputs["text"])
    for name, (fields, size) in cases.CFG_CASES.items():
        if size == world:
            state = _state(env, **fields)
            branches = cases.Branches(
                lambda x, t, text: sequence_parallel_forward(model, state, x, t, text),
                [inputs["text"], inputs["negative"]])
            strategy = CFGParallel(cases.GUIDANCE_SCALE, state)
            out[name] = strategy(branches, inputs["latents"], inputs["timestep"], 0)
    return out


def _vae(env, world: int, vaes) -> dict:
    state = _state(env, world_size=world, ulysses=1, ring=world)  # vae = every rank
    return {f"vae{world}/{name}": parallel_vae_decode(vae, cases.vae_latents(name), state.vae_group)
            for name, vae in vaes.items()}


def run_all(rank: int, env, workdir: Path) -> dict:
    """Every case of this world size, in one process group."""
    torch.manual_seed(0)
    world = env.world_size
    root = _state(env, ring=world)  # joins the process group; later states reuse it
    vaes, model = _models(workdir)
    out = _attention(env, world)
    with torch.no_grad():
        out.update(_transformer(env, world, model))
        out.update(_vae(env, world, vaes))
    close_parallel(root)
    return out

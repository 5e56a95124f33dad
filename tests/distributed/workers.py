"""What each spawned rank runs (module-level functions, so spawn can import them).

``workdir/models.pt`` holds the tiny models' weights; ``workdir/setup.pt`` (optional) the
backend and device type (default gloo on the CPU; the GPU tests use NCCL on ``cuda:rank``).
"""

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
from fastdit.distributed.groups import broadcast_from_writer, close_parallel
from fastdit.pipelines.guidance import BranchModel
from tests.distributed import cases


class _Run:
    def __init__(self, env, workdir: Path):
        setup = torch.load(workdir / "setup.pt") if (workdir / "setup.pt").exists() else {}
        self.env, self.world = env, env.world_size
        self.backend = setup.get("backend", "gloo")
        kind = setup.get("device", "cpu")
        self.device = torch.device(kind, env.rank) if kind != "cpu" else torch.device("cpu")
        if self.device.type == "cuda":  # exact fp32 on both sides of the comparison
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def state(self, **fields):
        return init_parallel(ParallelConfig(**fields), env=self.env, backend=self.backend,
                             device=self.device)

    def to(self, *tensors):
        return tuple(t.to(self.device) for t in tensors)


def _attention(run: _Run) -> dict:
    out = {}
    for name, (fields, size, length, heads) in cases.ATTENTION_CASES.items():
        if size != run.world:
            continue
        state = run.state(**fields)
        q, k, v = run.to(*cases.attention_inputs(length, heads))
        shard = SequenceShard.for_group(length, state.sp_group)
        local = SequenceParallelAttention(state, shard)(shard.split(q), shard.split(k), shard.split(v))
        out[name] = gather_sequence(local, shard, state.sp_group)
    return out


def _models(run: _Run, workdir: Path):
    vaes, model = cases.empty_models()
    saved = torch.load(workdir / "models.pt")
    for name, vae in vaes.items():
        vae.load_state_dict(saved[name])
        vae.to(run.device)
    model.load_state_dict(saved["transformer"])
    return vaes, model.to(run.device)


def _transformer(run: _Run, model) -> dict:
    out = {}
    inputs = {name: t.to(run.device) for name, t in cases.transformer_inputs().items()}
    for name, (fields, size) in cases.TRANSFORMER_CASES.items():
        if size == run.world:
            state = run.state(**fields)
            out["transformer/" + name] = sequence_parallel_forward(
                model, state, inputs["latents"], inputs["timestep"], inputs["text"])
    for name, (fields, size) in cases.CFG_CASES.items():
        if size == run.world:
            state = run.state(**fields)
            branches = BranchModel(
                lambda x, t, text, image, state=state: sequence_parallel_forward(model, state, x, t, text, image),
                [inputs["text"], inputs["negative"]])
            strategy = CFGParallel(cases.GUIDANCE_SCALE, state)
            out[name] = strategy(branches, inputs["latents"], inputs["timestep"], 0)
    return out


def _vae(run: _Run, vaes) -> dict:
    state = run.state(ring=run.world)  # vae = every rank
    return {f"vae{run.world}/{name}": parallel_vae_decode(vae, *run.to(cases.vae_latents(name)),
                                                          state.vae_group)
            for name, vae in vaes.items()}


def run_all(rank: int, env, workdir: Path) -> dict:
    """Every case of this world size, in one process group; results on the CPU."""
    torch.manual_seed(0)
    run = _Run(env, workdir)
    root = run.state(ring=run.world)  # joins the process group; later states reuse it
    vaes, model = _models(run, workdir)
    out = _attention(run)
    out["broadcast"] = broadcast_from_writer(torch.full((3,), float(rank + 1), device=run.device), root)
    with torch.no_grad():
        out.update(_transformer(run, model))
        out.update(_vae(run, vaes))
    close_parallel(root)
    return {name: t.cpu() for name, t in out.items()}

"""What each spawned rank runs for tests/distributed/test_pipeline_parallel.py: every case of
its world size through ``fastdit.load(..., parallel=...)`` and ``generate``, in one process
group. ``workdir/models.pt`` maps task -> tiny model folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tests.distributed import pipeline_cases as cases


def run_pipelines(rank: int, env, workdir: Path) -> dict:
    import fastdit
    from fastdit.distributed import ParallelConfig, close_parallel, init_parallel

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(env.world_size), MASTER_ADDR=env.master_addr,
                      MASTER_PORT=str(env.master_port))
    folders = torch.load(workdir / "models.pt")
    root = init_parallel(ParallelConfig(ring=env.world_size), backend="gloo", device="cpu")  # reused below
    out = {}
    for name, (request, layout, world) in cases.CASES.items():
        if world != env.world_size:
            continue
        pipe = fastdit.load(folders[cases.REQUESTS[request][0]], device="cpu", dtype=torch.float32,
                            parallel=layout)
        result = cases.generate(pipe, request)
        out[name + "/frames"] = result["frames"]
        out[name + "/steps"] = result["steps"]
        out[name + "/text_encoder_loaded"] = torch.tensor(pipe.text_encoder is not None)
    close_parallel(root)
    return out

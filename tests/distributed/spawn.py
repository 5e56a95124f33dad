"""Run a function on N gloo ranks in spawned processes, with a deadline, and collect what
each rank returns (a dict of tensors, saved with torch.save)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from fastdit.config import DistributedEnv
from fastdit.distributed.launch import free_port


def _entry(rank: int, fn, world: int, port: int, workdir: str) -> None:
    torch.set_num_threads(1)
    env = DistributedEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world,
                         master_addr="127.0.0.1", master_port=port)
    results = fn(rank, env, Path(workdir))
    torch.save(results, Path(workdir) / f"rank{rank}.pt")


def run_ranks(fn, world: int, workdir: Path, timeout_s: float = 240.0) -> list[dict]:
    """``fn(rank, env, workdir) -> dict`` on ranks ``0 .. world - 1``; their dicts, by rank.

    A rank that raises fails the call with its traceback; past ``timeout_s`` every rank is
    killed and TimeoutError raised.
    """
    context = mp.start_processes(_entry, args=(fn, world, free_port(), str(workdir)), nprocs=world,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} ranks did not finish within {timeout_s:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
    return [torch.load(workdir / f"rank{r}.pt") for r in range(world)]

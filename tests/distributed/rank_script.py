"""A tiny program for the launcher tests: joins the process group through fastdit, sums the
ranks with one all-reduce, and prints from rank 0 only (other ranks print a marker that must
not reach the terminal). ``fail``: rank 1 exits with code 3 before the all-reduce."""

import sys

import torch
import torch.distributed as dist

from fastdit.distributed import ParallelConfig, close_parallel, init_parallel, rank_output


def main(mode: str, world: int) -> int:
    state = init_parallel(ParallelConfig(ring=world), backend="gloo", device="cpu")
    if mode == "fail" and state.rank == 1:
        print("rank 1 is failing on purpose", flush=True)
        return 3
    total = torch.tensor([state.rank + 1.0])
    dist.all_reduce(total)
    print(f"marker from rank {state.rank}", flush=True)  # every rank prints this
    with rank_output(state.rank):
        print(f"rank {state.rank}: sum {total.item():.0f} of {state.world_size} ranks", flush=True)
    close_parallel(state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))

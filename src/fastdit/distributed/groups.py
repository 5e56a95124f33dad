"""Process groups for a :class:`ParallelConfig`: the world, and its CFG, sequence (Ulysses x
Ring), Ulysses, Ring and VAE sub-groups, on the platform's backend (NCCL on CUDA, RCCL behind
the same name on ROCm, gloo on the CPU).

    state = init_parallel(ParallelConfig(ulysses=2, ring=2))   # torchrun's variables
    state.sp_group, state.ulysses_group, state.ring_group, state.cfg_group, state.vae_group
    state.is_writer                                              # rank 0 writes the video
    close_parallel(state)

A one-process run needs no torch.distributed at all: :func:`single_process` gives the state
whose groups are all None, and every collective in this package is then the identity.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from fastdit.config import DistributedEnv, distributed_env
from fastdit.distributed.layout import ParallelConfig, check_layout
from fastdit.errors import UserError

log = logging.getLogger("fastdit.distributed")

DEFAULT_TIMEOUT_S = 600.0


@dataclass
class ParallelState:
    """This process's place in the rank mesh and the groups it belongs to.

    ``cfg_rank``, ``ring_rank``, ``ulysses_rank``: mesh coordinates; ``sp_rank`` (``ring_rank *
    ulysses + ulysses_rank``) its position in the sequence-parallel group. A group is None when
    its size is 1 (nothing to communicate). ``vae_group`` holds ranks ``0 .. vae - 1``;
    ``vae_rank`` is None on ranks outside it.
    """

    config: ParallelConfig
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    cfg_group: object | None = None
    sp_group: object | None = None
    ulysses_group: object | None = None
    ring_group: object | None = None
    vae_group: object | None = None
    owns_process_group: bool = False

    @property
    def world_size(self) -> int:
        return self.config.world

    @property
    def is_writer(self) -> bool:
        """Rank 0 saves the video and prints the summary."""
        return self.rank == 0

    @property
    def coordinates(self) -> tuple[int, int, int]:
        return self.config.coordinates(self.rank)

    @property
    def cfg_rank(self) -> int:
        return self.coordinates[0]

    @property
    def ring_rank(self) -> int:
        return self.coordinates[1]

    @property
    def ulysses_rank(self) -> int:
        return self.coordinates[2]

    @property
    def sp_rank(self) -> int:
        return self.ring_rank * self.config.ulysses + self.ulysses_rank

    @property
    def vae_rank(self) -> int | None:
        return self.rank if self.rank < self.config.vae_ranks else None


def single_process(device: torch.device | str | None = None) -> ParallelState:
    """The state of a one-process run (no torch.distributed)."""
    return ParallelState(config=ParallelConfig(), device=torch.device(device or "cpu"))


def init_parallel(config: ParallelConfig, *, env: DistributedEnv | None = None,
                  backend: str | None = None, device: torch.device | str | None = None,
                  heads: int | None = None, guided: bool | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> ParallelState:
    """Join (or reuse) the default process group and build the mesh's sub-groups.

    ``env``: the launch (default: torchrun's variables through :func:`fastdit.config.distributed_env`);
    ``backend``: default the platform's (``nccl``/``gloo``); ``device``: default the platform's
    device ``local_rank`` (made current on GPUs); ``heads``/``guided``: checked by
    :func:`check_layout` first, so a bad layout fails before anything connects. Every rank
    must call this with the same config.
    """
    from fastdit.platforms import current_platform

    env = distributed_env() if env is None else env
    already = dist.is_available() and dist.is_initialized()
    if already:
        world, rank = dist.get_world_size(), dist.get_rank()
    elif env.launched:
        world, rank = env.world_size, env.rank
    else:
        world, rank = 1, 0
    if world == 1 and config.world > 1 and not env.launched:
        raise UserError(f"parallel layout {config.describe()} needs {config.product} processes; "
                        f"start them with `torchrun --nproc-per-node {config.product} -m fastdit "
                        f"generate ...` or `fastdit generate --gpus {config.product} ...`")
    config = check_layout(config, world_size=world, heads=heads, guided=guided)
    platform = current_platform()
    if device is None:
        local = env.local_rank if env.local_rank is not None else rank
        device = platform.device(local if platform.device_type != "cpu" else None)
    device = torch.device(device)
    if device.type != "cpu" and device.index is not None:
        platform.set_device(device.index)
    if world == 1:
        return ParallelState(config=config, device=device)

    backend = backend or platform.dist_backend
    owns = False
    if not already:
        if env.master_addr is None or env.master_port is None:
            raise UserError("distributed launch: MASTER_ADDR and MASTER_PORT must be set "
                            "(torchrun and `fastdit generate --gpus` set them)")
        dist.init_process_group(backend=backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                                rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        owns = True
    else:
        backend = dist.get_backend()
    state = ParallelState(config=config, rank=rank, device=device, backend=backend,
                          owns_process_group=owns)
    _build_groups(state)
    log.info("distributed: rank %d/%d on %s (%s), layout %s", rank, world, device, backend,
             config.describe())
    return state


def _build_groups(state: ParallelState) -> None:
    """Every rank creates every group, in the same order (torch.distributed's rule)."""
    cfg = state.config
    c0, r0, u0 = state.coordinates

    def make(ranks: list[int]):
        group = dist.new_group(ranks) if len(ranks) > 1 else None
        return group if state.rank in ranks else None

    for r in range(cfg.ring):
        for u in range(cfg.ulysses):
            group = make([cfg.rank_of(c, r, u) for c in range(cfg.cfg)])
            if (r, u) == (r0, u0):
                state.cfg_group = group
    for c in range(cfg.cfg):
        group = make([cfg.rank_of(c, r, u) for r in range(cfg.ring) for u in range(cfg.ulysses)])
        if c == c0:
            state.sp_group = group
        for r in range(cfg.ring):
            group = make([cfg.rank_of(c, r, u) for u in range(cfg.ulysses)])
            if (c, r) == (c0, r0):
                state.ulysses_group = group
        for u in range(cfg.ulysses):
            group = make([cfg.rank_of(c, r, u) for r in range(cfg.ring)])
            if (c, u) == (c0, u0):
                state.ring_group = group
    state.vae_group = make(list(range(cfg.vae_ranks)))


def close_parallel(state: ParallelState) -> None:
    """Leave the process group if :func:`init_parallel` created it."""
    if state.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()
        state.owns_process_group = False


def group_size(group) -> int:
    """Ranks in ``group`` (1 for None)."""
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    """This rank's index in ``group`` (0 for None)."""
    return 0 if group is None else dist.get_rank(group)


def global_rank(group, index: int) -> int:
    """The global rank of member ``index`` of ``group``."""
    return index if group is None else dist.get_global_rank(group, index)


def broadcast_from_writer(tensor: torch.Tensor, state: ParallelState) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (in place; the identity in a one-process run): for
    the initial noise and the text embeddings, computed on the writer and shared."""
    if state.world_size > 1:
        dist.broadcast(tensor, src=0)
    return tensor

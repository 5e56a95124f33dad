"""``fastdit generate`` on several GPUs: the flags, the layout check before anything loads, and
the launch of the ranks.

    fastdit generate --gpus 4 ...                          # 4 processes, layout "auto"
    fastdit generate --gpus 8 --parallel ulysses=4,cfg=2 ...
    fastdit generate --parallel ring=2 ...                 # 2 processes (the layout's product)
    torchrun --nproc-per-node 4 -m fastdit generate ...    # torchrun starts them instead

``cmd_generate`` calls :func:`parallel_layout` after its own input checks (a bad layout is one
line and exit code 2, before any process starts or any weights load), then
:func:`start_ranks`: in the process the user started with ``--gpus N`` (N > 1) it launches N
copies of the same command and returns their exit code; in a rank (launched by it or by
torchrun) it returns None and the command carries on with ``parallel=layout``. Ranks other
than 0 print nothing but errors (unless ``--all-ranks``). Rank 0 writes the video
and prints the summary.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from fastdit.cli import UsageError
from fastdit.config import distributed_env
from fastdit.distributed.layout import ParallelConfig

log = logging.getLogger("fastdit")


def add_parallel_arguments(p: argparse.ArgumentParser) -> None:
    """``--gpus``, ``--parallel``, ``--all-ranks``."""
    group = p.add_argument_group("several GPUs (docs/guide.md)")
    group.add_argument("--gpus", type=int, default=None, metavar="N",
                       help="run on N processes, one per GPU (default: 1, or the --parallel layout's "
                            "product); leave it out under torchrun")
    group.add_argument("--parallel", default=None, metavar="SPEC",
                       help='the layout, e.g. "ulysses=2,ring=2,cfg=2,vae=8": degrees that multiply to '
                            'the process count (vae: ranks that decode, default all); "auto" (the '
                            "default with several processes): cfg 2 when guided, then as much Ulysses "
                            "as the heads allow, ring for the rest")
    group.add_argument("--all-ranks", action="store_true",
                       help="let every rank print (default: only rank 0 prints)")


def parallel_layout(args: argparse.Namespace, spec, resolved, device) -> ParallelConfig | None:
    """The checked layout of this command (None: one process), before anything loads.

    The process count is torchrun's ``WORLD_SIZE`` in a launched rank, else ``--gpus``, else
    the ``--parallel`` layout's product; in a launched rank other than 0, stdout and logging go
    quiet first (unless ``--all-ranks``). ``resolved``: the checked request (its guidance
    decides whether ``cfg=2`` is allowed and what ``auto`` picks); ``device``: the parsed
    ``--device`` (or None). Raises a one-line UserError (exit code 2).
    """
    from fastdit.distributed.launch import needs_launch
    from fastdit.distributed.layout import parallel_option
    from fastdit.distributed.pipeline import plan_layout

    env = distributed_env()
    if env.launched and env.rank and not args.all_ranks:
        quiet_rank()  # from here on: a rank other than 0 prints nothing but errors
    needs_launch(args.gpus, env)  # --gpus < 1, or --gpus against torchrun's world: an error
    option = parallel_option(args.parallel)
    if env.launched:
        world = env.world_size
    elif args.gpus is not None:
        world = args.gpus
    else:
        world = option.product if isinstance(option, ParallelConfig) else 1
    layout = plan_layout(option, spec, world, guided=resolved.guided, vae_tiling=args.vae_tiling)
    if layout is not None:
        _check_devices(layout, device, env)
    return layout


def _check_devices(layout: ParallelConfig, device, env) -> None:
    from fastdit.platforms import current_platform

    if device is not None and device.type != "cpu" and device.index is not None:
        raise UsageError(f"--device {device} names one GPU, but each of the {layout.world} ranks runs "
                         f"on its own; give --device {device.type} or leave it out")
    platform = current_platform()
    kind = device.type if device is not None else platform.device_type
    if kind == "cpu":
        return
    local = env.local_world_size if env.launched and env.local_world_size else layout.world
    count = platform.device_count()
    if local > count:
        raise UsageError(f"{local} processes on this machine need {local} GPUs, but it has {count}")


def start_ranks(args: argparse.Namespace, layout: ParallelConfig | None) -> int | None:
    """The launch hook: the N ranks' exit code when this process must start them, else None
    (a plain run, or this process is a rank)."""
    from fastdit.distributed.launch import launch_fastdit, needs_launch

    world = layout.world if layout is not None else 1
    if needs_launch(world):
        log.info("starting %d processes (%s); rank 0 writes the video", world, layout.describe())
        return launch_fastdit(args.argv, world, verbose_ranks=args.all_ranks)
    return None


def quiet_rank() -> None:
    """For the rest of this process: stdout goes nowhere and the ``fastdit`` logger shows
    errors only (errors still reach stderr)."""
    logging.getLogger("fastdit").setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - open until the process exits

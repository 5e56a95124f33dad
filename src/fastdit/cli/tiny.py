"""``fastdit make-tiny-model``: a tiny random Wan model for tests and the demo.

It never deletes or overwrites anything but a folder it wrote itself (its ``.fastdit-tiny-model``
marker lists the files), unless ``--force``; the model is built in a hidden folder and renamed
into place, so an interruption leaves nothing behind.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fastdit.cli import UsageError
from fastdit.cli.generate import _quiet_libraries
from fastdit.errors import UserError


# ---------------------------------------------------------------------------------------
def add_make_tiny_model(sub: argparse._SubParsersAction) -> None:
    from fastdit.pipelines.spec import TINY_TASKS as TASKS

    p = sub.add_parser("make-tiny-model", help="write a tiny random Wan model (for tests and the demo)",
                       description="Write a tiny random diffusers-format Wan model. Its weights are "
                                   "random: the videos it makes are noise.")
    p.add_argument("directory", help="folder to write (created; a tiny model there is replaced, "
                                     "any other non-empty folder only with --force)")
    p.add_argument("--task", default="t2v", choices=TASKS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace the folder whatever it holds")
    p.set_defaults(func=cmd_make_tiny_model)


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    folder = Path(args.directory)
    if not args.directory:
        raise UsageError("the folder name is empty")
    from fastdit.pipelines import tiny  # imports torch: after the argument checks

    try:
        if not args.force:
            tiny.check_replaceable(folder)
    except UserError as exc:
        raise UsageError(str(exc).replace("(force=True) ", "")) from None
    _quiet_libraries(args.verbose)
    start = time.perf_counter()
    tiny.make_tiny_model(folder, task=args.task, seed=args.seed, force=args.force)
    print(f"wrote a tiny random {args.task} Wan model to {folder} in {time.perf_counter() - start:.1f} s "
          "(random weights: its videos are noise)")
    return 0

"""``fastdit make-tiny-model``: a tiny random Wan model for tests and the demo."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from fastdit.cli import UsageError
from fastdit.cli.generate import _check_writable_dir, _quiet_libraries


# ---------------------------------------------------------------------------------------
def add_make_tiny_model(sub: argparse._SubParsersAction) -> None:
    from fastdit.pipelines.spec import TINY_TASKS as TASKS

    p = sub.add_parser("make-tiny-model", help="write a tiny random Wan model (for tests and the demo)",
                       description="Write a tiny random diffusers-format Wan model. Its weights are "
                                   "random: the videos it makes are noise.")
    p.add_argument("directory", help="folder to write (created; an existing model there is replaced)")
    p.add_argument("--task", default="t2v", choices=TASKS)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_tiny_model)


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    folder = Path(args.directory)
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"{folder} exists and is not a folder")
        if any(folder.iterdir()) and not (folder / "model_index.json").is_file():
            raise UsageError(f"{folder} exists, is not empty and holds no model: choose another folder")
        _check_writable_dir(folder, what=f"a model into {folder}")
    else:
        parent = folder.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        _check_writable_dir(parent, what=f"a model into {folder}")
    _quiet_libraries(args.verbose)
    from fastdit.pipelines.tiny import make_tiny_model

    start = time.perf_counter()
    if folder.exists() and (folder / "model_index.json").is_file():
        for sub in ("transformer", "transformer_2", "image_encoder", "image_processor"):
            shutil.rmtree(folder / sub, ignore_errors=True)  # a previous task's extra parts
    make_tiny_model(folder, task=args.task, seed=args.seed)
    print(f"wrote a tiny random {args.task} Wan model to {folder} in {time.perf_counter() - start:.1f} s "
          "(random weights: its videos are noise)")
    return 0

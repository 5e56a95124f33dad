"""``fastdit compare A B [--json]``: PSNR / SSIM / LPIPS of video B against video A.

The command lives in :mod:`fastdit.quality_cli` (next to :mod:`fastdit.quality`, which it
calls); this module registers it in the CLI package's command list.
"""

from __future__ import annotations

import argparse

from fastdit.quality_cli import add_compare as _add_compare
from fastdit.quality_cli import cmd_compare

__all__ = ["add_compare", "cmd_compare"]


def add_compare(sub: argparse._SubParsersAction) -> None:
    _add_compare(sub)

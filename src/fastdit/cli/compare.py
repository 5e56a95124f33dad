"""``fastdit compare A B``: PSNR / SSIM (/ LPIPS) of two videos (:mod:`fastdit.quality`)."""

from __future__ import annotations

import argparse


def add_compare(sub: argparse._SubParsersAction) -> None:
    from fastdit.quality_cli import add_compare as add

    add(sub)

"""``fastdit serve``: the HTTP video server (:mod:`fastdit.serving`, docs/serving.md)."""

from __future__ import annotations

import argparse


def add_serve(sub: argparse._SubParsersAction) -> None:
    from fastdit.serving.cli import add_serve as add

    add(sub)

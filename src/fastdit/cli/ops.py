"""``fastdit ops``: the op / provider table of this machine."""

from __future__ import annotations

import argparse
import json

from fastdit.config import get_config


# ---------------------------------------------------------------------------------------
def _cmd_ops(args: argparse.Namespace) -> int:
    from fastdit.ops.registry import provider_table
    from fastdit.platforms import current_platform

    platform = current_platform()
    rows = provider_table()
    if args.json:
        print(json.dumps({"platform": platform.describe(), "ops": rows}, indent=2))
        return 0
    info = platform.describe()
    print(f"platform: {info['platform']}  device: {info['device']}  "
          f"compute capability: {info['compute_capability']}  hopper: {info['hopper']}  "
          f"torch.compile dependable: {info['compile_dependable']}  "
          f"distributed: {info['dist_backend']}")
    print(f"strict mode: {get_config().kernel.strict}  "
          f"attention backend: {get_config().kernel.attention_backend}")
    header = ("op", "providers (priority order)", "available here", "chosen")
    table = [header] + [(r["op"], " > ".join(r["priority"]) + _others(r), ", ".join(r["available"]),
                         r["chosen"] or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _others(row: dict) -> str:
    rest = [p for p in row["providers"] if p not in row["priority"]]
    return f" (also: {', '.join(rest)})" if rest else ""


def add_ops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ops", help="print the op/provider table for this machine")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_ops)

"""Command line: ``fastdit ops | generate | make-tiny-model``.

Each sub-command lives in a small ``_cmd_*`` function; errors a user can fix are reported as
one line on stderr with exit code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from fastdit.config import get_config

log = logging.getLogger("fastdit")


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else getattr(logging, get_config().log_level, logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[fastdit] %(message)s"))
    root = logging.getLogger("fastdit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# ---------------------------------------------------------------------------------------
# fastdit ops
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


def _add_ops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ops", help="print the op/provider table for this machine")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_ops)


# ---------------------------------------------------------------------------------------
# fastdit generate | make-tiny-model (implemented in fastdit.pipelines.cli_commands)
# ---------------------------------------------------------------------------------------
def _add_generate(sub: argparse._SubParsersAction) -> None:
    from fastdit.pipelines.cli_commands import add_generate

    add_generate(sub)


def _add_make_tiny_model(sub: argparse._SubParsersAction) -> None:
    from fastdit.pipelines.cli_commands import add_make_tiny_model

    add_make_tiny_model(sub)


# Sub-command builders; other modules add theirs here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_ops, _add_generate, _add_make_tiny_model]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (exit code 2), like fastdit's own errors."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastdit", description="fast inference for Wan video DiTs")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    from fastdit.ops.registry import ProviderError  # after parsing: --help needs no torch

    try:
        return int(args.func(args) or 0)
    except (UsageError, ProviderError) as exc:
        print(f"fastdit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastdit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

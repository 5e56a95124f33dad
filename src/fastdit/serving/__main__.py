"""``python -m fastdit.serving --model PATH [...]``: the same command as ``fastdit serve``."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    from fastdit.errors import UserError
    from fastdit.serving.cli import add_serve_arguments, cmd_serve

    parser = argparse.ArgumentParser(prog="fastdit serve", description="Serve a Wan model over HTTP.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [fastdit serve] %(message)s", "%H:%M:%S"))
    root = logging.getLogger("fastdit")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    root.propagate = False
    try:
        return cmd_serve(args)
    except UserError as exc:
        print(f"fastdit serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``fastdit ops | generate | make-tiny-model | serve | compare``.

One module per sub-command (``cli/ops.py``, ``cli/generate.py``, ``cli/tiny.py``), each with an
``add_*(subparsers)`` builder listed in :data:`COMMANDS`. Every exception that reaches
:func:`main` goes through the one error hierarchy (:mod:`fastdit.errors`) to ONE line on stderr
and an exit code:

=====================================================  =====
a user error (arguments, files, model folder, device,  2
``FASTDIT_*`` values, a request too large, out of
memory, an output that cannot be written)
Ctrl-C (SIGINT)                                        130
SIGTERM / SIGHUP (cleanup runs first, as for Ctrl-C)   143 / 129
an internal error (a bug: the traceback with ``-v``)   1
=====================================================  =====
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import traceback
from typing import Callable, Iterator, Sequence

from fastdit.errors import Terminated, UserError, as_fastdit_error, exit_code, first_line

log = logging.getLogger("fastdit")


class UsageError(UserError):
    """A problem with the command-line input: printed as one line, exit code 2."""


def setup_logging(verbose: bool = False) -> None:
    from fastdit.config import get_config  # parses FASTDIT_*: a bad value is a ConfigError

    level = logging.DEBUG if verbose else getattr(logging, get_config().log_level, logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[fastdit] %(message)s"))
    root = logging.getLogger("fastdit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _add_ops(sub: argparse._SubParsersAction) -> None:
    from fastdit.cli.ops import add_ops

    add_ops(sub)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from fastdit.cli.generate import add_generate

    add_generate(sub)


def _add_make_tiny_model(sub: argparse._SubParsersAction) -> None:
    from fastdit.cli.tiny import add_make_tiny_model

    add_make_tiny_model(sub)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from fastdit.cli.serve import add_serve

    add_serve(sub)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from fastdit.cli.compare import add_compare

    add_compare(sub)


# Sub-command builders; other modules add theirs here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ops, _add_generate, _add_make_tiny_model, _add_serve, _add_compare]


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


@contextlib.contextmanager
def termination_raises() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`~fastdit.errors.Terminated` while the command runs, so
    its cleanup (partial files, the encoder process) runs as for Ctrl-C; the previous handlers
    come back afterwards. Only in the main thread (signals are delivered there)."""
    from fastdit.pipelines.atomic import TERMINATING_SIGNALS, raise_terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, raise_terminated) for sig in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --gpus N runs again per rank
    with termination_raises():
        try:
            setup_logging(args.verbose)
            return int(args.func(args) or 0)
        except Terminated as exc:
            print(f"fastdit {args.command}: terminated by {signal.Signals(exc.signum).name}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"fastdit {args.command}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader went away (``fastdit ops | head``): nothing to report
            _silence_stdout()
            return 0
        except Exception as exc:  # noqa: BLE001 - mapped to one line and an exit code
            return report(args, exc)


def report(args: argparse.Namespace, exc: BaseException) -> int:
    """Print ``exc`` as one line; return its exit code."""
    error = as_fastdit_error(exc)
    code = exit_code(error)
    if code == 1:  # not a fastdit error: a bug, or something unforeseen
        if args.verbose:
            traceback.print_exception(exc)
        print(f"fastdit {args.command}: internal error: {type(exc).__name__}: {first_line(exc)}"
              + ("" if args.verbose else " (run with -v for the traceback)"), file=sys.stderr)
    else:
        if args.verbose and error is not exc:
            traceback.print_exception(exc)
        print(f"fastdit {args.command}: error: {first_line(error)}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())

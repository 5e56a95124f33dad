"""Starting N ranks: ``fastdit generate --gpus N`` launches the same command N times under a
torchrun-style environment; ``torchrun --nproc-per-node N -m fastdit generate ...`` is the
other way in (it sets the same variables).

    if needs_launch(gpus):                         # N > 1 and not already a launched rank
        sys.exit(launch_fastdit(sys.argv[1:], gpus))
    with rank_output(state.rank, verbose=args.all_ranks):
        ...                                        # ranks > 0 print nothing unless asked

Each child gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT``. Rank 0 keeps the terminal; the others
write to log files that are shown (their last lines) only when that rank fails. The exit code
is the first failing rank's (the others are then stopped), else 0; Ctrl-C stops every rank
(130), and so does SIGTERM to the launching process (143). A temporary log folder is removed
when every rank succeeded.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from fastdit.config import DistributedEnv, child_environment, distributed_env
from fastdit.errors import UserError

log = logging.getLogger("fastdit.distributed")

GRACE_S = 10.0  # how long ranks get to exit after SIGTERM before they are killed
TAIL_LINES = 30


def needs_launch(gpus: int | None, env: DistributedEnv | None = None) -> bool:
    """True when this process must start ``gpus`` ranks itself (``gpus > 1`` and it is not a
    launched rank). A launched rank whose world size differs from ``gpus`` is an error."""
    env = distributed_env() if env is None else env
    if gpus is None or gpus < 1:
        if gpus is not None:
            raise UserError(f"--gpus must be >= 1, got {gpus}")
        return False
    if env.launched:
        if env.world_size != gpus:
            raise UserError(f"--gpus {gpus} was given, but this process was launched as rank "
                            f"{env.rank} of {env.world_size} (torchrun's --nproc-per-node); "
                            f"give one or the other")
        return False
    return gpus > 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def rank_environment(rank: int, world: int, port: int, base: Mapping[str, str] | None = None,
                     host: str = "127.0.0.1") -> dict[str, str]:
    """The variables torchrun would give rank ``rank`` of ``world`` on one host."""
    updates = dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR=host, MASTER_PORT=str(port),
                   GROUP_RANK="0", ROLE_RANK=str(rank), ROLE_WORLD_SIZE=str(world))
    return child_environment(updates) if base is None else {**base, **updates}


def launch(command: Sequence[str], nprocs: int, *, verbose_ranks: bool = False,
           base_env: Mapping[str, str] | None = None, log_dir: str | os.PathLike | None = None,
           timeout_s: float | None = None, stream=None) -> int:
    """Run ``command`` as ranks ``0 .. nprocs - 1``; returns the exit code (see module doc).

    ``verbose_ranks``: every rank keeps the terminal. ``timeout_s``: stop all ranks after
    that long (exit code 124). ``stream``: where a failed rank's log tail is printed (stderr).
    """
    if nprocs < 1:
        raise UserError(f"launch: need at least one process, got {nprocs}")
    stream = sys.stderr if stream is None else stream
    port = free_port()
    logs = Path(log_dir or tempfile.mkdtemp(prefix="fastdit-ranks-"))
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    files: list[io.IOBase | None] = []
    previous = _on_sigterm(_terminated)
    try:
        for rank in range(nprocs):
            out = None
            if rank > 0 and not verbose_ranks:
                out = open(logs / f"rank{rank}.log", "wb")
            files.append(out)
            procs.append(subprocess.Popen(list(command), env=rank_environment(rank, nprocs, port, base_env),
                                          stdout=out, stderr=subprocess.STDOUT if out else None))
        code = _wait(procs, timeout_s)
    except KeyboardInterrupt:
        _stop(procs)
        code = 130
    except _Terminated:
        _stop(procs)
        code = 143
    finally:
        _on_sigterm(previous)
        for f in files:
            if f is not None:
                f.close()
    failed = [r for r, p in enumerate(procs) if p.returncode not in (0, None, -signal.SIGTERM)]
    for rank in failed:
        if files[rank] is not None:
            _print_tail(logs / f"rank{rank}.log", rank, procs[rank].returncode, stream)
    if code == 0 and log_dir is None:
        shutil.rmtree(logs, ignore_errors=True)
    return code


class _Terminated(BaseException):
    """SIGTERM reached the launching process."""


def _terminated(signum, frame):
    raise _Terminated()


def _on_sigterm(handler):
    """Install ``handler`` for SIGTERM (main thread only); the previous handler, or None."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def launch_fastdit(argv: Sequence[str], nprocs: int, **kwargs) -> int:
    """``python -m fastdit <argv>`` as ``nprocs`` ranks (``fastdit generate --gpus N``)."""
    return launch([sys.executable, "-m", "fastdit", *argv], nprocs, **kwargs)


def _wait(procs: list[subprocess.Popen], timeout_s: float | None) -> int:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        bad = next((c for c in codes if c not in (None, 0)), None)
        if bad is not None:
            _stop(procs)
            return bad if bad > 0 else 128 - bad  # killed by signal s -> 128 + s
        if all(c == 0 for c in codes):
            return 0
        if deadline is not None and time.monotonic() > deadline:
            _stop(procs)
            return 124
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM the ranks still running, SIGKILL those that outlive the grace period."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _print_tail(path: Path, rank: int, code: int, stream) -> None:
    try:
        lines = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        return
    stream.write(f"--- rank {rank} exited with {code}; last lines of {path}:\n")
    stream.write("\n".join(lines) + "\n")
    stream.flush()


@contextlib.contextmanager
def rank_output(rank: int, verbose: bool = False) -> Iterator[None]:
    """On ranks other than 0 (unless ``verbose``): stdout goes nowhere and the ``fastdit``
    logger shows only errors. Errors still reach stderr."""
    if rank == 0 or verbose:
        yield
        return
    logger = logging.getLogger("fastdit")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        try:
            yield
        finally:
            logger.setLevel(level)

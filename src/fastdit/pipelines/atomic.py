"""Writing files so that a failure or a signal never leaves a partial file under the real name.

* :class:`PartialFile` / :class:`PartialFolder`: a hidden temporary next to the target (its name
  short enough for any target name), removed unless :meth:`publish` renames it into place; an
  existing target is untouched until then (a folder's old ``frame_*.png`` are kept aside until
  the whole publication succeeded, so it can be undone).
* :func:`terminate_cleanly`: while a write runs outside the CLI (the Python API's ``save``),
  SIGTERM and SIGHUP raise :class:`~fastdit.errors.Terminated` so the cleanup runs, and are then
  delivered again: the process ends as the signal would have ended it, without leftovers.
* :func:`signals_deferred`: SIGINT, SIGTERM and SIGHUP wait while a few renames publish a result.

Every ``OSError`` becomes an :class:`~fastdit.errors.OutputError` naming the user's path, never
the temporary one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

from fastdit.errors import OutputError, Terminated

TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
STEM_CHARS = 40  # of the target's name kept in a temporary name (NAME_MAX is 255 bytes)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def describe_os_error(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _short(name: str) -> str:
    return name[:STEM_CHARS]


class PartialFile:
    """``with PartialFile(target) as part:`` write ``part.path``, then ``part.publish()``."""

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        folder = self.target.parent
        if not folder.is_dir():
            raise OutputError(f"cannot write {self.target}: folder {folder} does not exist")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{_short(self.target.stem)}.",
                                       suffix=f".partial{self.target.suffix}", dir=folder)
            os.close(fd)
            os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; the file gets the usual mode
        except OSError as exc:
            raise OutputError(f"cannot write {self.target}: {describe_os_error(exc)}") from None
        self.path = Path(tmp)
        self.published = False

    def publish(self) -> Path:
        """Rename the temporary over the target (atomic); on failure it is removed."""
        try:
            os.replace(self.path, self.target)
        except OSError as exc:
            self.discard()
            raise OutputError(f"cannot replace {self.target}: {describe_os_error(exc)}") from None
        self.published = True
        return self.target

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def __enter__(self) -> "PartialFile":
        return self

    def __exit__(self, *exc) -> None:
        if not self.published:
            self.discard()


class PartialFolder:
    """``with PartialFolder(target) as part:`` write files into ``part.path``, then
    ``part.publish()``: the folder is renamed into place when ``target`` does not exist; else
    its files move into ``target``, whose old ``frame_*.png`` wait in a hidden folder. Until
    :meth:`commit` (or leaving the block without an error), :meth:`undo` restores the old state."""

    def __init__(self, target: str | os.PathLike, pattern: str = "frame_*.png") -> None:
        self.target = Path(target)
        self.pattern = pattern
        parent = self.target.parent if str(self.target.parent) else Path(".")
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f".{_short(self.target.name)}.partial-", dir=parent))
            self.path.chmod(0o777 & ~umask())
        except OSError as exc:
            raise OutputError(f"cannot write frames to {self.target}: {describe_os_error(exc)}") from None
        self._parent = parent
        self._mode: str | None = None  # None, "renamed" or "merged"
        self._backup: Path | None = None
        self._old: list[str] = []
        self._new: list[str] = []

    def publish(self) -> None:
        try:
            if not self.target.exists():
                os.rename(self.path, self.target)
                self._mode = "renamed"
                return
            self._mode = "merged"
            self._backup = Path(tempfile.mkdtemp(prefix=f".{_short(self.target.name)}.old-", dir=self._parent))
            for old in sorted(self.target.glob(self.pattern)):
                os.rename(old, self._backup / old.name)
                self._old.append(old.name)
            for new in sorted(self.path.iterdir()):
                os.rename(new, self.target / new.name)
                self._new.append(new.name)
        except OSError as exc:
            self.undo()
            raise OutputError(f"cannot write frames to {self.target}: {describe_os_error(exc)}") from None

    def undo(self) -> None:
        """Back to before :meth:`publish` (the new files in the temporary folder)."""
        with contextlib.suppress(OSError):
            if self._mode == "renamed":
                os.rename(self.target, self.path)
            elif self._mode == "merged":
                for name in self._new:
                    os.rename(self.target / name, self.path / name)
                for name in self._old:
                    os.rename(self._backup / name, self.target / name)
        self._mode, self._old, self._new = None, [], []

    def commit(self) -> None:
        if self._mode == "merged":
            shutil.rmtree(self.path, ignore_errors=True)
        if self._backup is not None:
            shutil.rmtree(self._backup, ignore_errors=True)
        self._backup = None
        self._mode = "committed"

    def discard(self) -> None:
        self.undo()
        shutil.rmtree(self.path, ignore_errors=True)
        if self._backup is not None:
            shutil.rmtree(self._backup, ignore_errors=True)
            self._backup = None

    def __enter__(self) -> "PartialFolder":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None and self._mode in ("renamed", "merged"):
            self.commit()
        elif self._mode != "committed":
            self.discard()


# ---------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------
def raise_terminated(signum: int, frame) -> None:
    """A signal handler: raise :class:`Terminated` (so cleanups run, as for Ctrl-C)."""
    raise Terminated(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """SIGTERM / SIGHUP with their default action (ending the process) raise
    :class:`Terminated` inside, and are delivered again once the cleanup ran; a handler
    someone else installed (the CLI's) is left alone. Main thread only (else a no-op)."""
    if not _main_thread():
        yield
        return
    installed = []
    for sig in TERMINATING_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, raise_terminated)
            installed.append(sig)
    try:
        yield
    except Terminated as exc:
        if exc.signum not in installed:
            raise
        for sig in installed:
            signal.signal(sig, signal.SIG_DFL)
        installed = []
        os.kill(os.getpid(), exc.signum)  # end as the signal would have, now that nothing is left
        raise
    finally:
        for sig in installed:
            signal.signal(sig, signal.SIG_DFL)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while the block runs (a few renames that publish a
    result together): they are recorded, and handled as before once it ends (the previous
    handler runs, or the default action). Main thread only (else a no-op)."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, *TERMINATING_SIGNALS)
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(pending):
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)

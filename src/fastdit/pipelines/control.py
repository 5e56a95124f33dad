"""Per-generation control: progress reports and cancellation.

Each generation gets its own :class:`GenerationControl` (the caller's, or a fresh one), so two
requests on one pipeline (a server's worker, two threads) never share progress or a cancel
flag. The denoise loop calls :meth:`GenerationControl.check` before every step (one Python
check of a ``threading.Event``: no device sync) and :meth:`GenerationControl.step_done` after it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from fastdit.errors import Cancelled

log = logging.getLogger("fastdit.pipelines")


@dataclass(frozen=True)
class Progress:
    """One progress report: ``step`` steps of ``total`` are done (``stage`` names the work:
    ``"denoise"``; ``step_seconds`` is the last step's host time, which trails the device by
    at most the queued work, and ``elapsed`` the time since the loop began)."""

    step: int
    total: int
    elapsed: float
    step_seconds: float
    stage: str = "denoise"

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 1.0


class GenerationControl:
    """``on_progress(Progress)`` after every denoising step; :meth:`cancel` (from any thread)
    stops the generation before its next step with :class:`fastdit.errors.Cancelled`."""

    def __init__(self, on_progress: Callable[[Progress], None] | None = None,
                 cancel_event: threading.Event | None = None) -> None:
        self.on_progress = on_progress
        self.cancel_event = cancel_event if cancel_event is not None else threading.Event()
        self._start = self._last = None

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` when cancellation was asked for."""
        if self.cancel_event.is_set():
            raise Cancelled("generation cancelled")

    def begin(self, total: int) -> None:
        self._start = self._last = time.perf_counter()
        self._report(0, total)

    def step_done(self, step: int, total: int) -> None:
        """Report that ``step`` (1-based count) of ``total`` steps are done."""
        self._report(step, total)

    def _report(self, step: int, total: int) -> None:
        now = time.perf_counter()
        if self._start is None:
            self._start = self._last = now
        progress = Progress(step, total, now - self._start, now - self._last)
        self._last = now
        if self.on_progress is not None:
            self.on_progress(progress)

"""The one place a server worker calls the pipeline.

Target interface (seams.md section 5), for phase 2::

    from fastdit.pipelines.control import GenerationControl
    from fastdit.pipelines.request import GenerationRequest
    control = GenerationControl(on_progress=lambda p: on_progress(p.step, p.total), cancel_event=cancel_event)
    return pipe.run(GenerationRequest(**keywords, image=image), control=control)   # raises errors.Cancelled

Until main has it, :func:`run_generation` uses today's ``pipe.generate(..., callback=fn(step, total))``
and raises :class:`fastdit.errors.Cancelled` from the callback; nothing else in the server
changes when it moves to the control object.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

from fastdit.errors import Cancelled

from fastdit.serving.fields import PIPELINE_KEYWORDS


def run_generation(pipe, request: Mapping[str, Any], image: Any, *,
                   on_progress: Callable[[int, int], None], cancel_event: threading.Event):
    """Generate one job's video; returns the pipeline's ``GenerationResult``.

    ``on_progress(steps_done, total)`` runs after every denoising step (``steps_done`` counts
    from 1); when ``cancel_event`` is set the generation stops before the next step and raises
    :class:`~fastdit.errors.Cancelled` (so a cancel costs at most one step).
    """
    if cancel_event.is_set():
        raise Cancelled("cancelled before it started")

    def callback(step: int, total: int) -> None:
        on_progress(step + 1, total)
        if cancel_event.is_set():
            raise Cancelled(f"cancelled after step {step + 1} of {total}")

    keywords = {k: request[k] for k in PIPELINE_KEYWORDS if request.get(k) is not None}
    return pipe.generate(**keywords, image=image, callback=callback)

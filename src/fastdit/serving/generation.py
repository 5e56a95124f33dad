"""The one place a server worker calls the pipeline: ``pipe.run(GenerationRequest(...),
control=GenerationControl(...))``, which reports every denoising step and raises
:class:`fastdit.errors.Cancelled` before the next step once the job's cancel event is set.
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
    from fastdit.pipelines.control import GenerationControl
    from fastdit.pipelines.request import GenerationRequest

    if cancel_event.is_set():
        raise Cancelled("cancelled before it started")

    def progress(p) -> None:
        if p.step > 0:
            on_progress(p.step, p.total)

    keywords = {k: request[k] for k in PIPELINE_KEYWORDS if request.get(k) is not None}
    control = GenerationControl(on_progress=progress, cancel_event=cancel_event)
    return pipe.run(GenerationRequest(**keywords, image=image), control=control)

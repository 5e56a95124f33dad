"""What the front end and a worker process say to each other (pickled dicts over two pipes).

Front end -> worker (``commands`` pipe)::

    {"type": "run", "job": {"id", "request", "image", "output", "attempt"}}
    {"type": "cancel", "id": job_id}          stop that job before its next step
    {"type": "stop"}                          finish: cancel the running job, then exit

Worker -> front end (``events`` pipe; one lock, so the threads' messages never interleave)::

    {"type": "heartbeat", "t"}                          every HEARTBEAT_S seconds, from start-up on
    {"type": "ready", "pid", "device", "load_s"}        the model is loaded
    {"type": "load_failed", "message"}                  then the worker exits
    {"type": "started", "id"}
    {"type": "progress", "id", "step", "total", "step_s"}   after every denoising step
    {"type": "completed", "id", "file", "timings", "frames", "width", "height", "fps"}
    {"type": "failed", "id", "code", "message"}         code: out_of_memory | invalid_request | internal_error
    {"type": "cancelled", "id"}                         the partial file is gone

A worker whose ``commands`` pipe closes (the front end died) exits at once. The front end
treats a worker that exits, or sends nothing for ``heartbeat_timeout_s``, as dead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HEARTBEAT_S = 1.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with (pickled to the child by the spawn context).

    ``loader``: ``"module:function"`` called as ``loader(model, device=..., **load_options)``
    (default ``fastdit.load``).
    """

    name: str
    device: str
    model: str
    outputs_dir: str
    inputs_dir: str
    load_options: dict[str, Any] = field(default_factory=dict)
    cpu_threads: int | None = None
    test_faults: bool = False
    log_level: str = "INFO"
    loader: str = "fastdit:load"

"""A worker process: loads the model once on its device, then runs jobs one at a time.

Three threads: the main thread loads the model and runs jobs; a reader takes commands from
the front end (a ``cancel`` sets the running job's event at once, a closed pipe ends the
process); a heartbeat thread says it is alive every second. See
:mod:`fastdit.serving.protocol` for the messages.

The video is written to a temporary name and renamed when complete
(:func:`fastdit.pipelines.result.write_video`), so the front end never serves a partial file;
a cancelled or failed job leaves no file.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fastdit.errors import Cancelled, InputError, first_line
from fastdit.serving.protocol import HEARTBEAT_S, WorkerSpec

log = logging.getLogger("fastdit.serving.worker")

_STOP = object()


class _Events:
    """The events pipe, shared by the threads of the worker (one message at a time)."""

    def __init__(self, conn):
        self.conn, self.lock = conn, threading.Lock()

    def send(self, kind: str, **fields: Any) -> None:
        with self.lock:
            try:
                self.conn.send({"type": kind, **fields})
            except (OSError, EOFError, BrokenPipeError):
                os._exit(0)  # the front end is gone: nobody wants this work any more


class _Running:
    """The job being run and its cancel event (set from the reader thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.job_id: str | None = None
        self.cancel = threading.Event()

    def start(self, job_id: str) -> threading.Event:
        with self.lock:
            self.job_id, self.cancel = job_id, threading.Event()
            return self.cancel

    def stop(self, job_id: str | None = None) -> None:
        with self.lock:
            if self.job_id is not None and job_id in (None, self.job_id):
                self.cancel.set()

    def finish(self) -> None:
        with self.lock:
            self.job_id = None


def worker_main(spec: WorkerSpec, commands, events) -> None:
    """The entry point of a worker process (the target of a spawn-context Process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front end decides when workers stop
    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(asctime)s [fastdit worker {spec.name}] %(message)s", datefmt="%H:%M:%S")
    out = _Events(events)
    running = _Running()
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_heartbeat, args=(out,), name="heartbeat", daemon=True).start()
    loaded = threading.Event()
    threading.Thread(target=_read_commands, args=(commands, inbox, running, loaded), name="commands",
                     daemon=True).start()

    start = time.perf_counter()
    try:
        pipe = _load(spec)
        loaded.set()
    except BaseException as exc:  # noqa: BLE001 - reported to the front end, which restarts us
        log.exception("loading the model failed")
        out.send("load_failed", message=_first_line(exc))
        sys.exit(3)
    out.send("ready", pid=os.getpid(), device=spec.device, load_s=time.perf_counter() - start)
    while True:
        message = inbox.get()
        if message is _STOP:
            break
        run_job(pipe, spec, message, out, running)
    out.send("stopped", pid=os.getpid())
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)  # nothing left to save: skip tearing down torch and its threads (seconds)


def _heartbeat(out: _Events) -> None:
    while True:
        out.send("heartbeat", t=time.time())
        time.sleep(HEARTBEAT_S)


def _read_commands(commands, inbox: queue.Queue, running: _Running, loaded: threading.Event) -> None:
    while True:
        try:
            message = commands.recv()
        except (EOFError, OSError):
            os._exit(0)  # the front end died: exit now (its successor cleans partial files up)
        kind = message.get("type")
        if kind == "run":
            inbox.put(message["job"])
        elif kind == "cancel":
            running.stop(message.get("id"))
        elif kind == "stop":
            if not loaded.is_set():
                os._exit(0)  # still loading the model: nothing to finish
            running.stop()
            inbox.put(_STOP)


def _load(spec: WorkerSpec):
    """``loader(model, device=..., **load_options)`` on this worker's device."""
    import torch

    from fastdit.pipelines.loading import quiet_libraries

    if spec.cpu_threads:
        torch.set_num_threads(spec.cpu_threads)
    _bind_device(spec.device)
    module, _, name = spec.loader.partition(":")
    loader = getattr(importlib.import_module(module), name)
    quiet_libraries()
    pipe = loader(spec.model, device=spec.device, **spec.load_options)  # dtype names: fastdit.load's
    log.info("model loaded on %s", spec.device)
    return pipe


def _bind_device(device: str) -> None:
    """Make ``device`` this process's current device (phase 2: ``current_platform().set_device``)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cpu" and dev.index is not None:
        backend = getattr(torch, dev.type, None)
        if backend is not None and hasattr(backend, "set_device"):
            backend.set_device(dev)


# ---------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------
def run_job(pipe, spec: WorkerSpec, job: dict[str, Any], out: _Events, running: _Running) -> None:
    """Run one job and report how it ended (completed / failed / cancelled); never raises."""
    from fastdit.serving.generation import run_generation

    job_id, request = job["id"], job["request"]
    cancel = running.start(job_id)
    output = Path(spec.outputs_dir) / job["output"]
    out.send("started", id=job_id)
    fault = request.get("fault") if spec.test_faults else None
    last = [time.perf_counter()]

    def on_progress(step: int, total: int) -> None:
        now = time.perf_counter()
        out.send("progress", id=job_id, step=step, total=total, step_s=now - last[0])
        last[0] = now
        if fault:
            apply_fault(fault, step, cancel)

    try:
        image = _load_input(spec, job.get("image"))
        result = run_generation(pipe, request, image, on_progress=on_progress, cancel_event=cancel)
        if cancel.is_set():
            raise Cancelled("cancelled after the last step")
        write_start = time.perf_counter()
        from fastdit.pipelines.result import write_video

        fps = request.get("fps") or result.fps
        write_video(output, result.frames, fps=fps)
        frames = result.frames
        timings = {k: round(float(v), 6) for k, v in result.timings.items()}
        timings["write"] = round(time.perf_counter() - write_start, 6)
        out.send("completed", id=job_id, file=output.name, timings=timings, frames=int(frames.shape[0]),
                 height=int(frames.shape[1]), width=int(frames.shape[2]), fps=int(fps))
    except Cancelled:
        output.unlink(missing_ok=True)
        out.send("cancelled", id=job_id)
    except BaseException as exc:  # noqa: BLE001 - every failure is the job's, not the worker's
        output.unlink(missing_ok=True)
        code, message = _classify(exc, spec.device)
        if code == "out_of_memory":
            _free_memory()
        else:
            log.error("job %s failed", job_id, exc_info=code == "internal_error")
        out.send("failed", id=job_id, code=code, message=message)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
    finally:
        running.finish()


def _load_input(spec: WorkerSpec, name: str | None):
    if not name:
        return None
    from PIL import Image

    with Image.open(Path(spec.inputs_dir) / name) as im:  # a server-made name, never a request's
        im.load()
        return im.convert("RGB")


def _classify(exc: BaseException, device: str) -> tuple[str, str]:
    """(error code, one-line message) for a failed job."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return "out_of_memory", f"out of memory on {device}: {_first_line(exc)}"
    if isinstance(exc, InputError) or type(exc).__name__ == "InputError":
        return "invalid_request", _first_line(exc)
    return "internal_error", f"{type(exc).__name__}: {_first_line(exc)}"


def _free_memory() -> None:
    """After an out-of-memory error: drop what the failed generation held, so the next job fits."""
    import torch

    gc.collect()
    for kind in ("cuda", "xpu", "mps"):
        backend = getattr(torch, kind, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            backend.empty_cache()


def _first_line(exc: BaseException) -> str:
    return first_line(exc)[:500]


# ---------------------------------------------------------------------------------------
# Test-only faults (servers started with --test-faults; see fields.FAULT_KEYS)
# ---------------------------------------------------------------------------------------
def apply_fault(fault: dict[str, Any], step: int, cancel: threading.Event) -> None:
    """``sleep_per_step``: a slow step (stops early when cancelled); ``oom_at_step``: an
    out-of-memory error; ``error_at_step``: any other error; ``hang_at_step``: a step that
    never ends and ignores cancellation (only a kill stops it; bounded at one hour)."""
    import torch

    if fault.get("sleep_per_step"):
        cancel.wait(fault["sleep_per_step"])
    if fault.get("oom_at_step") == step:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by a test fault)")
    if fault.get("error_at_step") == step:
        raise RuntimeError("injected failure (test fault)")
    if fault.get("hang_at_step") == step:
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            time.sleep(0.1)

"""Worker processes, watched from the front end: one thread per worker.

Each watcher thread starts its worker (spawn context), hands it the oldest queued job whenever
it is idle, writes its progress and results to the store, and enforces the deadlines:

* a job running past ``job_timeout_s`` is asked to stop; if it has not stopped
  ``cancel_grace_s`` later (a hang), the worker is killed; the job fails with code ``timeout``;
* a worker silent for ``heartbeat_timeout_s`` (no heartbeat: frozen) is killed;
* a worker that died under a job: the job is queued again while ``attempts < max_attempts``
  (its record says so), else failed with code ``worker_died``;
* a dead worker is started again at once (after a failed model load: 1, 2, 4, ... 30 s later;
  after 5 load failures in a row it stays down and ``/health`` says so).

Nothing here can take the front end down: every worker event is handled in its watcher thread,
and a failure there is logged and the worker restarted.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from fastdit.serving.metrics import Metrics
from fastdit.serving.options import ServeConfig
from fastdit.serving.protocol import WorkerSpec
from fastdit.serving.store import JobStore, remove_partial_files

log = logging.getLogger("fastdit.serving")

MAX_LOAD_FAILURES = 5
STOP_GRACE_S = 10.0


class _Bell:
    """A self-pipe that wakes a watcher thread (new job queued, a cancel, shutdown)."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        for fd in (self.read_fd, self.write_fd):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)

    def ring(self) -> None:
        try:
            os.write(self.write_fd, b"!")
        except (BlockingIOError, OSError):
            pass  # already ringing

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class WorkerHandle:
    """The front end's view of one worker process."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.name = spec.name
        self.state = "starting"  # starting | ready | busy | restarting | stopped | failed
        self.process: mp.process.BaseProcess | None = None
        self.commands = None
        self.events = None
        self.send_lock = threading.Lock()
        self.bell = _Bell()
        self.pid: int | None = None
        self.spawned_at = 0.0
        self.last_seen = 0.0
        self.restarts = 0
        self.load_failures = 0
        self.restart_at = 0.0
        self.kill_reason: str | None = None
        self.load_error: str | None = None
        self._clear_job()

    def _clear_job(self) -> None:
        self.job_id: str | None = None
        self.job_started = 0.0
        self.cancel_deadline: float | None = None
        self.timing_out = False
        self.first_step_at: float | None = None
        self.last_step_at: float | None = None
        self.steps_done = 0  # as the worker reports them (the store stops counting once a job is cancelled)

    def send(self, message: dict[str, Any]) -> bool:
        with self.send_lock:
            if self.commands is None:
                return False
            try:
                self.commands.send(message)
                return True
            except (OSError, EOFError, ValueError):
                return False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.spec.device, "state": self.state, "pid": self.pid,
                "job": self.job_id, "restarts": self.restarts, "load_error": self.load_error}


class Supervisor:
    """Starts, feeds and watches the workers; the HTTP side calls :meth:`notify` and :meth:`cancel`."""

    def __init__(self, config: ServeConfig, store: JobStore, metrics: Metrics | None = None):
        self.config = config
        self.store = store
        self.metrics = metrics or Metrics()
        self.outputs_dir = Path(config.outputs_dir)
        self._stopping = threading.Event()
        self._ctx = mp.get_context("spawn")
        self.workers = [WorkerHandle(self._worker_spec(i, device)) for i, device in enumerate(config.devices)]
        self._threads: list[threading.Thread] = []

    def _worker_spec(self, index: int, device: str) -> WorkerSpec:
        c = self.config
        threads = c.cpu_threads
        if threads is None and device == "cpu":
            cpus = sum(1 for d in c.devices if d == "cpu")
            threads = max(1, (os.cpu_count() or 1) // max(1, cpus))
        return WorkerSpec(name=f"w{index}", device=device, model=str(c.model), outputs_dir=str(c.outputs_dir),
                          inputs_dir=str(c.inputs_dir), load_options=dict(c.load_options), cpu_threads=threads,
                          test_faults=c.test_faults, log_level=c.log_level.upper())

    # ---- the HTTP side -----------------------------------------------------------------
    def start(self) -> None:
        for h in self.workers:
            t = threading.Thread(target=self._watch, args=(h,), name=f"watch-{h.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def notify(self) -> None:
        """A job was queued: wake the idle workers."""
        for h in self.workers:
            h.bell.ring()

    def cancel(self, job_id: str) -> bool:
        """Ask the worker running ``job_id`` to stop before its next step."""
        for h in self.workers:
            if h.job_id == job_id:
                if h.cancel_deadline is None:
                    h.cancel_deadline = time.monotonic() + self.config.cancel_grace_s
                h.send({"type": "cancel", "id": job_id})
                h.bell.ring()
                return True
        return False

    def status(self) -> list[dict[str, Any]]:
        return [h.describe() for h in self.workers]

    def stop(self, timeout: float = STOP_GRACE_S + 5) -> None:
        """Stop every worker; a job they were running goes back to the queue."""
        self._stopping.set()
        for h in self.workers:
            h.send({"type": "stop"})
            h.bell.ring()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        for h in self.workers:
            if h.process is not None and h.process.is_alive():
                h.process.kill()
            h.bell.close()

    # ---- one watcher thread per worker ---------------------------------------------------
    def _watch(self, h: WorkerHandle) -> None:
        stop_deadline: float | None = None
        while True:
            try:
                if self._stopping.is_set() and stop_deadline is None:
                    stop_deadline = time.monotonic() + STOP_GRACE_S
                if h.process is None:
                    if self._stopping.is_set() or h.state == "failed":
                        h.state = "stopped" if self._stopping.is_set() else h.state
                        return
                    pause = h.restart_at - time.monotonic()
                    if pause > 0:
                        wait([h.bell.read_fd], timeout=min(pause, 0.5))
                        h.bell.drain()
                        continue
                    self._spawn(h)
                self._poll(h, timeout=0.25)
                if h.process is not None and (not h.process.is_alive() or h.events is None):
                    self._on_exit(h)
                    continue
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    self._kill(h, "it did not stop when the server shut down")
                    continue
                self._check_deadlines(h)
                if not self._stopping.is_set() and h.state == "ready" and h.job_id is None:
                    self._dispatch(h)
            except Exception:  # noqa: BLE001 - never let one bad event stop the watcher
                log.exception("worker %s: unexpected error in its watcher; restarting it", h.name)
                if h.process is not None and h.process.is_alive():
                    self._kill(h, "its watcher hit an internal error")
                time.sleep(0.5)

    def _spawn(self, h: WorkerHandle) -> None:
        from fastdit.serving.worker import worker_main

        cmd_recv, cmd_send = self._ctx.Pipe(duplex=False)
        ev_recv, ev_send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=worker_main, args=(h.spec, cmd_recv, ev_send),
                                    name=f"fastdit-worker-{h.name}", daemon=True)
        process.start()
        cmd_recv.close()  # the child's ends: closing ours makes a dead child an EOF here
        ev_send.close()
        with h.send_lock:
            h.process, h.commands, h.events = process, cmd_send, ev_recv
        h.pid, h.state, h.kill_reason = process.pid, "starting", None
        h.spawned_at = h.last_seen = time.monotonic()
        log.info("worker %s: started process %d on %s", h.name, process.pid, h.spec.device)

    def _poll(self, h: WorkerHandle, timeout: float) -> None:
        ready = wait([h.events, h.process.sentinel, h.bell.read_fd], timeout=timeout)
        if h.bell.read_fd in ready:
            h.bell.drain()
        try:
            while h.events.poll():
                self._handle(h, h.events.recv())
        except (EOFError, OSError):
            h.events.close()
            h.events = None
            h.process.join(5)  # its events pipe closed: it is exiting

    # ---- events --------------------------------------------------------------------------
    def _handle(self, h: WorkerHandle, msg: dict[str, Any]) -> None:
        h.last_seen = time.monotonic()
        kind = msg.get("type")
        if kind == "heartbeat":
            return
        if kind == "ready":
            h.state, h.load_failures, h.load_error = "ready", 0, None
            log.info("worker %s: model loaded on %s in %.1f s", h.name, msg.get("device"), msg.get("load_s", 0))
            return
        if kind == "load_failed":
            h.load_error = msg.get("message")
            log.error("worker %s: loading the model failed: %s", h.name, h.load_error)
            return
        job_id = msg.get("id")
        if job_id is None or job_id != h.job_id:
            return  # a late message about a job this worker no longer holds
        if kind == "progress":
            now = time.time()
            if h.first_step_at is None:
                h.first_step_at = now
            elif msg.get("step_s") is not None:
                self.metrics.step(float(msg["step_s"]))
            h.last_step_at, h.steps_done = now, int(msg["step"])
            self.store.progress(job_id, h.steps_done, int(msg["total"]))
        elif kind == "completed":
            self._completed(h, msg)
        elif kind == "failed":
            if h.timing_out:
                self._timed_out(h)
            elif self.store.fail(job_id, msg.get("code", "internal_error"), msg.get("message", "failed")):
                self.metrics.finish("failed")
            self._job_done(h)
        elif kind == "cancelled":
            if h.timing_out:
                self._timed_out(h)
            elif self._stopping.is_set():
                self.store.requeue(job_id, "the server stopped while the job ran")
            else:
                self.store.note(job_id, "stopped", after_step=h.steps_done)
            remove_partial_files(self.outputs_dir, job_id)
            self._job_done(h)

    def _completed(self, h: WorkerHandle, msg: dict[str, Any]) -> None:
        job_id = h.job_id
        job = self.store.get(job_id)
        now = time.time()
        timings = dict(msg.get("timings") or {})
        if job is not None:
            timings["queue_s"] = round((job.started_at or now) - job.created_at, 6)
            if h.first_step_at is not None:
                timings["submit_to_first_step_s"] = round(h.first_step_at - job.created_at, 6)
            if h.last_step_at is not None:
                timings["last_step_to_done_s"] = round(now - h.last_step_at, 6)
        timings["video"] = {k: msg.get(k) for k in ("frames", "width", "height", "fps")}
        if self.store.complete(job_id, msg["file"], timings):
            self.metrics.finish("completed")
        else:  # cancelled or deleted while it ran: nobody may see the file
            (self.outputs_dir / msg["file"]).unlink(missing_ok=True)
        self._job_done(h)

    def _timed_out(self, h: WorkerHandle, killed: bool = False) -> None:
        how = " (it did not stop, so its worker was restarted)" if killed else ""
        if self.store.fail(h.job_id, "timeout", f"the job ran past the server's {self.config.job_timeout_s:g} s "
                           f"job timeout{how}"):
            self.metrics.finish("failed")

    def _job_done(self, h: WorkerHandle) -> None:
        h._clear_job()
        if h.state == "busy":
            h.state = "ready"

    # ---- jobs and deadlines ----------------------------------------------------------------
    def _dispatch(self, h: WorkerHandle) -> None:
        job = self.store.claim_next(h.name)
        if job is None:
            return
        h.job_id, h.job_started, h.state = job.id, time.monotonic(), "busy"
        sent = h.send({"type": "run", "job": {"id": job.id, "request": job.request, "image": job.image,
                                               "output": f"{job.id}.mp4", "attempt": job.attempts}})
        if not sent:
            log.warning("worker %s: could not hand it job %s (it is exiting)", h.name, job.id)
        current = self.store.get(job.id)
        if current is None or current.status != "in_progress":  # cancelled between the claim and now
            self.cancel(job.id)

    def _check_deadlines(self, h: WorkerHandle) -> None:
        now = time.monotonic()
        c = self.config
        if now - h.last_seen > c.heartbeat_timeout_s:
            self._kill(h, f"it sent nothing for {c.heartbeat_timeout_s:g} s (hung)")
        elif h.state == "starting" and now - h.spawned_at > c.load_timeout_s:
            self._kill(h, f"loading the model took longer than {c.load_timeout_s:g} s")
        elif h.job_id is not None:
            if not h.timing_out and now - h.job_started > c.job_timeout_s:
                log.warning("worker %s: job %s ran past the %g s job timeout; stopping it", h.name, h.job_id,
                            c.job_timeout_s)
                h.timing_out = True
                h.cancel_deadline = now + self.config.cancel_grace_s
                h.send({"type": "cancel", "id": h.job_id})
            elif h.cancel_deadline is not None and now > h.cancel_deadline:
                self._kill(h, "it did not stop its job when asked")

    def _kill(self, h: WorkerHandle, reason: str) -> None:
        if h.process is None:
            return
        log.warning("worker %s: killing process %s: %s", h.name, h.pid, reason)
        h.kill_reason = reason
        try:
            h.process.kill()
        except OSError:
            pass
        h.process.join(10)

    def _on_exit(self, h: WorkerHandle) -> None:
        """The worker process is gone: settle its job, then arrange its restart."""
        process = h.process
        if h.events is not None:  # what it said just before it died
            try:
                while h.events.poll():
                    self._handle(h, h.events.recv())
            except (EOFError, OSError):
                pass
        process.join(5)
        if process.is_alive():  # its pipe closed but it lives on: make sure it is gone
            process.kill()
            process.join(5)
        code = process.exitcode
        how = h.kill_reason or f"the worker process died ({_describe_exit(code)})"
        never_ready = h.state == "starting"
        if h.job_id is not None:
            self._settle_orphan(h, how)
        with h.send_lock:
            for conn in (h.commands, h.events):
                if conn is not None:
                    conn.close()
            h.process = h.commands = h.events = None
        h._clear_job()
        if self._stopping.is_set():
            h.state = "stopped"
            return
        log.warning("worker %s: %s; starting it again", h.name, how)
        self.metrics.restart()
        h.restarts += 1
        if never_ready:
            h.load_failures += 1
            if h.load_failures >= MAX_LOAD_FAILURES:
                h.state = "failed"
                log.error("worker %s: the model failed to load %d times in a row; leaving it stopped", h.name,
                          h.load_failures)
                return
            h.restart_at = time.monotonic() + min(30.0, 2.0 ** (h.load_failures - 1))
        h.state = "restarting"

    def _settle_orphan(self, h: WorkerHandle, how: str) -> None:
        job_id = h.job_id
        remove_partial_files(self.outputs_dir, job_id)
        job = self.store.get(job_id)
        if job is None or job.status != "in_progress":
            return  # cancelled or deleted meanwhile
        if h.timing_out:
            self._timed_out(h, killed=True)
        elif self._stopping.is_set():
            self.store.requeue(job_id, "the server stopped while the job ran")
        elif job.attempts < job.max_attempts:
            self.store.requeue(job_id, f"{how}; retrying (attempt {job.attempts + 1} of {job.max_attempts})")
        elif self.store.fail(job_id, "worker_died", f"{how} (attempt {job.attempts} of {job.max_attempts}, "
                             "not retried)"):
            self.metrics.finish("failed")


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"

"""Starting a server: state directory, model check, job store, workers, uvicorn.

:func:`serve` runs until SIGINT/SIGTERM. At start-up jobs left ``in_progress`` by a previous
server are queued again and half-written videos are deleted. One server per state directory
(an ``flock`` on ``server.lock``; the kernel drops it when the process dies, even by SIGKILL).
While it runs, ``server.json`` in the state directory holds its pid and URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from fastdit.errors import ModelFolderError, UserError
from fastdit.serving.metrics import Metrics
from fastdit.serving.options import ServeConfig
from fastdit.serving.store import JobStore, remove_partial_files, sweep_expired
from fastdit.serving.supervisor import Supervisor

log = logging.getLogger("fastdit.serving")


def prepare_state_dir(config: ServeConfig):
    """Create the state directory (mode 0700) and lock it; returns the open lock file."""
    for folder in (config.state_dir, config.outputs_dir, config.inputs_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UserError(f"cannot create the state directory {folder}: {exc.strerror or exc}") from None
    lock = open(config.state_dir / "server.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise UserError(f"another fastdit server is using the state directory {config.state_dir}") from None
    return lock


def inspect(config: ServeConfig):
    """The served model's spec (cheap: JSON files and weight headers), as a UserError if bad."""
    from fastdit.pipelines.spec import ModelFolderError as PipelineModelFolderError
    from fastdit.pipelines.spec import inspect_model

    try:
        return inspect_model(config.model)
    except (PipelineModelFolderError, ModelFolderError) as exc:
        raise UserError(str(exc)) from None


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class _Housekeeper(threading.Thread):
    """Deletes expired jobs and their files every ``interval`` seconds."""

    def __init__(self, config: ServeConfig, store: JobStore):
        super().__init__(name="housekeeper", daemon=True)
        self.config, self.store = config, store
        self.interval = min(60.0, max(1.0, config.keep_hours * 3600 / 10)) if config.keep_hours else None
        self.stopped = threading.Event()

    def run(self) -> None:
        while self.interval is not None and not self.stopped.wait(self.interval):
            try:
                gone = sweep_expired(self.store, self.config.outputs_dir, self.config.inputs_dir)
                if gone:
                    log.info("deleted %d expired jobs", len(gone))
            except Exception:  # noqa: BLE001 - try again next time
                log.exception("deleting expired jobs failed")


def serve(config: ServeConfig) -> int:
    """Run ``fastdit serve`` with ``config`` until SIGINT/SIGTERM; returns the exit code."""
    import uvicorn

    from fastdit.serving.app import create_app

    spec = inspect(config)
    lock = prepare_state_dir(config)
    store = JobStore(config.db_path, keep_hours=config.keep_hours)
    requeued = store.recover()
    partials = remove_partial_files(config.outputs_dir)
    if requeued or partials:
        log.info("start-up: %d interrupted jobs queued again, %d partial files removed", len(requeued), partials)
    metrics = Metrics()
    supervisor = Supervisor(config, store, metrics)
    housekeeper = _Housekeeper(config, store)
    model_id = config.model_id or spec.name or Path(str(config.model)).name
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    info = config.state_dir / "server.json"

    @contextlib.asynccontextmanager
    async def lifespan(app):
        supervisor.start()
        housekeeper.start()
        _write_json(info, {"pid": os.getpid(), "url": url, "host": host, "port": port, "model": model_id,
                           "started_at": time.time()})
        log.info("serving %s at %s (state in %s; %d worker(s) on %s)", model_id, url, config.state_dir,
                 len(config.devices), ", ".join(config.devices))
        try:
            yield
        finally:
            info.unlink(missing_ok=True)
            housekeeper.stopped.set()
            supervisor.stop()
            log.info("stopped")

    app = create_app(config, spec, store, supervisor, metrics, model_id=model_id, lifespan=lifespan)
    server = uvicorn.Server(uvicorn.Config(app, log_level=config.log_level.lower(), access_log=False,
                                           timeout_graceful_shutdown=5, server_header=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        store.close()
        lock.close()
    return 0 if server.started else 1

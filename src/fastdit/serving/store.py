"""The durable job queue: one SQLite table in WAL mode.

A job moves ``queued -> in_progress -> completed | failed | cancelled``; a job whose worker
died under it goes back to ``queued`` while ``attempts < max_attempts``, and every job that was
``in_progress`` when the server stopped is queued again when it starts (:meth:`JobStore.recover`).
Every change is one transaction, so a SIGKILL of the server loses at most the change being
made (WAL with ``synchronous=NORMAL`` survives a process crash; only a power loss can drop the
last transactions). Status changes are guarded by the status they leave (``WHERE status = ...``),
so a late message from a worker never resurrects a cancelled or deleted job.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
ID_PREFIX = "video_"
ID_PATTERN = r"video_[0-9a-f]{32}"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    seed INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    expires_at REAL,
    steps_done INTEGER NOT NULL DEFAULT 0,
    steps_total INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    worker TEXT,
    error_code TEXT,
    error_message TEXT,
    output TEXT,
    image TEXT,
    timings TEXT NOT NULL DEFAULT '{}',
    history TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCHEMA_VERSION = "1"
_NEXT_QUEUED = "SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1"


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


def new_job_id() -> str:
    """A server-made random id: ``video_`` + 128 random bits in hex."""
    return ID_PREFIX + secrets.token_hex(16)


@dataclass(frozen=True)
class Job:
    """One row of the jobs table."""

    seq: int
    id: str
    status: str
    request: dict[str, Any]
    seed: int
    created_at: float
    started_at: float | None
    completed_at: float | None
    expires_at: float | None
    steps_done: int
    steps_total: int
    attempts: int
    max_attempts: int
    worker: str | None
    error_code: str | None
    error_message: str | None
    output: str | None
    image: str | None
    timings: dict[str, Any]
    history: list[dict[str, Any]]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        data = dict(row)
        for key in ("request", "timings", "history"):
            data[key] = json.loads(data[key])
        return cls(**data)


class JobStore:
    """The jobs table, shared by the HTTP handlers and the worker supervisors (thread-safe)."""

    def __init__(self, path: str | Path, keep_hours: float = 24.0):
        self.path = Path(path)
        self.keep_s = keep_hours * 3600.0 if keep_hours > 0 else None
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- transactions ------------------------------------------------------------------
    def _transaction(self):
        store = self

        class _Tx:
            def __enter__(self):
                store._lock.acquire()
                store._db.execute("BEGIN IMMEDIATE")
                return store._db

            def __exit__(self, kind, exc, tb):
                try:
                    store._db.execute("COMMIT" if kind is None else "ROLLBACK")
                finally:
                    store._lock.release()
                return False

        return _Tx()

    def _one(self, db: sqlite3.Connection, job_id: str) -> Job | None:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    @staticmethod
    def _note(db: sqlite3.Connection, job_id: str, event: str, **detail: Any) -> None:
        row = db.execute("SELECT history FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return
        history = json.loads(row[0])
        history.append({"at": round(time.time(), 3), "event": event, **detail})
        db.execute("UPDATE jobs SET history = ? WHERE id = ?", (json.dumps(history[-50:]), job_id))

    # ---- the HTTP side -----------------------------------------------------------------
    def create(self, job_id: str, request: dict[str, Any], *, max_queue: int, max_attempts: int,
               image: str | None = None) -> Job:
        """Queue a new job; raises :class:`QueueFull` when ``max_queue`` jobs are queued."""
        now = time.time()
        with self._transaction() as db:
            (depth,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()
            if depth >= max_queue:
                raise QueueFull(depth)
            db.execute("INSERT INTO jobs (id, status, request, seed, created_at, steps_total, max_attempts, "
                       "image) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                       (job_id, json.dumps(request), int(request["seed"]), now,
                        int(request["num_inference_steps"]), max_attempts, image))
            self._note(db, job_id, "queued")
            return self._one(db, job_id)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._one(self._db, job_id)

    def list(self, limit: int = 20, after: str | None = None, order: str = "desc") -> tuple[list[Job], bool]:
        """Jobs newest first (``order="desc"``) or oldest first, starting after job ``after``;
        returns ``(jobs, has_more)``. An unknown ``after`` raises KeyError."""
        op, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        with self._lock:
            params: list[Any] = []
            where = ""
            if after is not None:
                row = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                if row is None:
                    raise KeyError(after)
                where, params = f"WHERE seq {op} ?", [row[0]]
            rows = self._db.execute(f"SELECT * FROM jobs {where} ORDER BY seq {direction} LIMIT ?",
                                    (*params, limit + 1)).fetchall()
        jobs = [Job.from_row(r) for r in rows]
        return jobs[:limit], len(jobs) > limit

    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> Job | None:
        """Cancel a queued or running job; returns the job as it was before (None: unknown id)."""
        with self._transaction() as db:
            job = self._one(db, job_id)
            if job is None or job.status in FINISHED:
                return job
            db.execute("UPDATE jobs SET status = 'cancelled', completed_at = ?, expires_at = ?, error_code = NULL, "
                       "error_message = NULL WHERE id = ?", (time.time(), self._expiry(), job_id))
            self._note(db, job_id, "cancelled", reason=reason, was=job.status)
            return job

    def delete(self, job_id: str) -> Job | None:
        """Remove a job's record; returns it (the caller deletes its files)."""
        with self._transaction() as db:
            job = self._one(db, job_id)
            if job is not None:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return job

    # ---- the worker side ---------------------------------------------------------------
    def claim_next(self, worker: str) -> Job | None:
        """Move the oldest queued job to ``in_progress`` on ``worker`` (one attempt more)."""
        with self._lock:  # an idle worker asks every poll: no write transaction for an empty queue
            if self._db.execute(_NEXT_QUEUED).fetchone() is None:
                return None
        now = time.time()
        with self._transaction() as db:
            row = db.execute(_NEXT_QUEUED).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = 'in_progress', worker = ?, attempts = attempts + 1, "
                       "started_at = ?, steps_done = 0 WHERE id = ?", (worker, now, row[0]))
            self._note(db, row[0], "started", worker=worker)
            return self._one(db, row[0])

    def progress(self, job_id: str, step: int, total: int) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET steps_done = ?, steps_total = ? WHERE id = ? AND status = "
                             "'in_progress'", (step, total, job_id))

    def complete(self, job_id: str, output: str, timings: dict[str, Any]) -> bool:
        """Mark a running job completed with its video file name; False if it is no longer running."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT timings FROM jobs WHERE id = ?", (job_id,)).fetchone()
            merged = (json.loads(row[0]) if row else {}) | timings
            cur = db.execute("UPDATE jobs SET status = 'completed', output = ?, completed_at = ?, expires_at = ?, "
                             "steps_done = steps_total, timings = ? WHERE id = ? AND status = 'in_progress'",
                             (output, now, self._expiry(now), json.dumps(merged), job_id))
            if cur.rowcount:
                self._note(db, job_id, "completed")
            return bool(cur.rowcount)

    def fail(self, job_id: str, code: str, message: str, timings: dict[str, Any] | None = None) -> bool:
        now = time.time()
        with self._transaction() as db:
            cur = db.execute("UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, completed_at = ?, "
                             "expires_at = ?, timings = COALESCE(?, timings) WHERE id = ? AND status = 'in_progress'",
                             (code, message, now, self._expiry(now), json.dumps(timings) if timings else None,
                              job_id))
            if cur.rowcount:
                self._note(db, job_id, "failed", code=code, message=message)
            return bool(cur.rowcount)

    def requeue(self, job_id: str, reason: str) -> bool:
        """A running job back to the queue (front of it: it keeps its place by ``seq``)."""
        with self._transaction() as db:
            cur = db.execute("UPDATE jobs SET status = 'queued', worker = NULL, steps_done = 0 WHERE id = ? AND "
                             "status = 'in_progress'", (job_id,))
            if cur.rowcount:
                self._note(db, job_id, "requeued", reason=reason)
            return bool(cur.rowcount)

    def recover(self) -> list[str]:
        """At start-up: every job left ``in_progress`` by a previous server goes back to the queue."""
        with self._transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE status = 'in_progress'").fetchall()]
            for job_id in ids:
                db.execute("UPDATE jobs SET status = 'queued', worker = NULL, steps_done = 0 WHERE id = ?", (job_id,))
                self._note(db, job_id, "requeued", reason="the server stopped while the job ran")
            return ids

    # ---- housekeeping ------------------------------------------------------------------
    def _expiry(self, now: float | None = None) -> float | None:
        return None if self.keep_s is None else (now or time.time()) + self.keep_s

    def expired(self, now: float | None = None) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?",
                                    (now or time.time(),)).fetchall()
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({status: n for status, n in rows})
        return out

    def running(self) -> Iterator[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status = 'in_progress'").fetchall()
        return (Job.from_row(r) for r in rows)

    def note(self, job_id: str, event: str, **detail: Any) -> None:
        """Add an event to a job's history (whatever its status)."""
        with self._transaction() as db:
            self._note(db, job_id, event, **detail)

    def add_timings(self, job_id: str, **timings: float) -> None:
        with self._transaction() as db:
            row = db.execute("SELECT timings FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                merged = json.loads(row[0]) | {k: round(v, 6) for k, v in timings.items()}
                db.execute("UPDATE jobs SET timings = ? WHERE id = ?", (json.dumps(merged), job_id))


def remove_job_files(outputs_dir: Path, inputs_dir: Path, job_id: str) -> None:
    """Delete a job's video, its partial files and its uploaded image (all server-made names)."""
    (Path(outputs_dir) / f"{job_id}.mp4").unlink(missing_ok=True)
    for partial in Path(outputs_dir).glob(f".{job_id}.*.partial.*"):
        partial.unlink(missing_ok=True)
    (Path(inputs_dir) / f"{job_id}.png").unlink(missing_ok=True)


def remove_partial_files(outputs_dir: Path, job_id: str | None = None) -> int:
    """Delete half-written videos (all of them at start-up, or one job's); returns how many."""
    pattern = f".{job_id}.*.partial.*" if job_id else ".*.partial.*"
    count = 0
    for partial in Path(outputs_dir).glob(pattern):
        partial.unlink(missing_ok=True)
        count += 1
    return count


def sweep_expired(store: JobStore, outputs_dir: Path, inputs_dir: Path, now: float | None = None) -> list[str]:
    """Delete the jobs (and files) whose ``expires_at`` has passed; returns their ids."""
    gone = []
    for job in store.expired(now):
        if store.delete(job.id) is not None:
            remove_job_files(outputs_dir, inputs_dir, job.id)
            gone.append(job.id)
    return gone

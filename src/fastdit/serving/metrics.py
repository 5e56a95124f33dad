"""Server counters and their Prometheus text exposition (``GET /metrics``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Metrics:
    """Counters the supervisors update; the job counts by status come from the store."""

    worker_restarts: int = 0
    step_seconds_sum: float = 0.0
    step_seconds_count: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def restart(self) -> None:
        with self.lock:
            self.worker_restarts += 1

    def step(self, seconds: float) -> None:
        with self.lock:
            self.step_seconds_sum += seconds
            self.step_seconds_count += 1

    def finish(self, status: str) -> None:
        with self.lock:
            self.finished[status] = self.finished.get(status, 0) + 1


def render(metrics: Metrics, counts: dict[str, int], workers: list[dict]) -> str:
    """The Prometheus text format (version 0.0.4)."""
    lines = ["# HELP fastdit_queue_depth Jobs waiting for a worker.", "# TYPE fastdit_queue_depth gauge",
             f"fastdit_queue_depth {counts.get('queued', 0)}",
             "# HELP fastdit_jobs Jobs in the store by status.", "# TYPE fastdit_jobs gauge"]
    lines += [f'fastdit_jobs{{status="{status}"}} {n}' for status, n in counts.items()]
    with metrics.lock:
        finished = dict(metrics.finished)
        step_sum, step_count, restarts = metrics.step_seconds_sum, metrics.step_seconds_count, metrics.worker_restarts
    lines += ["# HELP fastdit_jobs_finished_total Jobs that ended since the server started, by status.",
              "# TYPE fastdit_jobs_finished_total counter"]
    lines += [f'fastdit_jobs_finished_total{{status="{s}"}} {n}' for s, n in sorted(finished.items())]
    lines += ["# HELP fastdit_step_seconds Seconds per denoising step (steps after the first of each job).",
              "# TYPE fastdit_step_seconds summary", f"fastdit_step_seconds_sum {step_sum:.6f}",
              f"fastdit_step_seconds_count {step_count}",
              "# HELP fastdit_worker_restarts_total Worker processes started again after they died or were "
              "killed.", "# TYPE fastdit_worker_restarts_total counter", f"fastdit_worker_restarts_total {restarts}",
              "# HELP fastdit_workers Worker processes by state.", "# TYPE fastdit_workers gauge"]
    states: dict[str, int] = {}
    for w in workers:
        states[w["state"]] = states.get(w["state"], 0) + 1
    lines += [f'fastdit_workers{{state="{s}"}} {n}' for s, n in sorted(states.items())]
    return "\n".join(lines) + "\n"

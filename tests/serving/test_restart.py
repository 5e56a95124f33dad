"""SIGKILL the server with jobs queued and one running, start it again on the same state
directory: nothing is lost, the interrupted job runs again, half-written files are removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.serving.conftest import TINY
from tests.serving.helpers import REPO, ServerProcess, wait_for

pytestmark = pytest.mark.timeout(300)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_server_then_restart_loses_nothing(tiny_model, tmp_path):
    """... and, on the restarted server, a frozen worker is found out by its missing heartbeats."""
    state = tmp_path / "state"
    server = ServerProcess(tiny_model("t2v"), state, "--devices", "cpu", "--test-faults", name="restart").start()
    try:
        # a second server on the same state directory is refused while this one runs
        second = subprocess.run([sys.executable, "-m", "fastdit.serving", "--model", str(tiny_model("t2v")),
                                 "--state-dir", str(state), "--port", "0"], capture_output=True, text=True,
                                timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        assert second.returncode == 2 and "another fastdit server" in second.stderr

        client = server.client()
        running = client.create("interrupted", size="16x16", num_frames=1, steps=20, seed=5,
                                fault={"sleep_per_step": 0.2})
        queued = [client.create(f"queued {k}", seed=k, **TINY)["id"] for k in range(4)]
        wait_for(lambda: client.get(running["id"])["steps_done"] >= 2, 60, what="the running job's steps")
        assert [client.get(j)["status"] for j in queued] == ["queued"] * 4
        assert client.get(running["id"])["status"] == "in_progress"
        worker_pid = server.health()["workers"][0]["pid"]
        server.kill()  # SIGKILL of the front end, many steps before the running job would end

        wait_for(lambda: not _alive(worker_pid), 15, what="the orphaned worker to exit by itself")
    finally:
        if server.process.poll() is None:
            server.kill()

    leftover = state / "outputs" / f".{running['id']}.x1y2z3.partial.mp4"
    leftover.write_bytes(b"half a video")  # as a worker killed mid-write would leave it

    again = ServerProcess(tiny_model("t2v"), state, "--devices", "cpu", "--test-faults", "--heartbeat-timeout", "3",
                          name="restart2").start()
    try:
        client = again.client()
        assert not leftover.exists()
        listed = {j["id"] for j in client.list(limit=100)["data"]}
        assert listed == {running["id"], *queued}
        for job_id in [running["id"], *queued]:
            job = client.wait(job_id, timeout=120)
            assert job["status"] == "completed" and (state / "outputs" / f"{job_id}.mp4").is_file()
        job = client.get(running["id"])
        events = [e["event"] for e in job["history"]]
        assert events == ["queued", "started", "requeued", "started", "completed"], events
        assert "server stopped" in job["history"][2]["reason"] and job["attempts"] == 2
        assert all(client.get(j)["attempts"] == 1 for j in queued)
        check_frozen_worker_is_killed(again)
    finally:
        code = again.stop()
    assert code in (0, -15)



def check_frozen_worker_is_killed(server: ServerProcess) -> None:
    """SIGSTOP: the worker is alive but silent; after --heartbeat-timeout (3 s) it is killed and
    its job retried (attempt 2 of 2) on the restarted worker."""
    client = server.client()
    restarts = server.health()["workers"][0]["restarts"]
    job = client.create("frozen", size="16x16", num_frames=1, steps=6, fault={"sleep_per_step": 0.2})
    wait_for(lambda: client.get(job["id"])["steps_done"] >= 1, 60, what="the job to start")
    pid = server.health()["workers"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    wait_for(lambda: not _alive(pid), 30, what="the frozen worker to be killed")
    assert time.monotonic() - stopped >= 2.5
    done = client.wait(job["id"], timeout=120)
    assert done["status"] == "completed" and done["attempts"] == 2
    requeued = [e for e in done["history"] if e["event"] == "requeued"]
    assert len(requeued) == 1 and "sent nothing for 3 s" in requeued[0]["reason"]
    assert server.health()["workers"][0]["restarts"] == restarts + 1

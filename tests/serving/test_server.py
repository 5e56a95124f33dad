"""The shared server end to end: happy path, same frames as the pipeline, range requests, listing,
metrics, cancel, faults (SIGKILL of a worker, out of memory, timeout), queue limit and load."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import time

import numpy as np
import pytest

from fastdit.serving import APIError
from tests.serving.conftest import CANCEL_GRACE_S, JOB_TIMEOUT_S, MAX_QUEUE, TINY
from tests.serving.helpers import read_mp4, request, wait_for

pytestmark = pytest.mark.timeout(300)


def outputs(server):
    return server.state_dir / "outputs"


def files_of(server, job_id):
    return sorted(p.name for p in outputs(server).iterdir() if job_id in p.name)


def test_t2v_happy_path_same_frames_as_the_pipeline(server, tiny_model, tmp_path):
    client = server.client()
    job = client.create("a red fox running through snow", size="32x16", num_frames=5, steps=2, seed=7,
                        guidance_scale=3.0, negative_prompt="blurry")
    assert job["object"] == "video" and job["status"] in ("queued", "in_progress")
    assert re.fullmatch(r"video_[0-9a-f]{32}", job["id"])
    assert set(job) >= {"id", "object", "status", "progress", "created_at", "completed_at", "model", "size",
                        "seconds", "error"}
    done = client.wait(job["id"], timeout=60)
    assert done["status"] == "completed" and done["progress"] == 100 and done["error"] is None
    assert done["size"] == "32x16" and done["num_frames"] == 5 and done["seed"] == 7
    assert done["completed_at"] >= done["created_at"]
    assert done["steps_done"] == done["steps_total"] == 2
    path = client.download(job["id"], tmp_path / "server.mp4")
    served = read_mp4(path)
    assert served.shape == (5, 16, 32, 3)

    # the same request through the pipeline in this process, with the worker's thread count
    import torch

    import fastdit
    from fastdit.pipelines.result import write_video

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = fastdit.load(tiny_model("t2v"), device="cpu")
        result = pipe.generate("a red fox running through snow", negative_prompt="blurry", height=16, width=32,
                               num_frames=5, num_inference_steps=2, guidance_scale=3.0, seed=7)
    finally:
        torch.set_num_threads(threads)
    direct = read_mp4(write_video(tmp_path / "direct.mp4", result.frames, fps=result.fps))
    np.testing.assert_array_equal(served, direct)
    # and a different seed gives a different video
    other = client.wait(client.create("a red fox running through snow", size="32x16", num_frames=5, steps=2,
                                      seed=8, guidance_scale=3.0, negative_prompt="blurry")["id"], timeout=60)
    assert not np.array_equal(read_mp4(client.download(other["id"], tmp_path / "other.mp4")), served)


def test_content_range_requests_and_listing(server):
    client = server.client()
    job = client.wait(client.create("a cat", seed=1, **TINY)["id"], timeout=60)
    whole = client.content(job["id"])
    assert whole[4:8] == b"ftyp"
    part = request(server.url, "GET", f"/v1/videos/{job['id']}/content", headers={"Range": "bytes=10-99"})
    assert part.status == 206 and part.body == whole[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(whole)}"
    assert part.headers["content-type"] == "video/mp4"
    # newest first, paginated with after=
    ids = [client.create("a dog", seed=s, **TINY)["id"] for s in range(3)]
    page = client.list(limit=2)
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]
    nxt = client.list(limit=2, after=page["last_id"])
    assert nxt["data"][0]["id"] == ids[0]
    asc = client.list(limit=100, order="asc")["data"]
    assert [j["created_at"] for j in asc] == sorted(j["created_at"] for j in asc)
    for job_id in ids:
        client.wait(job_id, timeout=60)


def test_health_and_metrics(server):
    health = server.health()
    assert health["status"] == "ok" and len(health["workers"]) == 2
    text = request(server.url, "GET", "/metrics")
    assert text.status == 200 and text.headers["content-type"].startswith("text/plain")
    body = text.body.decode()
    for name in ("fastdit_queue_depth", 'fastdit_jobs{status="completed"}', "fastdit_step_seconds_sum",
                 "fastdit_step_seconds_count", "fastdit_worker_restarts_total"):
        assert name in body, name
    assert re.search(r"^fastdit_queue_depth \d+$", body, re.M)
    # CORS is off by default: no browser on another origin may read the API
    cross = request(server.url, "GET", "/v1/videos", headers={"Origin": "http://evil.example"})
    assert cross.status == 200 and "access-control-allow-origin" not in cross.headers
    preflight = request(server.url, "OPTIONS", "/v1/videos", headers={"Origin": "http://evil.example",
                                                                     "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert cross.headers["x-content-type-options"] == "nosniff"


def test_cancel_a_running_job_stops_within_one_step(server):
    client = server.client()
    job = client.create("a slow cat", size="16x16", num_frames=1, steps=30, fault={"sleep_per_step": 0.15})
    running = wait_for(lambda: (j := client.get(job["id"]))["steps_done"] >= 2 and j, 30, what="2 steps")
    cancelled = client.cancel(job["id"])
    assert cancelled["status"] == "cancelled"
    at_cancel = cancelled["steps_done"]  # what the server knew; the worker may be one step further
    stopped = wait_for(lambda: [e for e in client.get(job["id"])["history"] if e["event"] == "stopped"], 10,
                       what="the worker to stop")[0]
    # the step running when the cancel arrived is the last one (28 were left)
    assert running["steps_done"] <= at_cancel <= stopped["after_step"] <= at_cancel + 2, (at_cancel, stopped)
    assert client.get(job["id"])["status"] == "cancelled"
    assert files_of(server, job["id"]) == []
    with pytest.raises(APIError) as err:
        client.content(job["id"])
    assert err.value.status == 409
    # a second DELETE removes the record
    assert client.cancel(job["id"])["deleted"] is True
    with pytest.raises(APIError) as err:
        client.get(job["id"])
    assert err.value.status == 404


def test_cancel_a_queued_job(server):
    client = server.client()
    blockers = [client.create("busy", size="16x16", num_frames=1, steps=10, fault={"sleep_per_step": 0.1})
                for _ in range(2)]
    queued = client.create("waiting", **TINY)
    assert client.cancel(queued["id"])["status"] == "cancelled"
    for b in blockers:
        client.wait(b["id"], timeout=60)
    time.sleep(0.3)
    assert client.get(queued["id"])["status"] == "cancelled" and client.get(queued["id"])["started_at"] is None


def _worker_of(server, job_id):
    for w in server.health()["workers"]:
        if w["job"] == job_id:
            return w
    return None


def test_sigkill_worker_mid_job_retries_then_fails_per_record(server):
    client = server.client()
    restarts = sum(w["restarts"] for w in server.health()["workers"])
    job = client.create("doomed", size="16x16", num_frames=1, steps=40, fault={"sleep_per_step": 0.1})
    assert job["max_attempts"] == 2
    for attempt in (1, 2):
        worker = wait_for(lambda: (j := client.get(job["id"]))["attempts"] == attempt and j["steps_done"] >= 1
                          and _worker_of(server, job["id"]), 60, what=f"attempt {attempt} running")
        os.kill(worker["pid"], signal.SIGKILL)
        if attempt == 1:  # retried once, as its record says
            wait_for(lambda: client.get(job["id"])["attempts"] == 2, 60, what="the retry")
    final = client.wait(job["id"], timeout=60, raise_on_failure=False)
    assert final["status"] == "failed" and final["error"]["code"] == "worker_died"
    assert "SIGKILL" in final["error"]["message"] and "attempt 2 of 2" in final["error"]["message"]
    assert [e["event"] for e in final["history"]].count("requeued") == 1
    assert files_of(server, job["id"]) == []
    workers = server.wait_workers()
    assert sum(w["restarts"] for w in workers) == restarts + 2
    later = client.wait(client.create("after the crash", **TINY)["id"], timeout=60)
    assert later["status"] == "completed"


def test_injected_out_of_memory_fails_the_job_and_the_worker_recovers(server):
    client = server.client()
    pids = {w["pid"] for w in server.wait_workers()}
    job = client.wait(client.create("too big", size="16x16", num_frames=1, steps=3, fault={"oom_at_step": 2})["id"],
                      timeout=60, raise_on_failure=False)
    assert job["status"] == "failed" and job["error"]["code"] == "out_of_memory"
    assert "out of memory" in job["error"]["message"] and job["attempts"] == 1
    assert files_of(server, job["id"]) == []
    after = [client.create("fits", seed=s, **TINY)["id"] for s in range(3)]
    assert all(client.wait(j, timeout=60)["status"] == "completed" for j in after)
    assert {w["pid"] for w in server.health()["workers"]} == pids  # recovered in place, no restart


def test_job_past_its_timeout(server):
    client = server.client()
    # a slow job stops when asked: failed with the timeout, the worker stays
    slow = client.create("slow", size="16x16", num_frames=1, steps=200, fault={"sleep_per_step": 0.1})
    # a hung job ignores the request to stop: its worker is killed after the grace period
    hung = client.create("hung", size="16x16", num_frames=1, steps=3, fault={"hang_at_step": 1})
    start = time.monotonic()
    a = client.wait(slow["id"], timeout=JOB_TIMEOUT_S + 30, raise_on_failure=False)
    b = client.wait(hung["id"], timeout=JOB_TIMEOUT_S + CANCEL_GRACE_S + 30, raise_on_failure=False)
    assert time.monotonic() - start < JOB_TIMEOUT_S + CANCEL_GRACE_S + 15
    for job in (a, b):
        assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
        assert f"{JOB_TIMEOUT_S} s job timeout" in job["error"]["message"]
        assert job["attempts"] == 1 and files_of(server, job["id"]) == []
    assert "restarted" in b["error"]["message"] and "restarted" not in a["error"]["message"]
    server.wait_workers()
    assert client.wait(client.create("next", **TINY)["id"], timeout=60)["status"] == "completed"


def test_queue_limit_answers_429_and_the_server_stays_up(server):
    client = server.client()
    server.wait_workers()
    # one long step each (cancelled at the end): the queue cannot drain while it is filled
    blockers = [client.create("busy", size="16x16", num_frames=1, steps=1, fault={"sleep_per_step": JOB_TIMEOUT_S - 1})
                for _ in range(2)]
    wait_for(lambda: all(client.get(b["id"])["status"] == "in_progress" for b in blockers), 30, what="blockers")
    queued = [client.create("q", **TINY)["id"] for _ in range(MAX_QUEUE)]
    with pytest.raises(APIError) as err:
        client.create("one too many", **TINY)
    assert err.value.status == 429 and err.value.code == "queue_full"
    assert server.health()["queue_depth"] == MAX_QUEUE
    assert all(client.get(b["id"])["status"] == "in_progress" for b in blockers)
    for job_id in queued + [b["id"] for b in blockers]:
        client.cancel(job_id)
    assert client.wait(client.create("room again", **TINY)["id"], timeout=60)["status"] == "completed"


def test_load_50_jobs_from_10_clients_complete_exactly_once(server):
    server.wait_workers()
    before = _completed_total(server)

    def one_client(index: int) -> list[str]:
        client = server.client()
        ids = [client.create(f"client {index} job {k}", seed=index * 10 + k, **TINY)["id"] for k in range(5)]
        return [client.wait(job_id, timeout=120)["id"] for job_id in ids]

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one_client, range(10)))
    ids = [j for r in results for j in r]
    assert len(ids) == len(set(ids)) == 50
    client = server.client()
    for job_id in ids:
        job = client.get(job_id)
        events = [e["event"] for e in job["history"]]
        assert job["status"] == "completed" and job["attempts"] == 1, job
        assert events == ["queued", "started", "completed"], events
        assert files_of(server, job_id) == [f"{job_id}.mp4"]
    assert _completed_total(server) - before == 50
    assert server.health()["status"] == "ok"


def _completed_total(server) -> int:
    body = request(server.url, "GET", "/metrics").body.decode()
    match = re.search(r'^fastdit_jobs_finished_total\{status="completed"\} (\d+)$', body, re.M)
    return int(match.group(1)) if match else 0

"""``fastdit serve`` against the same jobs run back to back in one process.

    python benchmarks/serve.py --out benchmarks/results/serve-h200.json          # GPU: random 1.3B, 480x832x81
    python benchmarks/serve.py --tiny --out /tmp/serve.json                      # CPU: the tiny model

1. A random Wan2.1-T2V-1.3B model folder is written once to ``--work-dir`` (fastdit's 1.3B
   transformer config, the full-size Wan2.1 VAE, UMT5 with the real width 4096 but
   ``--text-layers`` layers and the tiny tokenizer's vocabulary; bf16). ``--tiny``: the tiny model.
2. direct: ``fastdit.load`` in this process, one warm-up, then ``--jobs`` generations back to back,
   each written to mp4 (what ``fastdit generate`` does per video).
3. server: ``python -m fastdit.serving`` on 127.0.0.1 (one worker on ``--device``), one warm-up
   job, then the same ``--jobs`` requests submitted at once and polled until downloadable.
   Reported: total time and its ratio to direct; per job (from each job's record) submit -> first
   step and last step -> downloadable, next to direct's call -> first step and last step -> written
   (a step is marked when its kernels are queued, in both: neither synchronises the GPU), and the
   end-to-end overhead: one job on an idle server as its client sees it (submit -> completed seen)
   minus one direct call -> written.
4. ``GET /v1/videos/{id}``: requests per second from ``--clients`` threads for ``--rps-seconds``
   while the server is otherwise idle, and while a job runs.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

PROMPT = "A cat and a dog baking a cake together in a kitchen, sunlight streaming through the window."
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# The model folder
# ---------------------------------------------------------------------------------------
def build_model(args) -> Path:
    if args.tiny:
        from fastdit.pipelines.tiny import make_tiny_model

        return make_tiny_model(Path(args.work_dir) / "tiny-t2v", task="t2v")
    folder = Path(args.work_dir) / "Wan2.1-T2V-1.3B-random"
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from fastdit.models.wan.configs import get_config
    from fastdit.pipelines import tiny

    torch.manual_seed(0)
    tokenizer = tiny.make_tokenizer()
    with torch.device(args.device):  # random init on the GPU is seconds, on the CPU minutes
        text = UMT5EncoderModel._from_config(UMT5Config(
            vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=10240, num_layers=args.text_layers, num_heads=64,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
            dense_act_fn="gelu_new", tie_word_embeddings=False), dtype=torch.bfloat16)
        transformer = WanTransformer3DModel(**get_config("Wan2.1-T2V-1.3B").to_diffusers_config()).to(torch.bfloat16)
        vae = AutoencoderKLWan()  # diffusers' defaults are the Wan2.1 VAE; fp32 as shipped
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text, vae=vae, scheduler=scheduler, transformer=transformer)
    tmp = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(str(tmp))
    os.replace(tmp, folder)
    return folder


def job_sizes(args) -> dict:
    return {"height": args.height, "width": args.width, "num_frames": args.frames, "num_inference_steps": args.steps}


# ---------------------------------------------------------------------------------------
# Direct: one process, back to back
# ---------------------------------------------------------------------------------------
def run_direct(args, model: Path, out_dir: Path) -> dict:
    import torch

    import fastdit

    device = "cpu" if args.tiny else args.device
    pipe = fastdit.load(model, device=device)
    sizes = job_sizes(args)
    pipe.generate(PROMPT, **{**sizes, "num_inference_steps": 2}, seed=0)  # warm-up
    jobs = []
    start = time.perf_counter()
    for k in range(args.jobs):
        marks: dict[str, float] = {}
        called = time.perf_counter()

        def on_step(step, total, marks=marks):  # no sync: marks when a step is queued, as the worker's reports
            now = time.perf_counter()
            marks.setdefault("first", now)
            marks["last"] = now

        result = pipe.generate(PROMPT, **sizes, seed=k, callback=on_step)
        result.save(out_dir / f"direct-{k}.mp4")
        written = time.perf_counter()
        jobs.append({"call_to_first_step_s": marks["first"] - called, "last_step_to_written_s": written - marks["last"],
                     "total_s": written - called, "per_step_s": result.timings["per_step"]})
    total = time.perf_counter() - start
    del pipe
    if device != "cpu":
        torch.cuda.empty_cache()
    return {"total_s": total, "jobs": jobs, **_medians(jobs)}


# ---------------------------------------------------------------------------------------
# Through the server
# ---------------------------------------------------------------------------------------
class Server:
    def __init__(self, args, model: Path, state: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
        device = "cpu" if args.tiny else args.device
        self.log = open(state.parent / "server.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "fastdit.serving", "--model", str(model), "--devices",
                                         device, "--state-dir", str(state), "--port", "0", "--max-queue", "1000"],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 900
        info = state / "server.json"
        while not info.is_file():
            self._alive(deadline)
        self.url = json.loads(info.read_text())["url"]
        from fastdit.serving import Client

        self.client = Client(self.url, timeout=60)
        while not any(w["state"] == "ready" for w in self.client.health()["workers"]):
            self._alive(deadline)

    def _alive(self, deadline: float) -> None:
        if self.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start (see {self.log.name})")
        time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def api_request(args) -> dict:
    return {"size": f"{args.width}x{args.height}", "num_frames": args.frames, "steps": args.steps}


def run_server(args, server: Server) -> dict:
    client = server.client
    client.wait(client.create(PROMPT, **{**api_request(args), "steps": 2}, seed=0)["id"], timeout=900)  # warm-up
    start = time.time()
    ids = [client.create(PROMPT, **api_request(args), seed=k)["id"] for k in range(args.jobs)]
    pending, done_at = set(ids), {}
    deadline = time.monotonic() + 3600
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            job = client.get(job_id)
            if job["status"] in ("completed", "failed", "cancelled"):
                if job["status"] != "completed":
                    raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
                done_at[job_id] = time.time()
                pending.discard(job_id)
        time.sleep(0.02)
    total = max(done_at.values()) - start
    jobs = []
    for job_id in ids:
        t = client.get(job_id)["timings"]
        jobs.append({"queue_s": t["queue_s"], "start_to_first_step_s": t["submit_to_first_step_s"] - t["queue_s"],
                     "last_step_to_done_s": t["last_step_to_done_s"], "per_step_s": t["per_step"],
                     "worker_total_s": t["total"] + t["write"]})
    # one job at a time on an idle server: submit -> first step and last step -> downloadable as a client sees them
    singles = []
    for k in range(args.single_jobs):
        submitted = time.time()
        job = client.create(PROMPT, **api_request(args), seed=100 + k)
        while (j := client.get(job["id"]))["status"] not in ("completed", "failed", "cancelled"):
            time.sleep(0.01)
        seen = time.time()
        t = j["timings"]
        completed_at = next(e["at"] for e in j["history"] if e["event"] == "completed")
        # downloadable = the moment the store says completed (the file is renamed before that)
        singles.append({"submit_to_first_step_s": t["submit_to_first_step_s"],
                        "last_step_to_downloadable_s": t["last_step_to_done_s"],
                        "client_saw_completed_after_s": max(0.0, seen - completed_at),
                        "client_total_s": seen - submitted})
    return {"total_s": total, "jobs": jobs, "single_jobs": singles, **_medians(jobs), **_medians(singles)}


def measure_rps(args, server: Server, while_running: bool) -> dict:
    client = server.client
    job_id = client.wait(client.create(PROMPT, **{**api_request(args), "steps": 1}, seed=1)["id"], timeout=900)["id"]
    running = None
    if while_running:
        running = client.create(PROMPT, **{**api_request(args), "steps": max(args.steps, 20 if args.tiny else 1)},
                                seed=2)["id"]
    parts = urllib.parse.urlsplit(server.url)
    stop_at = time.monotonic() + args.rps_seconds
    counts, latencies, errors = [0] * args.clients, [[] for _ in range(args.clients)], [0] * args.clients

    def hammer(index: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        for _ in range(args.rps_max_requests):
            if time.monotonic() >= stop_at:
                break
            t0 = time.perf_counter()
            try:
                conn.request("GET", f"/v1/videos/{job_id}")
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                ok = False
            latencies[index].append(time.perf_counter() - t0)
            counts[index] += ok
            errors[index] += not ok
        conn.close()

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(args.clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.rps_seconds + 60)
    elapsed = time.monotonic() - start
    if running:
        client.cancel(running)
    flat = sorted(x for xs in latencies for x in xs)
    return {"requests": sum(counts), "errors": sum(errors), "seconds": elapsed, "rps": sum(counts) / elapsed,
            "clients": args.clients, "latency_p50_ms": 1e3 * flat[len(flat) // 2] if flat else None,
            "latency_p99_ms": 1e3 * flat[int(len(flat) * 0.99)] if flat else None, "while_a_job_runs": while_running}


def _medians(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))] if rows else []
    return {f"median_{k}": statistics.median(r[k] for r in rows) for k in keys}


# ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--tiny", action="store_true", help="CPU, the tiny model, toy sizes (seconds)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "fastdit-serve-bench"))
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="per job (default 4 on the GPU, a few-step job: the overhead is per job, and "
                        "8 jobs of 4 steps and the direct run fit one device call; 10 steps did not)")
    parser.add_argument("--text-layers", type=int, default=4, help="UMT5 layers of the random model (24: full XXL)")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--single-jobs", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rps-seconds", type=float, default=5.0)
    parser.add_argument("--rps-max-requests", type=int, default=100_000, help="per client")
    args = parser.parse_args(argv)
    toy = dict(height=16, width=16, frames=5, steps=2) if args.tiny else dict(height=480, width=832, frames=81, steps=4)
    for key, value in toy.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import torch

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "serve", "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "device": "cpu" if args.tiny else torch.cuda.get_device_name(torch.device(args.device)),
        "shape": {"height": args.height, "width": args.width, "frames": args.frames, "steps": args.steps},
        "jobs": args.jobs}

    def save(phase: str, **parts) -> None:  # after every phase: a run stopped by a time cap keeps what it measured
        result.update(parts)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"[serve bench] {phase} done at {time.strftime('%H:%M:%S')}", flush=True)

    model = build_model(args)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    save("model folder")
    direct = run_direct(args, model, run_dir)
    save("direct", direct=direct)
    server = Server(args, model, run_dir / "state")
    try:
        served = run_server(args, server)
        save("server", server=served, server_over_direct_total=served["total_s"] / direct["total_s"],
             overhead_s={
                 "submit_to_first_step": served["median_submit_to_first_step_s"]
                 - direct["median_call_to_first_step_s"],
                 "last_step_to_downloadable": served["median_last_step_to_downloadable_s"]
                 - direct["median_last_step_to_written_s"],
                 # the whole of it, as a client sees one job on an idle server against one direct call
                 "end_to_end": served["median_client_total_s"] - direct["median_total_s"]})
        rps_idle = measure_rps(args, server, while_running=False)
        save("requests per second, idle", get_video_rps={"idle": rps_idle})
        rps_busy = measure_rps(args, server, while_running=True)
        save("requests per second, busy", get_video_rps={"idle": rps_idle, "while_a_job_runs": rps_busy})
    finally:
        server.stop()
    print(json.dumps({k: result[k] for k in ("device", "shape", "server_over_direct_total", "overhead_s")}, indent=1))
    print(f"GET /v1/videos/{{id}}: {rps_idle['rps']:.0f} req/s idle, {rps_busy['rps']:.0f} req/s while a job runs "
          f"({args.clients} clients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

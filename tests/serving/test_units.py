"""The pieces without a server: the field table, the job store, the CLI options, config paths."""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import random
import threading

import pytest

from fastdit.errors import InputError, UserError
from fastdit.serving.fields import FIELDS, RequestError, parse_fields, resolve_job
from fastdit.serving.guard import token_of
from fastdit.serving.store import JobStore, QueueFull, new_job_id, sweep_expired


# ---- fields -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t2v_spec(tiny_model):
    from fastdit.pipelines.spec import inspect_model

    return inspect_model(tiny_model("t2v"))


def test_field_table_covers_every_generate_option():
    """Every request-level option of `fastdit generate` has a row (load-time ones are server flags)."""
    from fastdit.cli.generate import add_generate
    from fastdit.serving.options import LOAD_OPTIONS

    parser = argparse.ArgumentParser()
    add_generate(parser.add_subparsers())
    generate = parser._subparsers._group_actions[0].choices["generate"]
    flags = {opt for action in generate._actions for opt in action.option_strings if opt.startswith("--")}
    covered = {part for f in FIELDS if f.cli for part in f.cli.split("/")}
    covered |= {o.flag for o in LOAD_OPTIONS}
    # --force: a remote client cannot lift the server's limits; --gpus/--parallel/--all-ranks: a
    # server runs one worker per device (--devices), each job on one device
    not_per_request = {"--help", "--model", "--device", "--output", "--save-frames", "--no-progress",
                       "--force", "--gpus", "--parallel", "--all-ranks"}
    assert flags - not_per_request <= covered, flags - not_per_request - covered


def test_parse_fields_types_json_and_form():
    assert parse_fields({"prompt": "a", "size": "832x480", "steps": 3, "guidance_scale": 2, "seed": 4}) == {
        "prompt": "a", "size": (832, 480), "steps": 3, "guidance_scale": 2.0, "seed": 4}
    form = parse_fields({"prompt": "a", "steps": "3", "guidance_scale": "2.5", "seconds": "4"}, from_form=True)
    assert form == {"prompt": "a", "steps": 3, "guidance_scale": 2.5, "seconds": 4.0}
    with pytest.raises(RequestError, match="must be an integer"):
        parse_fields({"prompt": "a", "steps": "3"})  # JSON: a string is not an integer
    with pytest.raises(RequestError, match="unknown field 'fault'"):
        parse_fields({"prompt": "a", "fault": {"oom_at_step": 1}})
    assert parse_fields({"prompt": "a", "fault": {"oom_at_step": 1}}, test_faults=True)["fault"] == {"oom_at_step": 1}
    assert isinstance(RequestError("x"), InputError)


def test_resolve_job_uses_the_model_rules_and_records_a_seed(t2v_spec):
    values = parse_fields({"prompt": "a cat", "size": "32x16", "seconds": 1})
    job = resolve_job(t2v_spec, values, has_image=False, model_id="m", rng=random.Random(0))
    fps = t2v_spec.defaults.fps
    assert (job["width"], job["height"]) == (32, 16)
    assert job["num_frames"] == round(fps / 4) * 4 + 1 and (job["num_frames"] - 1) % 4 == 0
    assert job["num_inference_steps"] == t2v_spec.defaults.num_inference_steps
    assert 0 <= job["seed"] < 2**53 and job["seed"] == random.Random(0).randrange(2**53)
    with pytest.raises(RequestError) as err:
        resolve_job(t2v_spec, parse_fields({"prompt": "a", "num_frames": 6}), has_image=False, model_id="m")
    assert err.value.param == "num_frames" and "4k+1" in err.value.message
    with pytest.raises(RequestError) as err:
        resolve_job(t2v_spec, parse_fields({"prompt": "a"}), has_image=True, model_id="m")
    assert err.value.param == "input_reference"


# (API fields, the param the pipeline's own check names, words of its message)
PIPELINE_REFUSALS = [
    ({"size": "20x16"}, "size", "multiple of"),
    ({"guidance_scale_2": 2.0}, "guidance_scale_2", "two-expert"),
    ({"cache": "nosuchcache"}, "cache", "nosuchcache"),
    ({"cache": "teacache:threshold=-1"}, "cache", "threshold"),
    ({"timesteps": "250,500"}, "timesteps", "decreasing"),
    ({"timesteps": "1000,500", "steps": 3}, "steps", "does not match"),
    ({"boundary_step": 1}, "boundary_step", "few-step"),
    ({"guidance_until": 0.5, "guidance_scale": 1.0}, "guidance_until", "which is off"),
    ({"zero_init_steps": 1}, "zero_init_steps", "cfg_zero_star"),
]


@pytest.mark.parametrize("fields, param, words", PIPELINE_REFUSALS, ids=[p for _, p, _ in PIPELINE_REFUSALS])
def test_pipeline_refusals_name_the_api_field(t2v_spec, fields, param, words):
    """The pipeline's InputError carries the request keyword (``field``); the server names the
    API field from it, not from the message's wording."""
    with pytest.raises(RequestError) as err:
        resolve_job(t2v_spec, parse_fields({"prompt": "a", **fields}), has_image=False, model_id="m")
    assert err.value.param == param, err.value.message
    assert words in err.value.message and "num_inference_steps" not in err.value.message


def test_input_errors_carry_their_field():
    assert InputError("x").field is None and InputError("x", field="height").field == "height"
    from fastdit.errors import ImageError

    assert ImageError("unreadable").field == "image"


# ---- the store --------------------------------------------------------------------------------
def _request(seed=0):
    return {"prompt": "p", "seed": seed, "num_inference_steps": 2, "width": 16, "height": 16, "num_frames": 1}


def test_store_lifecycle_and_guards(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite", keep_hours=1)
    a, b = new_job_id(), new_job_id()
    store.create(a, _request(), max_queue=2, max_attempts=2)
    store.create(b, _request(), max_queue=2, max_attempts=2)
    with pytest.raises(QueueFull):
        store.create(new_job_id(), _request(), max_queue=2, max_attempts=2)
    job = store.claim_next("w0")
    assert job.id == a and job.status == "in_progress" and job.attempts == 1
    store.progress(a, 1, 2)
    assert store.get(a).steps_done == 1
    assert store.requeue(a, "worker died")
    assert store.claim_next("w1").id == a  # it keeps its place at the front
    assert store.cancel(a).status == "in_progress" and store.get(a).status == "cancelled"
    assert not store.complete(a, f"{a}.mp4", {})  # a late "completed" does not resurrect it
    assert not store.fail(a, "x", "y")
    assert store.claim_next("w0").id == b and store.complete(b, f"{b}.mp4", {"denoise": 1.0})
    assert store.get(b).status == "completed" and store.get(b).expires_at is not None
    assert store.counts() == {"queued": 0, "in_progress": 0, "completed": 1, "failed": 0, "cancelled": 1}
    jobs, more = store.list(limit=1)
    assert [j.id for j in jobs] == [b] and more
    assert [j.id for j in store.list(limit=5, after=b)[0]] == [a]


def test_store_survives_reopen_and_recovers_running_jobs(tmp_path):
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    ids = [new_job_id() for _ in range(3)]
    for job_id in ids:
        store.create(job_id, _request(), max_queue=10, max_attempts=2)
    store.claim_next("w0")
    del store  # as if the process died: no close()
    again = JobStore(path)
    assert again.recover() == [ids[0]]
    assert [j.status for j in again.list(order="asc")[0]] == ["queued"] * 3
    assert again.get(ids[0]).history[-1]["event"] == "requeued"


def test_concurrent_claims_hand_out_each_job_once(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    ids = {new_job_id() for _ in range(60)}
    for job_id in ids:
        store.create(job_id, _request(), max_queue=100, max_attempts=1)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := store.claim_next(name)) is not None:
            with lock:
                claimed.append(job.id)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(worker, [f"w{i}" for i in range(6)]))
    assert sorted(claimed) == sorted(ids)


def test_expired_jobs_and_their_files_are_swept(tmp_path):
    outputs, inputs = tmp_path / "outputs", tmp_path / "inputs"
    outputs.mkdir(), inputs.mkdir()
    store = JobStore(tmp_path / "jobs.sqlite", keep_hours=2)
    old, fresh = new_job_id(), new_job_id()
    for job_id in (old, fresh):
        store.create(job_id, _request(), max_queue=10, max_attempts=1, image=f"{job_id}.png")
        (inputs / f"{job_id}.png").write_bytes(b"png")
        store.claim_next("w0")
        store.complete(job_id, f"{job_id}.mp4", {})
        (outputs / f"{job_id}.mp4").write_bytes(b"mp4")
    expires_old, expires_fresh = store.get(old).expires_at, store.get(fresh).expires_at
    assert expires_fresh > expires_old > store.get(old).completed_at + 2 * 3600 - 1
    assert sweep_expired(store, outputs, inputs, now=expires_old - 60) == []
    assert sweep_expired(store, outputs, inputs, now=expires_old) == [old]
    assert store.get(old) is None and not (outputs / f"{old}.mp4").exists() and not (inputs / f"{old}.png").exists()
    assert store.get(fresh) is not None and (outputs / f"{fresh}.mp4").exists()
    assert sweep_expired(store, outputs, inputs, now=expires_fresh) == [fresh]
    assert list(outputs.iterdir()) == [] and list(inputs.iterdir()) == []


def test_ids_are_random_and_well_formed():
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 38 and i.startswith("video_") for i in ids)


# ---- CLI, config, auth ------------------------------------------------------------------------
def _serve_args(*argv):
    from fastdit.serving.cli import add_serve

    parser = argparse.ArgumentParser()
    add_serve(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_cli_options_become_a_config(tmp_path, monkeypatch):
    from fastdit.serving.cli import cmd_serve, config_from_args

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("FASTDIT_API_KEY", "from-env")
    config = config_from_args(_serve_args("--model", "m", "--devices", "cpu,cpu", "--retries", "0",
                                          "--dtype", "bf16", "--vae-tiling", "--max-queue", "5"))
    assert config.devices == ("cpu", "cpu") and config.max_attempts == 1 and config.max_queue == 5
    assert config.load_options == {"dtype": "bf16", "scheduler": "unipc", "offload": "auto", "vae_tiling": True}
    assert config.state_dir == tmp_path / "data" / "fastdit" / "serve"
    assert config.api_key == "from-env" and config.host == "127.0.0.1" and config.cors_origins == ()
    args = _serve_args("--model", "m")
    assert args.func is cmd_serve
    import torch

    if not torch.cuda.is_available():
        assert config_from_args(args).devices == ("cpu",)  # one CPU worker on a CPU machine
    for bad, words in ((["--devices", "gpu7"], "unknown device"), (["--devices", "cuda:3"], "not available"),
                       (["--port", "70000"], "--port"), (["--max-queue", "0"], "--max-queue"),
                       (["--dtype", "fp16"], "fp16"), (["--flow-shift", "-1"], "--flow-shift")):
        with pytest.raises(UserError, match=words):
            config_from_args(_serve_args("--model", "m", *bad))


def test_cmd_serve_refuses_a_bad_model_folder(tmp_path):
    from fastdit.serving.cli import cmd_serve

    with pytest.raises(UserError, match="not found|no model_index"):
        cmd_serve(_serve_args("--model", str(tmp_path / "missing"), "--state-dir", str(tmp_path / "s")))
    assert not (tmp_path / "s").exists()  # nothing created before the model is known to be good


def test_user_data_dir_and_api_key_from_the_environment(tmp_path):
    from pathlib import Path

    from fastdit.config import serve_api_key, user_data_dir

    assert user_data_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "fastdit"
    assert user_data_dir({"XDG_DATA_HOME": "relative/dir"}) == Path.home() / ".local" / "share" / "fastdit"
    assert user_data_dir({}) == Path.home() / ".local" / "share" / "fastdit"
    assert serve_api_key({"FASTDIT_API_KEY": "  k  "}) == "k" and serve_api_key({"FASTDIT_API_KEY": ""}) is None


def test_authorization_header_parsing():
    assert token_of("Bearer abc") == "abc" and token_of("bearer  abc ") == "abc"
    assert token_of("Basic " + base64.b64encode(b"user:secret").decode()) == "secret"
    assert token_of("Basic !!!") is None and token_of("abc") is None and token_of("") is None


def test_the_housekeeper_deletes_expired_jobs(tmp_path):
    import time

    from fastdit.serving.options import ServeConfig
    from fastdit.serving.server import _Housekeeper

    config = ServeConfig(model="m", state_dir=tmp_path, keep_hours=0.5 / 3600)  # half a second
    config.outputs_dir.mkdir(), config.inputs_dir.mkdir()
    store = JobStore(config.db_path, keep_hours=config.keep_hours)
    job_id = new_job_id()
    store.create(job_id, _request(), max_queue=10, max_attempts=1)
    store.claim_next("w0")
    store.complete(job_id, f"{job_id}.mp4", {})
    (config.outputs_dir / f"{job_id}.mp4").write_bytes(b"mp4")
    keeper = _Housekeeper(config, store)
    assert keeper.interval == 1.0
    keeper.start()
    try:
        deadline = time.monotonic() + 10
        while store.get(job_id) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        keeper.stopped.set()
        keeper.join(5)
    assert store.get(job_id) is None and not (config.outputs_dir / f"{job_id}.mp4").exists()


# ---- the generation adapter (the phase-2 seam) ---------------------------------------------------
class _FakePipe:
    """Records the request it is run with and runs its steps through the control object, as
    the denoise loop does (check before each step, report after it)."""

    def __init__(self):
        self.calls: list[dict] = []

    def run(self, request, control=None):
        import dataclasses

        self.calls.append({k: v for k, v in dataclasses.asdict(request).items() if v is not None})
        total = request.num_inference_steps
        control.begin(total)
        for step in range(total):
            control.check()
            control.step_done(step + 1, total)
        return "result"


def test_run_generation_passes_the_request_and_reports_every_step(t2v_spec):
    from fastdit.serving.generation import run_generation

    job = resolve_job(t2v_spec, parse_fields({"prompt": "a cat", "size": "32x16", "steps": 3, "seed": 9}),
                      has_image=False, model_id="m")
    pipe, seen = _FakePipe(), []
    assert run_generation(pipe, job, None, on_progress=lambda s, t: seen.append((s, t)),
                          cancel_event=threading.Event()) == "result"
    assert seen == [(1, 3), (2, 3), (3, 3)]
    (call,) = pipe.calls
    expected = {"prompt": "a cat", "height": 16, "width": 32, "num_frames": job["num_frames"],
                "num_inference_steps": 3, "guidance_scale": job["guidance_scale"],
                "max_sequence_length": 512, "seed": 9}
    assert {k: call[k] for k in expected} == expected and call.get("image") is None


def test_run_generation_stops_after_the_step_in_which_it_is_cancelled(t2v_spec):
    from fastdit.errors import Cancelled
    from fastdit.serving.generation import run_generation

    job = resolve_job(t2v_spec, parse_fields({"prompt": "a cat", "steps": 10}), has_image=False, model_id="m")
    cancel, seen = threading.Event(), []

    def on_progress(step, total):
        seen.append(step)
        if step == 4:
            cancel.set()

    with pytest.raises(Cancelled):
        run_generation(_FakePipe(), job, None, on_progress=on_progress, cancel_event=cancel)
    assert seen == [1, 2, 3, 4]
    with pytest.raises(Cancelled):  # already cancelled: the pipeline is not called at all
        pipe = _FakePipe()
        run_generation(pipe, job, None, on_progress=on_progress, cancel_event=cancel)
    assert pipe.calls == []

"""GPU-only: ``fastdit serve`` with a worker on cuda:0 (the tiny model): a job completes with the
same frames as a direct GPU call, a cancel stops it, an injected out-of-memory error leaves the
worker serving. Run by benchmarks/gpu_run.sh (``tests`` step) on the device machine."""

import numpy as np
import pytest

from tests.serving.helpers import ServerProcess, read_mp4, wait_for

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]


def test_serve_on_the_gpu(tmp_path):
    import torch

    import fastdit
    from fastdit.pipelines.result import write_video
    from fastdit.pipelines.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny", task="t2v")
    server = ServerProcess(model, tmp_path / "state", "--devices", "0", "--test-faults", name="gpu").start()
    try:
        assert server.health()["workers"][0]["device"] == "cuda:0"
        client = server.client()
        job = client.wait(client.create("a cat", size="32x32", num_frames=5, steps=3, seed=3)["id"], timeout=300)
        served = read_mp4(client.download(job["id"], tmp_path / "served.mp4"))
        assert served.shape == (5, 32, 32, 3)
        pipe = fastdit.load(model, device="cuda:0")
        result = pipe.generate("a cat", height=32, width=32, num_frames=5, num_inference_steps=3, seed=3)
        direct = read_mp4(write_video(tmp_path / "direct.mp4", result.frames, fps=result.fps))
        del pipe
        torch.cuda.empty_cache()
        diff = np.abs(served.astype(np.int16) - direct.astype(np.int16))
        assert diff.mean() < 0.5 and diff.max() <= 8, (diff.mean(), diff.max())

        oom = client.wait(client.create("x", size="32x32", num_frames=1, steps=3, fault={"oom_at_step": 1})["id"],
                          timeout=300, raise_on_failure=False)
        assert oom["error"]["code"] == "out_of_memory"
        slow = client.create("slow", size="32x32", num_frames=1, steps=50, fault={"sleep_per_step": 0.2})
        wait_for(lambda: client.get(slow["id"])["steps_done"] >= 2, 120, what="the slow job")
        client.cancel(slow["id"])
        stopped = wait_for(lambda: [e for e in client.get(slow["id"])["history"] if e["event"] == "stopped"], 30,
                           what="the stop")[0]
        assert stopped["after_step"] < 50
        assert client.wait(client.create("after", size="32x32", num_frames=1, steps=2)["id"], timeout=300)["status"] \
            == "completed"
    finally:
        server.stop()

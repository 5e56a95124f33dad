"""One shared server for most serving tests (tiny T2V model, two CPU workers, test faults on)."""

import signal

import pytest

from tests.pipelines.helpers import tiny_model as _tiny_model
from tests.serving.helpers import ServerProcess

# Small enough that a job takes a fraction of a second on a CPU.
TINY = {"size": "16x16", "num_frames": 1, "steps": 2}
JOB_TIMEOUT_S = 10
CANCEL_GRACE_S = 2
MAX_QUEUE = 64


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny-models")
    return lambda task: _tiny_model(base, task)


@pytest.fixture(scope="session")
def server(tiny_model, tmp_path_factory):
    """The shared server: T2V tiny model, workers on cpu,cpu, --test-faults, short job timeout."""
    root = tmp_path_factory.mktemp("serve-shared")
    # one torch thread per worker: the same thread count as the direct call it is compared with
    proc = ServerProcess(tiny_model("t2v"), root / "state", "--devices", "cpu,cpu", "--cpu-threads", "1",
                         "--test-faults", "--job-timeout", str(JOB_TIMEOUT_S), "--cancel-grace", str(CANCEL_GRACE_S),
                         "--max-queue", str(MAX_QUEUE), "--max-body-bytes", str(2 * 2**20),
                         "--max-image-bytes", str(2**20), "--max-prompt-chars", "1000", name="shared")
    proc.start()
    yield proc
    code = proc.stop()
    # uvicorn shuts down cleanly on SIGTERM, then re-raises the signal (exit status 143)
    assert code == -signal.SIGTERM, f"server exit code {code}; log:\n{proc.log_text()[-3000:]}"
    assert "[fastdit serve] stopped" in proc.log_text()

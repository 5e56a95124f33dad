"""The launcher (``fastdit generate --gpus N``'s process starter) and torchrun's way in, on gloo."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastdit.config import DistributedEnv, distributed_env
from fastdit.distributed.launch import free_port, launch, needs_launch, rank_environment, rank_output
from fastdit.errors import UserError

SCRIPT = Path(__file__).with_name("rank_script.py")
ROOT = Path(__file__).resolve().parents[2]


def _env():
    return {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}


def _launch_in_subprocess(mode: str, tmp_path: Path, timeout: float = 120):
    """Run the launcher in a child, so that rank 0's inherited stdout can be captured."""
    code = ("import sys; from fastdit.distributed.launch import launch; "
            f"sys.exit(launch([sys.executable, {str(SCRIPT)!r}, {mode!r}, '2'], 2, "
            f"log_dir={str(tmp_path)!r}))")
    return _run_session([sys.executable, "-c", code], timeout)


def _run_session(command: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` in its own session (environment ``env``, default a minimal one), killing
    the whole session (its ranks too) if it outlives ``timeout``."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env() if env is None else env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.timeout(180)
def test_launcher_runs_ranks_and_only_rank0_prints(tmp_path):
    result = _launch_in_subprocess("ok", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rank 0: sum 3 of 2 ranks" in result.stdout  # the all-reduce saw both ranks
    assert "marker from rank 0" in result.stdout
    assert "rank 1" not in result.stdout + result.stderr  # rank 1 went to its log file
    assert "marker from rank 1" in (tmp_path / "rank1.log").read_text()
    assert "rank 1: sum" not in (tmp_path / "rank1.log").read_text()  # rank_output silenced it


@pytest.mark.timeout(180)
def test_launcher_returns_failing_rank_code_and_stops_the_rest(tmp_path):
    start = time.monotonic()
    result = _launch_in_subprocess("fail", tmp_path)
    assert result.returncode == 3
    assert "rank 1 exited with 3" in result.stderr
    assert "rank 1 is failing on purpose" in result.stderr  # its log tail is shown
    assert time.monotonic() - start < 90  # rank 0, blocked in the all-reduce, was stopped


@pytest.mark.timeout(180)
def test_torchrun_entry():
    result = _run_session([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), str(SCRIPT), "ok", "2"], 150)
    assert result.returncode == 0, result.stderr
    assert "rank 0: sum 3 of 2 ranks" in result.stdout
    assert "rank 1: sum" not in result.stdout


def test_launch_timeout_stops_ranks(tmp_path):
    start = time.monotonic()
    code = launch([sys.executable, "-c", "import time; time.sleep(60)"], 2, log_dir=tmp_path,
                  timeout_s=1.0, stream=io.StringIO())
    assert code == 124
    assert time.monotonic() - start < 30


def test_needs_launch():
    assert needs_launch(4, DistributedEnv()) is True
    assert needs_launch(1, DistributedEnv()) is False
    assert needs_launch(None, DistributedEnv()) is False
    launched = DistributedEnv(rank=1, world_size=4)
    assert needs_launch(4, launched) is False  # a rank started by the launcher or torchrun
    with pytest.raises(UserError, match="--gpus 2 was given.*rank 1 of 4"):
        needs_launch(2, launched)
    with pytest.raises(UserError, match="--gpus must be >= 1"):
        needs_launch(0, DistributedEnv())


def test_rank_environment_is_what_distributed_env_reads():
    env = rank_environment(3, 4, 29999, base={"KEEP": "1"})
    read = distributed_env(env)
    assert (read.rank, read.world_size, read.local_rank, read.local_world_size) == (3, 4, 3, 4)
    assert (read.master_addr, read.master_port, read.launched) == ("127.0.0.1", 29999, True)
    assert env["KEEP"] == "1"
    assert distributed_env({}) == DistributedEnv() and not DistributedEnv().launched


def test_rank_output_silences_other_ranks(capsys):
    with rank_output(1):
        print("hidden")
    with rank_output(1, verbose=True):
        print("asked for")
    with rank_output(0):
        print("writer")
    assert capsys.readouterr().out == "asked for\nwriter\n"


@pytest.mark.timeout(120)
def test_sigterm_to_the_launcher_stops_every_rank(tmp_path):
    sleeper = (f"import os, time; open(os.path.join({str(tmp_path)!r}, 'pid' + os.environ['RANK']), 'w')"
               f".write(str(os.getpid())); time.sleep(100)")
    code = ("import sys; from fastdit.distributed.launch import launch; "
            f"sys.exit(launch([sys.executable, '-c', {sleeper!r}], 2, log_dir={str(tmp_path / 'logs')!r}))")
    parent = subprocess.Popen([sys.executable, "-c", code], env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while len(list(tmp_path.glob("pid*"))) < 2 or any(p.stat().st_size == 0 for p in tmp_path.glob("pid*")):
            assert time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.2)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 143
        for path in tmp_path.glob("pid*"):
            with pytest.raises(ProcessLookupError):  # stopped and reaped
                os.kill(int(path.read_text()), 0)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()

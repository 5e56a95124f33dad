"""``fastdit generate`` on several processes (gloo on the CPU): ``--gpus 2`` and torchrun each
write ONE video equal to the one-process run, rank 0 alone prints; a bad layout is one line on
stderr and exit code 2 before any process starts or any weights load."""

from __future__ import annotations

import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from fastdit.cli import main
from fastdit.distributed.launch import free_port
from tests.distributed.test_launch import _run_session

REQUEST = ["--prompt", "a cat on a boat", "--negative-prompt", "blurry", "--height", "48", "--width", "48",
           "--num-frames", "9", "--steps", "2", "--seed", "3", "--device", "cpu", "--no-progress"]


def _argv(model, folder: Path, *extra) -> list[str]:
    return ["generate", "--model", str(model), *REQUEST, "--output", str(folder / "video.mp4"),
            "--save-frames", str(folder / "frames"), *extra]


def _frames(folder: Path) -> np.ndarray:
    return np.stack([iio.imread(p) for p in sorted((folder / "frames").glob("frame_*.png"))]).astype(int)


@pytest.fixture(scope="module")
def one_process(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("one-process")
    assert main(_argv(tiny_model("t2v"), folder)) == 0
    return _frames(folder)


def _check_one_video(result, folder: Path, reference: np.ndarray) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1 and result.stdout.count("seconds:") == 1  # rank 0 only
    assert sorted(p.name for p in folder.iterdir()) == ["frames", "video.mp4"]  # no partial files
    assert iio.imread(folder / "video.mp4").shape == (9, 48, 48, 3)
    frames = _frames(folder)
    assert frames.shape == reference.shape
    # the float frames agree within 2e-5 (tests/distributed/test_pipeline_parallel.py); a value
    # that close to a rounding boundary may land one uint8 level away
    difference = np.abs(frames - reference)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


@pytest.mark.timeout(400)
def test_gpus_2_writes_one_video_equal_to_one_process(tiny_model, one_process, tmp_path):
    command = [sys.executable, "-m", "fastdit", *_argv(tiny_model("t2v"), tmp_path, "--gpus", "2",
                                                        "--parallel", "ulysses=2")]
    result = _run_session(command, 360)
    _check_one_video(result, tmp_path, one_process)


@pytest.mark.timeout(400)
def test_torchrun_writes_one_video_equal_to_one_process(tiny_model, one_process, tmp_path):
    # no --parallel: "auto" picks cfg 2 for a guided request on two processes
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "fastdit", *_argv(tiny_model("t2v"), tmp_path)]
    result = _run_session(command, 360)
    _check_one_video(result, tmp_path, one_process)
    assert result.stderr.count("parallel layout (auto): cfg 2") == 1  # logged by rank 0 alone


@pytest.mark.parametrize("extra,message", [
    (["--gpus", "2", "--parallel", "ulysses=2,cfg=2"], "ulysses=2 x ring=1 x cfg=2 = 4 rank(s), but 2 "
                                                       "process(es) were started"),
    (["--gpus", "4", "--parallel", "ulysses=4"], "ulysses=4 does not divide the 2 attention heads"),
    (["--parallel", "cfg=2", "--guidance-scale", "1"], "cfg=2 runs the two classifier-free guidance"),
    (["--parallel", "ulysses=two"], "ulysses must be a whole number, got 'two'"),
    (["--parallel", "tensor=2"], "expected name=value pairs with names ulysses, ring, cfg, vae"),
    (["--gpus", "1", "--parallel", "ring=2"], "needs 2 processes; start them with `fastdit generate --gpus 2"),
    (["--gpus", "0"], "--gpus must be >= 1"),
    (["--vae-tiling", "--parallel", "ring=2,vae=2"], "does not combine with VAE tiling"),
])
def test_layout_errors_exit_2_in_one_line_before_loading(extra, message, tiny_model, tmp_path, capsys,
                                                         monkeypatch):
    from fastdit.cli import parallel
    from fastdit.pipelines.wan import WanVideoPipeline

    def must_not_run(*args, **kwargs):
        raise AssertionError("reached past the layout check")

    monkeypatch.setattr(WanVideoPipeline, "from_pretrained", must_not_run)  # nothing may load
    monkeypatch.setattr(parallel, "start_ranks", must_not_run)  # nothing may start
    code = main(["generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat", "--output",
                 str(tmp_path / "v.mp4"), *extra])
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("fastdit generate: error: ") and message in err, err
    assert out == "" and not list(tmp_path.iterdir())

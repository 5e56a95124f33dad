"""GPU checks of the multi-GPU launch paths through ``fastdit generate`` (tiny model, fp32):

* one GPU: ``--gpus 1`` and ``torchrun --nproc-per-node 1`` write the same video as the plain
  run (the same code on the same device: frames within one uint8 level);
* two GPUs (skipped with fewer): ``--gpus 2`` with Ulysses 2 and with CFG 2, on NCCL, within
  three uint8 levels of the one-GPU frames (cuDNN may use TF32 in the VAE's convolutions, whose
  band decode sums differently).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fastdit.distributed.launch import free_port
from tests.distributed.test_launch import ROOT, _run_session

# the device machine's environment (its PYTHONPATH carries the wheels), with this checkout first
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
    str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))}

pytestmark = pytest.mark.gpu

REQUEST = ["--prompt", "a cat on a boat", "--negative-prompt", "blurry", "--height", "48", "--width", "48",
           "--num-frames", "9", "--steps", "3", "--seed", "3", "--dtype", "fp32", "--no-progress"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from fastdit.pipelines.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "t2v", task="t2v")


def _generate(model, folder: Path, launcher: list[str], *extra) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    command = [*launcher, "-m", "fastdit", "generate", "--model", str(model), *REQUEST, "--output",
               str(folder / "video.mp4"), "--save-frames", str(folder / "frames"), *extra]
    result = _run_session(command, 400, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1
    return np.stack([iio.imread(p) for p in sorted((folder / "frames").glob("*.png"))]).astype(int)


@pytest.fixture(scope="module")
def plain(model, tmp_path_factory):
    return _generate(model, tmp_path_factory.mktemp("plain"), [sys.executable])


@pytest.mark.timeout(500)
@pytest.mark.parametrize("how", ["gpus1", "torchrun1"])
def test_one_gpu_launch_equals_plain_run(how, model, plain, tmp_path):
    if how == "gpus1":
        frames = _generate(model, tmp_path, [sys.executable], "--gpus", "1")
    else:
        frames = _generate(model, tmp_path, [sys.executable, "-m", "torch.distributed.run",
                                             "--nproc-per-node", "1", "--master-port", str(free_port())])
    assert np.abs(frames - plain).max() <= 1


@pytest.mark.timeout(500)
@pytest.mark.parametrize("layout", ["ulysses=2", "cfg=2"])
def test_two_gpus_match_one(layout, model, plain, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    frames = _generate(model, tmp_path, [sys.executable], "--gpus", "2", "--parallel", layout)
    assert np.abs(frames - plain).max() <= 3 and np.abs(frames - plain).mean() < 0.05

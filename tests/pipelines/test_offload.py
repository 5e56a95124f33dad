"""Block offload, fp8 weights and memory budgets through ``fastdit.load`` (tiny models, CPU):
streamed pipelines make exactly the video of resident ones; the plain path is unchanged."""

import logging

import numpy as np
import pytest

import fastdit
from fastdit.errors import UserError
from fastdit.models.wan import WanTransformer
from fastdit.runtime import StreamedTransformer

RUN = {"height": 32, "width": 48, "num_frames": 5, "num_inference_steps": 2, "seed": 0}


def _frames(pipe, prompt="a red car in the city"):
    return pipe.generate(prompt, negative_prompt="blurry", **RUN).frames


@pytest.fixture(scope="module")
def reference(tiny_model):
    cache = {}

    def frames(task):
        if task not in cache:
            cache[task] = _frames(fastdit.load(tiny_model(task), device="cpu"))
        return cache[task]

    return frames


def test_plain_path_unchanged(tiny_model):
    pipe = fastdit.load(tiny_model("t2v"), device="cpu")
    assert type(pipe.transformer) is WanTransformer and pipe.memory_plan is None and pipe.offload == "none"


@pytest.mark.parametrize("task", ["t2v", "a14b"])
def test_streamed_pipeline_equals_resident(tiny_model, reference, task, caplog):
    with caplog.at_level(logging.INFO, logger="fastdit"):
        pipe = fastdit.load(tiny_model(task), device="cpu", offload="blocks", prefetch=1)
    assert "memory plan for no limit" in caplog.text and "streamed from host memory" in caplog.text
    assert isinstance(pipe.transformer, StreamedTransformer) and pipe.memory_plan.streams
    np.testing.assert_array_equal(_frames(pipe), reference(task))
    stats = pipe.transformer.stats
    assert stats["copies"] > 0 and stats["pool_buffers"] == 2  # two staging slots, nothing more
    if task == "a14b":  # the experts take turns on one pool
        assert pipe.transformer_2.streamer.region is pipe.transformer.streamer.region
        assert pipe.transformer_2.stats["copies"] > 0 and pipe.offload == "experts"


def test_fp8_weights_pipeline(tiny_model, reference):
    pipe = fastdit.load(tiny_model("t2v"), device="cpu", weights="fp8")
    assert pipe.memory_plan.weights == "fp8" and not pipe.memory_plan.streams
    frames = _frames(pipe)
    diff = np.abs(frames - reference("t2v"))
    assert 0 < diff.max() < 0.1 and diff.mean() < 0.01  # lossy, but close


def test_budget_through_load(tiny_model):
    path = tiny_model("t2v")
    with pytest.raises(UserError, match="cannot hold this model"):
        fastdit.load(path, device="cpu", max_gpu_memory="1KB")
    for bad in ("abc", "0", "-3GB"):
        with pytest.raises(UserError, match="max_gpu_memory"):
            fastdit.load(path, device="cpu", max_gpu_memory=bad)
    pipe = fastdit.load(path, device="cpu", max_gpu_memory="8GB", text_encoder_device="cpu")
    assert pipe.memory_plan.budget == 8 * 10**9 and pipe.memory_plan.encoders == "cpu"
    assert type(pipe.transformer) is WanTransformer  # everything fits: the plain transformer

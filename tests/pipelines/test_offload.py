"""Block offload, fp8 weights and memory budgets through ``fastdit.load`` (tiny models, CPU):
streamed pipelines make exactly the video of resident ones; the plain path is unchanged."""

import logging

import numpy as np
import pytest

import fastdit
from fastdit.errors import UserError
from fastdit.models.wan import WanTransformer
from fastdit.quant.apply import PrecisionAttention
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


@pytest.mark.parametrize("task", ["t2v", "a14b"])
def test_streamed_blocks_with_the_fp8_precision(tiny_model, reference, task, caplog):
    """quantize="fp8" with streamed blocks: the host store holds the e4m3 weights the precision
    setting would make (one quantiser), the streamed Linears run fp8 products on them (no
    dense buffer), and the video equals the resident fp8 pipeline's exactly (native providers
    on the CPU: the same kernels on the same values)."""
    resident = fastdit.load(tiny_model(task), device="cpu", quantize="fp8")
    with caplog.at_level(logging.INFO, logger="fastdit"):
        streamed = fastdit.load(tiny_model(task), device="cpu", quantize="fp8", offload="blocks", prefetch=1)
    assert "the streamed block weights are stored in e4m3" in caplog.text
    assert isinstance(streamed.transformer, StreamedTransformer) and streamed.memory_plan.weights == "fp8"
    region = streamed.transformer.streamer.region
    assert region.dense_layout is None  # the products take the fp8 weights as stored
    linear = streamed.transformer.model.blocks[0].attn1.to_q
    assert linear.compute == "fp8" and linear.takes_fp8
    report = streamed.precision_reports[0]
    assert report.weights is not None and len(report.weights.layers) > 0 and report.weights.bytes_before == 0
    assert "stored in e4m3 already" in report.describe()
    assert isinstance(streamed.transformer.model.attend, PrecisionAttention)
    if task == "a14b":
        assert streamed.transformer_2.model.blocks[0].ffn.net[2].takes_fp8
        assert isinstance(streamed.transformer_2.model.attend, PrecisionAttention)
    frames = _frames(streamed)
    np.testing.assert_array_equal(frames, _frames(resident))
    assert np.abs(frames - reference(task)).max() > 0  # the 8-bit path ran, not the exact one
    assert streamed.transformer.stats["copies"] > 0


def test_streamed_blocks_with_8_bit_attention_only(tiny_model):
    """An attention-only precision streams dense weights as before (the dense buffer unused)."""
    resident = fastdit.load(tiny_model("t2v"), device="cpu", quantize="fp8:linear=exact")
    streamed = fastdit.load(tiny_model("t2v"), device="cpu", quantize="fp8:linear=exact", offload="blocks")
    assert streamed.memory_plan.weights == "dense"
    assert not streamed.transformer.model.blocks[0].attn1.to_q.takes_fp8
    np.testing.assert_array_equal(_frames(streamed), _frames(resident))

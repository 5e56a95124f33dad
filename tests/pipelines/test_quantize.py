"""``fastdit.load(..., quantize=...)``: the precision setting through the pipeline: the
transformer(s) converted once at load, the setting in ``result.settings``, the default path
untouched, and bad settings rejected before anything is loaded."""

import numpy as np
import pytest
import torch

import fastdit
from fastdit.errors import InputError
from fastdit.quant.config import preset
from fastdit.quant.formulas import FP8_DTYPE

SMALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2)


@pytest.fixture(scope="module")
def exact_and_fp8(tiny_model):
    path = tiny_model("t2v")
    exact = fastdit.load(path, device="cpu", dtype=torch.float32)
    fp8 = fastdit.load(path, device="cpu", dtype=torch.float32, quantize="fp8")
    return exact, fp8


def test_fp8_pipeline_generates_a_close_video_and_records_the_setting(exact_and_fp8):
    exact, fp8 = exact_and_fp8
    a = exact.generate("a red fox", seed=1, **SMALL)
    b = fp8.generate("a red fox", seed=1, **SMALL)
    assert b.frames.shape == a.frames.shape and not np.array_equal(a.frames, b.frames)
    assert np.abs(a.frames - b.frames).mean() < 0.02  # the same video, slightly different
    assert a.settings["quantize"] == "none" and a.settings["precision"]["exact"] is True
    assert b.settings["quantize"] == "fp8"
    summary = b.settings["precision"]
    assert summary["exact"] is False and summary["attention"] == "int8" and summary["linear"] == "fp8"
    assert summary["attention_providers"][0] in ("int8_triton", "int8_native")
    assert summary["weight_bytes"] < sum(p.numel() * p.element_size()
                                         for p in exact.transformer.parameters())


def test_only_the_quantised_pipeline_has_fp8_weights(exact_and_fp8):
    exact, fp8 = exact_and_fp8
    assert fp8.precision == preset("fp8") and exact.precision.exact
    assert fp8.transformer.blocks[0].attn1.to_q.weight.dtype == FP8_DTYPE
    assert fp8.transformer.proj_out.weight.dtype == torch.float32  # the head stays dense
    assert all(p.dtype != FP8_DTYPE for p in exact.transformer.parameters())
    assert exact.precision_reports == [] and len(fp8.precision_reports) == 1


def test_both_wan22_experts_are_quantised(tiny_model):
    pipe = fastdit.load(tiny_model("a14b"), device="cpu", dtype=torch.float32,
                        quantize="fp8:attention=exact", offload="none")
    assert len(pipe.precision_reports) == 2
    for expert in (pipe.transformer, pipe.transformer_2):
        assert expert.blocks[0].ffn.net[2].weight.dtype == FP8_DTYPE
    assert pipe.generate("a dog", seed=0, **SMALL).settings["quantize"] == "fp8:attention=exact"


@pytest.mark.parametrize("value,message", [
    ("int8", "quantize must be one of none, fp8, got 'int8'"),
    ("fp8:attention=fast", "attention must be one of exact, int8, sage"),
])
def test_bad_quantize_is_an_input_error_before_loading(value, message, tmp_path):
    with pytest.raises(InputError, match=message):
        fastdit.load(tmp_path / "not-even-a-model", device="cpu", quantize=value)

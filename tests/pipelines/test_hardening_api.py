"""Regression tests for the bad-input report (shared/reports/bad-input-2026-12-01.md), Python
API side: ``fastdit.load(...)``, ``generate``, ``save``, ``load_image``, requests and the
size estimate. Errors are ValueError / FileNotFoundError / OSError subclasses from
``fastdit.errors`` whose message names the argument."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

import fastdit
from fastdit.errors import (CheckpointError, DeviceError, ImageError, InputError, OutputError,
                            ResourceError, as_fastdit_error)
from fastdit.pipelines import inspect_model
from fastdit.pipelines.request import GenerationRequest, resolve_request
from fastdit.pipelines.stages import load_image

TINY = dict(num_frames=1, height=16, width=16, num_inference_steps=1)


@pytest.fixture(scope="module")
def t2v_pipe(tiny_model):
    return fastdit.load(tiny_model("t2v"), device="cpu")


# ---- D3: a missing text-encoder tensor is an error, not random weights --------------------------
def test_d3_text_encoder_missing_tensor(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    root = shutil.copytree(tiny_model("t2v"), tmp_path / "tedel")
    path = root / "text_encoder" / "model.safetensors"
    tensors = load_file(path)
    del tensors["encoder.block.0.layer.0.SelfAttention.q.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="text_encoder.*'encoder.block.0.layer.0.SelfAttention.q.weight'"):
        fastdit.load(root, device="cpu")
    # the library's own report is checked too (a checkpoint the header check could not map)
    with pytest.raises(CheckpointError, match="cannot load text_encoder.*lack"):
        fastdit.load(root, device="cpu", check_files=False)


# ---- D4: flow shift -------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [float("nan"), float("inf"), -1.0, 0.0, "abc"])
def test_d4_flow_shift_must_be_positive_and_finite(tiny_model, shift):
    with pytest.raises(InputError, match="flow_shift must be a"):
        fastdit.load(tiny_model("t2v"), device="cpu", flow_shift=shift)


# ---- D5, D10, D17: images ---------------------------------------------------------------------
def test_d5_integer_arrays_are_0_to_255_and_uint16_0_to_65535():
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (6, 7, 3))
    assert np.array_equal(np.asarray(load_image(eight)), eight.astype(np.uint8))  # int64, not "float"
    assert np.array_equal(np.asarray(load_image(torch.from_numpy(eight))), eight.astype(np.uint8))
    sixteen = rng.integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    assert np.array_equal(np.asarray(load_image(sixteen)), np.round(sixteen / 257).astype(np.uint8))
    floats = rng.random((6, 7, 3)).astype(np.float32)
    assert np.array_equal(np.asarray(load_image(floats)), (floats * 255).round().astype(np.uint8))


@pytest.mark.parametrize("image, words", [
    (np.random.default_rng(0).random((8, 8, 3)) * 255, "float image arrays must be in [0, 1]"),
    (np.full((4, 4, 3), -0.5, np.float32), "float image arrays must be in [0, 1]"),
    (np.full((4, 4), np.nan, np.float32), "must be finite"),
    (np.full((4, 4, 3), 300), "integer image arrays must hold 0..255"),
    (torch.rand(0, 0, 3), "image is empty (0x0)"),
    (np.zeros((0, 5), np.uint8), "image is empty"),
    (np.zeros((4, 4), dtype=complex), "must hold integers or floats"),
])
def test_d5_d17_bad_arrays_are_image_errors(image, words):
    with pytest.raises(ImageError) as info:
        load_image(image)
    assert words in str(info.value)


def test_d17_empty_image_before_text_encoding(tiny_model):
    pipe = fastdit.load(tiny_model("ti2v"), device="cpu")
    with pytest.raises(InputError, match=r"^cannot read image: image is empty \(0x0\)$"):
        pipe.generate("cat", image=torch.rand(0, 0, 3), num_frames=1, height=32, width=32, num_inference_steps=1)


def test_d10_decompression_bomb_is_an_image_error(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("1", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # the same guard, at a test's size
    with pytest.raises(ImageError, match="90000 pixels is more than the limit of 10000 pixels"):
        load_image(str(path))
    with pytest.raises(ImageError, match="90000 pixels"):
        load_image(path)


# ---- D9, D11, D23, D30: request values --------------------------------------------------------------
@pytest.mark.parametrize("seed, words", [
    ("abc", "seed must be an integer, got 'abc'"),
    (2**70, "seed must be an integer in [-2^63, 2^64), got 1180591620717411303424"),
    (-(2**63) - 1, "seed must be an integer in [-2^63, 2^64)"),
    (1.7, "seed must be an integer, got 1.7"),  # D30: no silent truncation
    (True, "seed must be an integer"),
])
def test_d9_d30_seed_checked_before_any_work(t2v_pipe, seed, words):
    with pytest.raises(InputError) as info:
        t2v_pipe.generate("cat", seed=seed, **TINY)
    assert words in str(info.value)


def test_d9_seed_edges_are_accepted(tiny_model):
    spec = inspect_model(tiny_model("t2v"))
    for seed in (-(2**63), 2**64 - 1, np.int64(3), 2.0, None):
        resolve_request(spec, GenerationRequest("cat", seed=seed, **TINY))


def test_d11_prompt_that_is_not_utf8(t2v_pipe):
    with pytest.raises(InputError, match="prompt is not valid UTF-8"):
        t2v_pipe.generate("bad \udcff\udcfe bytes", **TINY)
    with pytest.raises(InputError, match="negative_prompt is not valid UTF-8"):
        t2v_pipe.generate("ok", negative_prompt="\udcff", **TINY)


def test_d23_numpy_and_torch_integers_are_integers(tiny_model):
    spec = inspect_model(tiny_model("t2v"))
    req = resolve_request(spec, height=np.int64(16), width=torch.tensor(32), num_frames=np.uint8(5),
                          num_inference_steps=torch.tensor(2))
    assert (req.height, req.width, req.num_frames, req.num_inference_steps) == (16, 32, 5, 2)
    assert all(type(v) is int for v in (req.height, req.width, req.num_frames))
    for bad in (torch.tensor(16.5), np.float32(16.5), "16", True, [16]):
        with pytest.raises(InputError, match="height must be an integer"):
            resolve_request(spec, height=bad)


# ---- D20, D21: device and dtype ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, words", [
    (dict(device="banana"), "unknown device 'banana'"),
    (dict(device="meta"), "device 'meta' is not available"),
    (dict(device=3), "device must be a string or a torch.device"),
    (dict(dtype=torch.int64), "dtype must be a floating-point dtype"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(device="cpu", dtype=torch.float16), "dtype float16 is not supported on the CPU"),
    (dict(dtype="fp16"), "dtype float16 is not supported on the CPU"),
])
def test_d20_d21_device_and_dtype_errors_name_the_argument(tiny_model, kwargs, words):
    if torch.cuda.is_available() and "device" not in kwargs:
        pytest.skip("the default device is a GPU here")
    with pytest.raises(DeviceError) as info:
        fastdit.load(tiny_model("t2v"), **kwargs)
    assert words in str(info.value) and isinstance(info.value, ValueError)


def test_d20_unavailable_gpu_is_a_device_error(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match="device 'cuda' is not available on this machine"):
        fastdit.load(tiny_model("t2v"), device="cuda")


def test_d20_dtype_names_are_accepted(tiny_model):
    assert fastdit.load(tiny_model("t2v"), device="cpu", dtype="bf16").dtype == torch.bfloat16


# ---- D25, D1: save() --------------------------------------------------------------------------------
@pytest.fixture
def result():
    from fastdit.pipelines.result import GenerationResult

    return GenerationResult(frames=np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32), fps=8)


def test_d25_save_errors_name_the_users_path(result, tmp_path):
    target = tmp_path / "nonexistent-dir" / "a.mp4"
    with pytest.raises(OutputError) as info:
        result.save(target)
    assert str(info.value) == f"cannot write {target}: folder {target.parent} does not exist"
    assert isinstance(info.value, OSError) and "partial" not in str(info.value)
    for fps in (float("nan"), -5, float("inf"), 10**11, "fast"):
        with pytest.raises(ValueError, match="fps must be a positive number"):
            result.save(tmp_path / "a.mp4", fps=fps)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even an empty file (D1, P42)


def test_d1_real_ffmpeg_failure_is_detected(tmp_path):
    """An fps ffmpeg refuses (past the check, straight to the encoder): exit status caught."""
    from fractions import Fraction

    from fastdit.pipelines.atomic import PartialFile
    from fastdit.pipelines.video_io import FfmpegEncoder

    frames = np.zeros((1, 16, 16, 3), np.uint8)
    with PartialFile(tmp_path / "a.mp4") as part:
        with pytest.raises(OutputError, match=r"ffmpeg failed \(exit status \d+\): .*Invalid argument"):
            FfmpegEncoder().encode(part.path, iter(frames), 16, 16, Fraction(10**11))
    assert list(tmp_path.iterdir()) == []


def test_d1_failing_encoder_leaves_the_existing_video(result, tmp_path):
    class FullDisk:
        def encode(self, path, frames, width, height, fps):
            path.write_bytes(b"\1" * 12288)
            raise OutputError("ffmpeg failed (exit status 1): Error writing trailer: No space left on device")

    target = tmp_path / "good.mp4"
    result.save(target)
    before = target.read_bytes()
    with pytest.raises(OutputError, match=f"cannot write {target}: ffmpeg failed .*No space left"):
        result.save(target, encoder=FullDisk())
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["good.mp4"]


# ---- D26, D27: notices ----------------------------------------------------------------------------------
def test_d26_long_prompt_notice(t2v_pipe, caplog):
    prompt = " ".join(["cat"] * 40)
    n = len(t2v_pipe.tokenizer(prompt)["input_ids"])  # 40 words and the end token
    with caplog.at_level(logging.WARNING, logger="fastdit.pipelines"):
        t2v_pipe.generate(prompt, max_sequence_length=16, guidance_scale=1.0, **TINY)
        t2v_pipe.generate(prompt, max_sequence_length=n, guidance_scale=1.0, **TINY)  # fits: no notice
    notes = [r.getMessage() for r in caplog.records if "tokens" in r.getMessage()]
    assert n > 40 and notes == [f"the prompt has {n} tokens; only the first 16 are used (max_sequence_length): "
                                f"{n - 16} dropped"]


def test_d27_negative_prompt_unused_notice(t2v_pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="fastdit.pipelines"):
        t2v_pipe.generate("cat", negative_prompt="blurry", guidance_scale=1.0, **TINY)
        t2v_pipe.generate("cat", negative_prompt="blurry", guidance_scale=3.0, **TINY)
    notes = [r.getMessage() for r in caplog.records if "negative prompt" in r.getMessage()]
    assert notes == ["guidance_scale 1 turns guidance off: the negative prompt is not used "
                     "(guidance_scale > 1 uses it)"]


# ---- D6: the range and the estimate ------------------------------------------------------------------------
def _wan13_spec():
    from fastdit.pipelines.spec import ModelSpec

    t = {"num_attention_heads": 12, "attention_head_dim": 128, "num_layers": 30, "ffn_dim": 8960,
         "patch_size": [1, 2, 2], "rope_max_seq_len": 1024, "text_dim": 4096}
    v = {"base_dim": 96, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "z_dim": 16,
         "temperal_downsample": [False, True, True]}
    spec = ModelSpec.from_configs(t, v, {}, name="Wan2.1-T2V-1.3B")
    spec.param_counts = {"text_encoder": 5_700_000_000, "vae": 127_000_000, "transformer": 1_420_000_000}
    return spec


def test_d6_estimate_matches_the_measured_flops():
    """DESIGN.md: a Wan2.1-1.3B forward at 480x832x81 (32,760 tokens) is 283 TFLOP."""
    from fastdit.pipelines import limits

    spec = _wan13_spec()
    est = limits.estimate(spec, 81, 480, 832, 50, True, 512)
    assert est.tokens == 32760 and est.forwards == 100
    per_forward = limits.transformer_flops(spec, 32760, 512)
    assert per_forward == pytest.approx(283e12, rel=0.03)


def test_d6_budget_refusals_and_force(tiny_model):
    from fastdit.pipelines import limits

    spec = _wan13_spec()
    h200 = limits.DeviceBudget("cuda:0", 141 * 2**30, 2000 * 2**30, limits.GPU_FLOPS, 2 * 1_420_000_000, 2)
    assert limits.check_size(spec, 81, 480, 832, 50, True, 512, h200) == []  # the default video
    with pytest.raises(ResourceError, match=r"needs at least .* GiB on cuda:0 \(vae decode .*--vae-tiling"):
        limits.check_size(spec, 5, 8192, 8192, 50, True, 512, h200)
    tiled = limits.DeviceBudget("cuda:0", 141 * 2**30, 2000 * 2**30, limits.GPU_FLOPS, 2 * 1_420_000_000, 2, True)
    notes = limits.check_size(spec, 5, 8192, 8192, 50, True, 512, tiled)  # fits, but slow: said
    assert len(notes) == 1 and "524,288 tokens" in notes[0] and "at least" in notes[0]
    two_cores = limits.DeviceBudget("cpu", 23 * 2**30, None, 2 * limits.CPU_FLOPS_PER_CORE, 0, 4)
    # 100 forwards of 283 TFLOP (DESIGN.md) at 0.2 TFLOP/s: 39.3 h, and the VAE adds a little
    with pytest.raises(ResourceError, match=r"would take at least (39|40)\.\d h on cpu"):
        limits.check_size(spec, 81, 480, 832, 50, True, 512, two_cores)
    with pytest.raises(ResourceError, match="num_frames 4097 is beyond this model's range: at most 4093"):
        limits.check_size(spec, 4097, 480, 832, 50, True, 512, None)
    # through resolve_request: the spec's budget, and force=True
    spec.device_budget = two_cores
    with pytest.raises(ResourceError, match="force=True runs it anyway"):
        resolve_request(spec, GenerationRequest("cat"))
    assert resolve_request(spec, GenerationRequest("cat", force=True)).num_frames == 81


def test_d6_api_refuses_past_the_model_range(t2v_pipe):
    with pytest.raises(ResourceError, match="num_frames 400001 is beyond this model's range: at most 125"):
        t2v_pipe.generate("cat", num_frames=400001, height=16, width=16)


# ---- D8: out of memory --------------------------------------------------------------------------------------
def test_d8_out_of_memory_becomes_a_resource_error():
    try:
        torch.empty(2**60, dtype=torch.uint8)  # more than any address space: the allocator refuses
    except RuntimeError as exc:
        error = as_fastdit_error(exc)
    assert isinstance(error, ResourceError)
    assert str(error).startswith("out of memory (tried to allocate 1073741824.00 GiB); try a smaller")
    assert isinstance(as_fastdit_error(MemoryError()), ResourceError)
    assert isinstance(as_fastdit_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")),
                      ResourceError)
    other = RuntimeError("shapes do not match")
    assert as_fastdit_error(other) is other


@pytest.mark.gpu
def test_gpu_budget_is_the_devices_memory(tiny_model):
    """On a GPU: the budget holds the device's total memory; the default Wan2.1 video fits an
    H100/H200-class device, 16384x16384x81 does not; a loaded pipeline carries its budget."""
    from fastdit.pipelines import limits

    spec = _wan13_spec()
    budget = limits.device_budget(spec, torch.device("cuda", 0), torch.bfloat16)
    assert budget.memory_bytes == torch.cuda.mem_get_info(0)[1] and budget.flops == limits.GPU_FLOPS
    assert limits.check_size(spec, 81, 480, 832, 50, True, 512, budget) == []
    with pytest.raises(ResourceError, match="needs at least"):
        limits.check_size(spec, 81, 16384, 16384, 50, True, 512, budget)
    pipe = fastdit.load(tiny_model("t2v"), device="cuda")
    assert pipe.spec.device_budget.device == "cuda:0"
    assert pipe.generate("cat", **TINY).frames.shape == (1, 16, 16, 3)

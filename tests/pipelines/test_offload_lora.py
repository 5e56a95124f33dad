"""LoRAs with streamed block offload and fp8 weight storage (tiny models, CPU): the LoRAs merge
into each tensor as the lazy loader reads it, so the streamed pipeline makes the video the
resident one makes with the same LoRAs, and fp8 storage quantises the merged weights."""

import numpy as np
import pytest
import torch

import fastdit
from fastdit.errors import LoraError
from fastdit.models.wan import WanConfig
from fastdit.models.wan.checkpoint import read_json
from fastdit.runtime import StreamedTransformer, StreamPlan, stream_model
from tests.models.lora_helpers import block_modules, make_lora, write_lora
from tests.pipelines.lora_helpers import tiny_lora

RUN = {"height": 32, "width": 48, "num_frames": 5, "num_inference_steps": 2, "seed": 0}


def _frames(pipe):
    return pipe.generate("a red car in the city", negative_prompt="blurry", **RUN).frames


def _loras(path, tmp_path):
    """A pair LoRA in original layout, a diffusers one, and one with full deltas on a block
    weight and on the head (a parameter outside the streamed blocks) and a bias delta."""
    config = WanConfig.from_diffusers_config(read_json(path / "transformer" / "config.json"))
    deltas = make_lora(config, block_modules(config, ["attn1.to_q"])[:1], rank=2, seed=5, std=0.2,
                       diff=["blocks.1.ffn.net.2.weight", "proj_out.weight"], diff_b=["blocks.0.attn2.to_out.0"])
    return [(tiny_lora(path, tmp_path / "a.safetensors", seed=1), 0.9),
            (tiny_lora(path, tmp_path / "b.safetensors", layout="diffusers", alpha=None, seed=2), 0.6),
            (write_lora(tmp_path / "c.safetensors", deltas, "original"), 0.5)]


@pytest.mark.parametrize("task", ["t2v", "a14b"])
def test_streamed_pipeline_with_loras_equals_resident(tiny_model, tmp_path, task):
    path = tiny_model(task)
    loras = _loras(path, tmp_path)
    extra = {}
    if task == "a14b":
        extra["loras_2"] = [(tiny_lora(path, tmp_path / "low.safetensors", subfolder="transformer_2", seed=3), 1.0)]
    resident = fastdit.load(path, device="cpu", loras=loras, **extra)
    streamed = fastdit.load(path, device="cpu", loras=loras, offload="blocks", prefetch=1, **extra)
    assert isinstance(streamed.transformer, StreamedTransformer)
    plain = fastdit.load(path, device="cpu")
    result = streamed.generate("a red car in the city", negative_prompt="blurry", **RUN)
    np.testing.assert_array_equal(result.frames, _frames(resident))
    assert np.abs(result.frames - _frames(plain)).max() > 1e-3  # the LoRAs changed the video
    assert [len(w["loras"]) for w in result.settings["weights"]] == ([3, 1] if task == "a14b" else [3])


def test_fp8_storage_quantises_the_merged_weights(tiny_model, tmp_path):
    """weights="fp8" with LoRAs: the host store holds, byte for byte, what quantising the
    merged resident weights gives, and the forwards agree (to fp32 rounding: the two stores
    lay their tensors out differently, which moves the CPU's matmul blocking)."""
    path = tiny_model("t2v")
    loras = _loras(path, tmp_path)
    fp8 = fastdit.load(path, device="cpu", loras=loras, weights="fp8").transformer
    merged = fastdit.load(path, device="cpu", loras=loras).transformer
    blocks = merged.config.num_layers
    by_hand = stream_model(merged, StreamPlan.spread(blocks, blocks, 1), "cpu", weights="fp8")
    ours, theirs = fp8.streamer.store, by_hand.streamer.store
    names = [t.name for t in ours.layout.tensors]
    assert sorted(names) == sorted(t.name for t in theirs.layout.tensors)
    assert any(ours.view(0, n).dtype == torch.float8_e4m3fn for n in names)
    for index in range(blocks):
        for name in names:
            a, b = ours.view(index, name), theirs.view(index, name)
            assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (index, name)
    torch.testing.assert_close(fp8.model.proj_out.weight, by_hand.model.proj_out.weight, atol=0, rtol=0)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 2, 4, 6, generator=g)
    text = torch.randn(1, 8, merged.config.text_dim, generator=g)
    timestep = torch.tensor([700.0])
    with torch.no_grad():
        torch.testing.assert_close(fp8(latents, timestep, text), by_hand(latents, timestep, text))


def test_streamed_fp8_precision_with_loras_equals_resident(tiny_model, tmp_path):
    path = tiny_model("t2v")
    loras = _loras(path, tmp_path)[:2]
    resident = fastdit.load(path, device="cpu", loras=loras, quantize="fp8")
    streamed = fastdit.load(path, device="cpu", loras=loras, quantize="fp8", offload="blocks")
    np.testing.assert_array_equal(_frames(streamed), _frames(resident))


def test_runtime_lora_mode_is_refused_with_streaming(tiny_model, tmp_path):
    path = tiny_model("t2v")
    loras = _loras(path, tmp_path)[:1]
    with pytest.raises(LoraError, match="runtime LoRA mode is not combined with streamed block offload"):
        fastdit.load(path, device="cpu", loras=loras, lora_mode="runtime", offload="blocks")


def test_bad_lora_fails_before_streaming(tiny_model, tmp_path):
    path = tiny_model("t2v")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(LoraError):
        fastdit.load(path, device="cpu", loras=[(bad, 1.0)], offload="blocks")


def _distilled_files(path, tmp_path):
    """The tiny model's weights moved a little, in official names (as LightX2V ships a distilled
    model), and the same weights in LightX2V's scaled_fp8_e4m3 form (e4m3 + [N, 1] scales)."""
    from safetensors.torch import save_file

    from fastdit.models.wan import diffusers_to_original_key

    state = fastdit.load(path, device="cpu", dtype=torch.float32).transformer.state_dict()
    g = torch.Generator().manual_seed(5)
    moved = {"model.diffusion_model." + diffusers_to_original_key(k): (v + 0.05 * torch.randn(v.shape, generator=g))
             for k, v in state.items()}
    plain, scaled = tmp_path / "distill.safetensors", tmp_path / "distill_scaled_fp8_e4m3.safetensors"
    save_file({k: v.contiguous() for k, v in moved.items()}, str(plain))
    fp8 = {}
    for key, value in moved.items():
        if key.endswith(".weight") and value.dim() == 2 and ".blocks." in key:
            scale = value.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448
            fp8[key] = (value / scale).to(torch.float8_e4m3fn)
            fp8[key[: -len("weight")] + "weight_scale"] = scale
        else:
            fp8[key] = value
    save_file({k: v.contiguous() for k, v in fp8.items()}, str(scaled))
    return plain, scaled


@pytest.mark.parametrize("which", ["plain", "scaled_fp8"])
def test_streamed_single_file_transformer_equals_resident(tiny_model, tmp_path, which):
    """``transformer=FILE`` with streamed blocks: read from the file block by block (scaled fp8
    weights dequantised as the single-file loader does), a LoRA merged on top; the video the
    resident pipeline makes from the same file."""
    path = tiny_model("t2v")
    file = _distilled_files(path, tmp_path)[0 if which == "plain" else 1]
    lora = [(tiny_lora(path, tmp_path / "style.safetensors", seed=4), 0.7)]
    options = dict(device="cpu", dtype=torch.float32, transformer=str(file), loras=lora)
    resident = fastdit.load(path, **options)
    streamed = fastdit.load(path, offload="blocks", prefetch=1, **options)
    assert isinstance(streamed.transformer, StreamedTransformer)
    got = streamed.generate("a red car in the city", negative_prompt="blurry", **RUN)
    assert got.settings["weights"][0]["file"] == str(file)
    np.testing.assert_allclose(got.frames, _frames(resident), atol=1e-5, rtol=0)
    assert np.abs(got.frames - _frames(fastdit.load(path, device="cpu", dtype=torch.float32))).max() > 1e-3


def test_lenient_lora_with_unknown_keys_streams_like_resident(tiny_model, tmp_path):
    """``lora_strict=False``: keys that map to no weight are skipped (logged) the same way on
    the streamed path; the known ones merge as the blocks load."""
    from safetensors.torch import load_file, save_file

    path = tiny_model("t2v")
    good = tiny_lora(path, tmp_path / "good.safetensors", seed=7)
    tensors = load_file(str(good))
    tensors["diffusion_model.blocks.0.no_such_layer.lora_down.weight"] = torch.zeros(4, 8)
    tensors["diffusion_model.blocks.0.no_such_layer.lora_up.weight"] = torch.zeros(8, 4)
    odd = tmp_path / "odd.safetensors"
    save_file(tensors, str(odd))
    options = dict(device="cpu", loras=[(odd, 0.8)], lora_strict=False)
    resident = fastdit.load(path, **options)
    streamed = fastdit.load(path, offload="blocks", **options)
    result = streamed.generate("a red car in the city", negative_prompt="blurry", **RUN)
    assert result.settings["weights"][0]["loras"][0]["skipped_keys"] == 2
    np.testing.assert_array_equal(result.frames, _frames(resident))
    with pytest.raises(LoraError):
        fastdit.load(path, device="cpu", loras=[(odd, 0.8)], offload="blocks")  # strict: refused

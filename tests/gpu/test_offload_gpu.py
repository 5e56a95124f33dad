"""GPU-only: streamed block offload on a CUDA/ROCm device: pinned host store, side-stream
copies ordered by events, no host synchronisation inside the block loop, outputs equal to the
resident model; fp8 quantisation on the device equals the CPU's."""

import dataclasses

import pytest
import torch

from fastdit.models.wan import WanConfig, WanTransformer
from fastdit.runtime import StreamPlan, stream_model
from fastdit.runtime.lazy import load_streamed

pytestmark = pytest.mark.gpu

CONFIG = WanConfig(num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16, text_dim=64,
                   freq_dim=32, ffn_dim=1024, num_layers=6)


def _inputs(dtype, batch=2):
    g = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(batch, 16, 3, 16, 24, generator=g).to("cuda", dtype)
    timestep = torch.tensor([999.0, 500.0][:batch], device="cuda")
    text = torch.randn(batch, 32, CONFIG.text_dim, generator=g).to("cuda", dtype)
    return latents, timestep, text


def _model(dtype, seed=0):
    return WanTransformer.from_config(CONFIG, dtype=dtype, device="cuda", seed=seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("resident,prefetch", [(0, 1), (2, 2), (0, 3)])
def test_streamed_equals_resident_on_gpu(dtype, resident, prefetch):
    base = _model(dtype)
    args = _inputs(dtype)
    with torch.no_grad():
        ref = base(*args)
        streamed = stream_model(base, StreamPlan.spread(6, resident, prefetch), "cuda")
        assert streamed.streamer.store.pinned and streamed.streamer.region.streams.side is not None
        for _ in range(3):
            torch.testing.assert_close(streamed(*args), ref, atol=0, rtol=0)
    assert streamed.stats["pool_buffers"] == resident + min(prefetch + 1, 6 - resident)


def _forward_without_host_syncs(streamed, args) -> torch.Tensor:
    """``streamed(*args)`` with its block loop under ``set_sync_debug_mode("error")``: any
    host synchronisation inside it raises."""
    x, ctx = streamed.embed(*args)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = streamed.run_blocks(x, ctx)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return streamed.head(x, ctx)


def test_no_host_sync_in_the_block_loop():
    streamed = stream_model(_model(torch.bfloat16), StreamPlan.spread(6, 1, 2), "cuda", weights="fp8")
    args = _inputs(torch.bfloat16)
    with torch.no_grad():
        streamed(*args)  # warm-up: pool, RoPE tables, providers
        _forward_without_host_syncs(streamed, args)
    torch.cuda.synchronize()


def test_two_experts_on_gpu_share_a_pool():
    a, b = _model(torch.bfloat16, 0), _model(torch.bfloat16, 1)
    args = _inputs(torch.bfloat16)
    with torch.no_grad():
        refs = [a(*args), b(*args)]
        plan = StreamPlan.spread(6, 2, 1)
        sa = stream_model(a, plan, "cuda")
        sb = stream_model(b, plan, "cuda", region=sa.streamer.region)
        for which in (0, 1, 0, 1):
            pair = (sa, sb)
            pair[1 - which].to("cpu")
            pair[which].to("cuda")
            torch.testing.assert_close(pair[which](*args), refs[which], atol=0, rtol=0)


def test_fp8_quantised_on_gpu_equals_cpu(tmp_path):
    _model(torch.float32).cpu().save_pretrained(tmp_path)
    plan = StreamPlan.spread(6, 0, 1)
    gpu = load_streamed(tmp_path, plan, "cuda", dtype=torch.bfloat16, weights="fp8")
    cpu = load_streamed(tmp_path, plan, "cpu", dtype=torch.bfloat16, weights="fp8")
    layout = gpu.streamer.store.layout
    for index, (g_views, c_views) in enumerate(zip(gpu.streamer.store.views, cpu.streamer.store.views)):
        for slot, g, c in zip(layout.tensors, g_views, c_views):
            # tensor by tensor (the alignment padding between them is never written)
            assert torch.equal(g.view(torch.uint8), c.view(torch.uint8)), (index, slot.name)


def test_fp8_cast_on_gpu_equals_cpu():
    """torch's fp32 -> e4m3 cast rounds the same on both devices: normal, subnormal, halfway
    and saturating values."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    grid = torch.unique(codes[torch.isfinite(codes)])
    halfway = (grid[:-1] + grid[1:]) / 2
    g = torch.Generator().manual_seed(0)
    x = torch.cat([halfway, grid, torch.randn(100_000, generator=g) * 100,
                   torch.randn(100_000, generator=g) * 0.01]).clamp(-448, 448)
    assert torch.equal(x.cuda().to(torch.float8_e4m3fn).cpu().view(torch.uint8),
                       x.to(torch.float8_e4m3fn).view(torch.uint8))


def test_fp8_forward_cosine_on_gpu():
    base = _model(torch.bfloat16)
    args = _inputs(torch.bfloat16)
    with torch.no_grad():
        ref = base(*args).float()
        out = stream_model(base, StreamPlan.spread(6, 2, 1), "cuda", weights="fp8")(*args).float()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    assert 0.999 <= cos < 1.0, cos


def test_streamed_fp8_precision_equals_resident_on_gpu():
    """quantize="fp8" on streamed blocks (dequantize="linear": the fp8 products take the
    streamed e4m3 weights and scales): the resident fp8-precision forward's numbers, with no
    host synchronisation in the block loop."""
    from fastdit.quant.apply import apply_precision

    args = _inputs(torch.bfloat16)
    resident = _model(torch.bfloat16)
    apply_precision(resident, "fp8", "cuda", log_report=False)
    streamed = stream_model(_model(torch.bfloat16), StreamPlan.spread(6, 2, 1), "cuda", weights="fp8",
                            dequantize="linear")
    apply_precision(streamed.model, "fp8", "cuda", log_report=False)
    assert streamed.model.blocks[0].attn1.to_q.takes_fp8
    with torch.no_grad():
        ref = resident(*args)
        torch.testing.assert_close(streamed(*args), ref, atol=0, rtol=0)
        torch.testing.assert_close(_forward_without_host_syncs(streamed, args), ref, atol=0, rtol=0)


def test_budget_emulation_holds_a_streamed_forward():
    """Under a per-process memory fraction a little above the plan, the streamed forward runs."""
    base = _model(torch.bfloat16)
    args = _inputs(torch.bfloat16)
    streamed = stream_model(base, StreamPlan.spread(6, 1, 1), "cuda")
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + 2 * 10**9) / total))
    try:
        with torch.no_grad():
            streamed(*args)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert dataclasses.is_dataclass(streamed.streamer.plan)


def test_model_offload_keeps_the_encoders_host_tensors(tmp_path):
    """offload='model': the text encoder visits the GPU and keeps its host storage (no copy back)."""
    import fastdit
    from fastdit.pipelines.tiny import make_tiny_model

    pipe = fastdit.load(make_tiny_model(tmp_path / "t2v", task="t2v"), device="cuda", dtype=torch.bfloat16,
                        offload="model")
    before = [p.data_ptr() for p in pipe.text_encoder.parameters()]
    assert all(p.device.type == "cpu" for p in pipe.text_encoder.parameters())
    frames = pipe.generate("a cat", height=32, width=32, num_frames=5, num_inference_steps=2, seed=0).frames
    assert frames.shape[0] == 5
    assert [p.data_ptr() for p in pipe.text_encoder.parameters()] == before
    assert all(p.device.type == "cpu" for p in pipe.text_encoder.parameters())


def test_streamed_lora_merge_on_gpu_equals_resident(tmp_path):
    """LoRAs merged as the lazy loader reads each tensor (on the GPU) give the resident merge's
    weights bit for bit: the streamed transformer's output equals the resident one's."""
    import fastdit
    from fastdit.pipelines.tiny import make_tiny_model
    from tests.pipelines.lora_helpers import tiny_lora

    path = make_tiny_model(tmp_path / "model", "t2v")
    loras = [(tiny_lora(path, tmp_path / "a.safetensors", seed=1), 0.8)]
    resident = fastdit.load(path, device="cuda", dtype=torch.bfloat16, loras=loras).transformer
    streamed = fastdit.load(path, device="cuda", dtype=torch.bfloat16, loras=loras, offload="blocks").transformer
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 16, 2, 4, 6, generator=g).to("cuda", torch.bfloat16)
    text = torch.randn(2, 8, resident.config.text_dim, generator=g).to("cuda", torch.bfloat16)
    timestep = torch.tensor([700.0, 300.0], device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(streamed(latents, timestep, text), resident(latents, timestep, text),
                                   atol=0, rtol=0)

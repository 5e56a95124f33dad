"""GPU-only: fastdit's Wan VAE decode (``vae_decoder="fastdit"``) against diffusers' on the
device, bf16, Wan2.1 and Wan2.2 layouts: the fused norm op's provider, and the video equal to
rounding (the Triton norm sums the channels in another order than F.normalize)."""

import pytest
import torch

from fastdit.models.wan import vae as fast_vae
from fastdit.ops.registry import plan_for
from tests.models.test_vae_decode import WAN21, WAN22, _latent, _vae

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("channels_last", [False, True], ids=["ncdhw", "ndhwc"])
@pytest.mark.parametrize("config", [WAN21, WAN22], ids=["wan2.1", "wan2.2"])
def test_decode_on_gpu_close_to_diffusers(config, channels_last):
    vae = _vae(config, torch.bfloat16).to("cuda")
    z = _latent(vae, 3, 8, 12, torch.bfloat16).to("cuda")
    with torch.no_grad():
        expected = vae.decode(z).sample.float()
    got = fast_vae.decode(vae, z, channels_last=channels_last).float()
    diff = (got - expected).abs()
    psnr = 10 * torch.log10(4.0 / (diff ** 2).mean()).item()
    assert psnr > 40, psnr  # bf16 roundings in another order (norm sums, convolution algorithms)
    assert diff.max().item() < 0.25


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d], ids=["ncdhw", "ndhwc"])
def test_the_norm_runs_the_triton_kernel(layout):
    vae = _vae(WAN21, torch.bfloat16).to("cuda")
    norm = vae.decoder.up_blocks[0].resnets[0].norm1
    x = torch.randn(1, norm.gamma.numel(), 4, 32, 48, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=layout)
    provider = plan_for("channel_rms_norm", x, norm.gamma, None, scale=norm.scale, silu=True).provider.name
    assert provider == "triton", provider


def test_the_pipeline_default_on_gpu_is_fastdit_channels_last(tmp_path):
    """``vae_decoder="auto"`` on a CUDA VAE runs fastdit's NDHWC decode (the measured default):
    the frames equal ``vae_decoder="diffusers"``'s to bf16 rounding, and the settings name it."""
    import fastdit
    from fastdit.pipelines.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / "model", "t2v")
    run = dict(height=64, width=64, num_frames=9, num_inference_steps=2, seed=0)
    auto = fastdit.load(path, device="cuda", dtype="bfloat16").generate("a red car", **run)
    plain = fastdit.load(path, device="cuda", dtype="bfloat16", vae_decoder="diffusers").generate("a red car", **run)
    assert (auto.settings["vae_decoder"], plain.settings["vae_decoder"]) == ("fastdit-channels-last", "diffusers")
    # the frames landed in the pinned buffer allocated while the generation denoised
    assert torch.from_numpy(auto.frames).is_pinned() and auto.frames.shape == (9, 64, 64, 3)
    diff = torch.as_tensor(auto.frames) - torch.as_tensor(plain.frames)
    psnr = 10 * torch.log10(1.0 / (diff ** 2).mean().clamp_min(1e-12)).item()
    assert psnr > 35, psnr


def test_frames_array_on_gpu_is_diffusers_postprocess():
    """The decode stage's frames from a GPU video (converted there, copied through pinned
    memory) equal diffusers' ``postprocess_video`` bit for bit."""
    from diffusers.video_processor import VideoProcessor

    from fastdit.pipelines.stages import frames_array

    processor = VideoProcessor(vae_scale_factor=8)
    video = (torch.randn(1, 3, 5, 32, 48, device="cuda") * 1.3).bfloat16()
    expected = processor.postprocess_video(video, output_type="np")[0]
    got = frames_array(video, processor)
    assert got.shape == expected.shape and (got == expected).all()

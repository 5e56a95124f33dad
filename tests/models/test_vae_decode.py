"""fastdit's Wan VAE decode (``fastdit.models.wan.vae``) against diffusers' ``vae.decode`` on
small random VAEs (Wan2.1, and Wan2.2 with its residual up blocks and 2x2 patches): the same
video, several latent frames so that the causal caches carry across chunks."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from fastdit import ops
from fastdit.models.wan import vae as fast_vae

WAN21 = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True])
WAN22 = dict(base_dim=16, decoder_base_dim=24, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
             temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
             patch_size=2, scale_factor_spatial=16)


def _vae(config, dtype, seed=0):
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**config).eval().requires_grad_(False)
    with torch.no_grad():  # diffusers' init leaves the norms' gamma at 1: make them random too
        for module in vae.modules():
            if type(module).__name__ == "WanRMS_norm":
                module.gamma.uniform_(0.5, 1.5)
    return vae.to(dtype)


def _latent(vae, frames, h, w, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, vae.config.z_dim, frames, h, w, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("config", [WAN21, WAN22], ids=["wan2.1", "wan2.2"])
def test_decode_equals_diffusers(config, dtype):
    """On the CPU (the op's native spec) the video is diffusers' bit for bit, in fp32 and in
    bf16: the same roundings, the convolution's own zero padding giving what an explicit pad
    gives. (On a GPU the Triton norm sums in another order: tests/gpu/test_vae_gpu.py.)"""
    vae = _vae(config, dtype)
    z = _latent(vae, 3, 4, 6, dtype)  # three latent frames: 9 video frames
    with torch.no_grad():
        expected = vae.decode(z).sample
    got = fast_vae.decode(vae, z)
    assert got.shape == expected.shape and got.shape[2] == 9 and got.dtype == dtype
    assert torch.equal(got, expected)
    assert (expected.float().abs() > 0.05).float().mean() > 0.2  # not a trivially small video


@pytest.mark.parametrize("config", [WAN21, WAN22], ids=["wan2.1", "wan2.2"])
def test_channels_last_decode(config):
    """``channels_last=True``: NDHWC activations and weight copies, the same video to fp32
    rounding (other convolution kernels), the VAE's own weights left as they were."""
    vae = _vae(config, torch.float32)
    z = _latent(vae, 3, 4, 6, torch.float32)
    weights = {n: p.stride() for n, p in vae.named_parameters()}
    with torch.no_grad():
        expected = vae.decode(z).sample
    got = fast_vae.decode(vae, z, channels_last=True)
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    assert {n: p.stride() for n, p in vae.named_parameters()} == weights


@pytest.mark.parametrize("config", [WAN21, WAN22], ids=["wan2.1", "wan2.2"])
def test_larger_chunks_are_the_same_decode(config):
    """``frames_per_chunk``: the first latent frame alone, then chunks of 2-4: the causal caches
    (and the up-samplers' zero-padded first time convolution) make it the same computation, to
    the convolutions' fp32 rounding; bf16: bit for bit here."""
    vae = _vae(config, torch.float32)
    z = _latent(vae, 5, 4, 6, torch.float32)
    with torch.no_grad():
        expected = vae.decode(z).sample
    for chunk in (2, 3, 4, 8):
        torch.testing.assert_close(fast_vae.decode(vae, z, frames_per_chunk=chunk), expected, atol=2e-5, rtol=0)
    half = _vae(config, torch.bfloat16)
    zh = z.to(torch.bfloat16)
    with torch.no_grad():
        expected_half = half.decode(zh).sample
    assert torch.equal(fast_vae.decode(half, zh, frames_per_chunk=3), expected_half)
    with pytest.raises(ValueError, match="frames_per_chunk"):
        fast_vae.decode(vae, z, frames_per_chunk=0)


def test_the_op_replicates_diffusers_norm_and_silu_bit_for_bit():
    """The native spec of ops.channel_rms_norm against WanRMS_norm + SiLU, in bf16."""
    vae = _vae(WAN21, torch.bfloat16)
    norm = vae.decoder.up_blocks[0].resnets[0].norm1
    x = (torch.randn(1, norm.gamma.numel(), 2, 5, 7) * 3).to(torch.bfloat16)
    with torch.no_grad():
        expected = F.silu(norm(x))
    got = ops.channel_rms_norm(x, norm.gamma, None, scale=norm.scale, silu=True)
    assert torch.equal(got, expected)


def test_tiled_decode_stays_diffusers():
    vae = _vae(WAN21, torch.float32)
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16,
                      tile_sample_stride_width=16)
    z = _latent(vae, 1, 8, 8, torch.float32)
    with torch.no_grad():
        expected = vae.decode(z).sample
    torch.testing.assert_close(fast_vae.decode(vae, z), expected, atol=0, rtol=0)


def test_an_unsupported_vae_is_refused():
    vae = _vae(WAN21, torch.float32)
    vae.decoder.up_blocks[0].resnets[0].nonlinearity = torch.nn.GELU()
    assert "SiLU" in fast_vae.supports(vae)
    with pytest.raises(ValueError, match="cannot run this VAE"):
        fast_vae.decode(vae, _latent(vae, 1, 2, 2, torch.float32))


def test_the_pipeline_option(tmp_path, monkeypatch):
    """``fastdit.load(..., vae_decoder="fastdit")`` decodes through fastdit's decode, with the
    default decode's frames (CPU: bit for bit); a bad value is a UserError before loading."""
    import fastdit
    from fastdit.errors import UserError
    from fastdit.pipelines.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / "model", "t2v")
    run = dict(height=32, width=32, num_frames=9, num_inference_steps=2, seed=0)
    plain = fastdit.load(path, device="cpu").generate("a red car", **run)
    calls = []
    real = fast_vae.decode
    monkeypatch.setattr(fast_vae, "decode", lambda vae, z, channels_last: calls.append(
        (tuple(z.shape), channels_last)) or real(vae, z, channels_last))
    ours = fastdit.load(path, device="cpu", vae_decoder="fastdit").generate("a red car", **run)
    assert calls == [((1, 16, 3, 4, 4), False)]  # one decode of the 3 latent frames
    assert torch.equal(torch.as_tensor(ours.frames), torch.as_tensor(plain.frames))
    assert (plain.settings["vae_decoder"], ours.settings["vae_decoder"]) == ("diffusers", "fastdit")
    nhwc = fastdit.load(path, device="cpu", vae_decoder="fastdit-channels-last").generate("a red car", **run)
    assert calls[-1][1] is True
    assert abs(torch.as_tensor(nhwc.frames) - torch.as_tensor(plain.frames)).max() < 1e-4
    with pytest.raises(UserError, match="vae_decoder"):
        fastdit.load(path, device="cpu", vae_decoder="fast")


def test_the_choices_are_one_list():
    """The load option, the CLI and the server offer the decoders :data:`DECODERS` knows."""
    from fastdit.cli.generate import VAE_DECODER_CHOICES
    from fastdit.pipelines.loading import VAE_DECODERS

    assert VAE_DECODERS == VAE_DECODER_CHOICES == ("auto",) + tuple(fast_vae.DECODERS)


def test_auto_resolves_by_platform_and_vae(monkeypatch, caplog):
    """``vae_decoder="auto"``: the platform's default for a VAE on its device, diffusers' decode
    for a VAE elsewhere or one fastdit's decode cannot run (logged); other choices unchanged."""
    from fastdit import platforms
    from fastdit.pipelines.loading import vae_decoder_choice

    vae = _vae(WAN21, torch.float32)
    assert vae_decoder_choice("auto", vae) == "diffusers"  # the CPU platform's default
    assert vae_decoder_choice("fastdit", vae) == "fastdit"

    class Fake(type(platforms.current_platform())):
        vae_decoder_default = "fastdit-channels-last"

    monkeypatch.setattr(platforms, "current_platform", lambda: Fake())
    assert vae_decoder_choice("auto", vae) == "fastdit-channels-last"
    Fake.device_type = "cuda"  # the VAE on the CPU is not on this platform's device
    assert vae_decoder_choice("auto", vae) == "diffusers"
    Fake.device_type = "cpu"
    vae.decoder.up_blocks[0].resnets[0].nonlinearity = torch.nn.GELU()
    with caplog.at_level("INFO", logger="fastdit.pipelines"):
        assert vae_decoder_choice("auto", vae) == "diffusers"
    assert "cannot run this VAE" in caplog.text
    assert vae_decoder_choice("diffusers", vae) == "diffusers"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("normalize", [True, False])
def test_frames_array_is_diffusers_postprocess(dtype, normalize):
    """The decode stage's frames: diffusers' ``postprocess_video(video, "np")[0]`` bit for bit."""
    from diffusers.video_processor import VideoProcessor

    from fastdit.pipelines.stages import frames_array

    processor = VideoProcessor(vae_scale_factor=8, do_normalize=normalize)
    video = (torch.randn(1, 3, 5, 16, 24, generator=torch.Generator().manual_seed(0)) * 1.3).to(dtype)
    expected = processor.postprocess_video(video, output_type="np")[0]
    got = frames_array(video, processor)
    assert got.dtype == expected.dtype and got.shape == expected.shape == (5, 16, 24, 3)
    assert (got == expected).all()


def test_frames_without_pinned_memory_say_so(monkeypatch, caplog):
    """When no pinned memory can be allocated the frames go through pageable memory, with a
    warning naming the size and the error; the values are the same."""
    from fastdit.pipelines import stages

    real_empty = torch.empty

    def no_pinned(*args, pin_memory=False, **kwargs):
        if pin_memory:
            raise RuntimeError("cudaHostAlloc failed\nmore")
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(stages.torch, "empty", no_pinned)
    frames = torch.rand(2, 8, 8, 3)
    with caplog.at_level("WARNING", logger="fastdit.pipelines"):
        got = stages.host_array(frames)
    assert "pageable memory" in caplog.text and "cudaHostAlloc failed" in caplog.text
    assert "more" not in caplog.text and torch.equal(torch.from_numpy(got), frames)

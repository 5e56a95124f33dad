"""The pipeline stages against the pieces of diffusers' Wan pipelines they reproduce."""

import numpy as np
import pytest
import torch

import fastdit
from fastdit.pipelines import stages
from tests.pipelines.helpers import sample_image


@pytest.mark.parametrize("text", [
    "  a   cat\n\tin  the sun ", "fish &amp;amp; chips", "&lt;b&gt;bold&lt;/b&gt;", "wide\u3000space",
    "sep\x1cchar", "", "caf\u00e9 \u00c5ngstr\u00f6m",
])
def test_prompt_clean_equals_diffusers(text):
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    assert stages.prompt_clean(text) == prompt_clean(text)


def test_encode_text_equals_diffusers(tiny_model):
    """One batch for prompt and negative prompt, trimmed and zero-padded: equal to diffusers'
    per-prompt encoding."""
    from diffusers import WanPipeline

    ref = WanPipeline.from_pretrained(str(tiny_model("t2v")), torch_dtype=torch.float32)
    prompts = ["a red car drives fast in the city at night", "blurry"]
    ours = stages.encode_text(ref.tokenizer, ref.text_encoder, prompts, max_sequence_length=48)
    for row, prompt in zip(ours, prompts):
        want = ref._get_t5_prompt_embeds(prompt, max_sequence_length=48, device=torch.device("cpu"))[0]
        torch.testing.assert_close(row, want, atol=1e-5, rtol=1e-5)
    n = int(ref.tokenizer(prompts[1], return_tensors="pt").attention_mask.sum())
    assert ours.shape == (2, 48, 32)
    assert torch.all(ours[1, n:] == 0) and torch.all(ours[1, :n].abs().sum(-1) > 0)


def test_initial_noise_equals_diffusers():
    from diffusers.utils.torch_utils import randn_tensor

    shape = (1, 16, 3, 6, 10)
    want = randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(42), device=torch.device("cpu"),
                        dtype=torch.float32)
    got = stages.initial_noise(shape, 42, torch.device("cpu"))
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
    assert not torch.equal(stages.initial_noise(shape, None, torch.device("cpu")), want)


def test_load_image_forms(tmp_path):
    image = sample_image(20, 30)
    path = tmp_path / "im.png"
    image.save(path)
    arr = np.asarray(image)
    for form in (image, str(path), path, arr, arr.astype(np.float32) / 255.0, torch.from_numpy(arr)):
        assert np.array_equal(np.asarray(stages.load_image(form)), arr)
    with pytest.raises(ValueError, match="HWC"):
        stages.load_image(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="PIL image, a path or an array"):
        stages.load_image(42)


def _record_inputs(module):
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append([a for a in args]))
    return seen, handle


def test_ti2v_first_frame_gets_t0(tiny_model):
    """TI2V with an image: per-frame timesteps [B, F] (the transformer's per-frame mode: no
    per-token time-MLP work), 0 on the first latent frame; the first latent frame is the image
    latent at every step."""
    pipe = fastdit.load(tiny_model("ti2v"), device="cpu", dtype=torch.float32)
    seen, handle = _record_inputs(pipe.transformer)
    pipe.generate("a bird", image=sample_image(), height=64, width=64, num_frames=9, num_inference_steps=2,
                  guidance_scale=5.0, seed=0, output_type="latent")
    handle.remove()
    latent_frames = 3
    first_frames = []
    for x, ts, text, image in seen:
        assert ts.shape == (2, latent_frames) and ts.dtype == torch.float32
        assert torch.all(ts[:, 0] == 0)
        assert torch.all(ts[:, 1:] == ts[0, -1]) and ts[0, -1] > 0
        first_frames.append(x[:, :, 0])
    torch.testing.assert_close(first_frames[0], first_frames[1], atol=0, rtol=0)

    # without an image every frame has the step's t (text-to-video with the TI2V model)
    seen, handle = _record_inputs(pipe.transformer)
    pipe.generate("a bird", height=64, width=64, num_frames=9, num_inference_steps=1, guidance_scale=1.0,
                  output_type="latent")
    handle.remove()
    (x, ts, text, image), = seen
    assert ts.shape == (1, latent_frames) and torch.all(ts == 999)


def test_i2v_mask_channels_and_clip_tokens(tiny_model):
    """Wan2.1 I2V input: 16 noise + 4 mask (1 on the first frame only) + 16 image-latent channels,
    and the CLIP penultimate tokens for both halves of the guidance batch."""
    pipe = fastdit.load(tiny_model("i2v"), device="cpu", dtype=torch.float32)
    seen, handle = _record_inputs(pipe.transformer)
    pipe.generate("a bird", image=sample_image(), height=32, width=32, num_frames=9, num_inference_steps=1,
                  guidance_scale=5.0, output_type="latent")
    handle.remove()
    (x, ts, text, image), = seen
    assert x.shape == (2, 36, 3, 4, 4)
    assert torch.all(x[:, 16:20, 0] == 1) and torch.all(x[:, 16:20, 1:] == 0)
    assert ts.shape == (2,) and ts.dtype == torch.int64
    assert text.shape == (2, 512, 32)
    assert image.shape == (2, 17, 32) and torch.equal(image[0], image[1])

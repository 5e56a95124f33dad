"""The Python API: fastdit.load(...).generate(...) -> result with frames, timings, save()."""

import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import fastdit
from fastdit.pipelines import GenerationResult, InputError, ModelFolderError
from tests.pipelines.helpers import sample_image

SMALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2)


@pytest.fixture(scope="module")
def t2v(tiny_model):
    return fastdit.load(tiny_model("t2v"), device="cpu", dtype=torch.float32)


def test_generate_result(t2v, tmp_path):
    result = t2v.generate("a red fox in the snow", negative_prompt="blurry", seed=0, guidance_scale=5.0, **SMALL)
    assert isinstance(result, GenerationResult)
    frames = result.frames
    assert isinstance(frames, np.ndarray) and frames.dtype == np.float32
    assert frames.shape == (5, 32, 32, 3)
    assert 0.0 <= frames.min() and frames.max() <= 1.0 and frames.std() > 0.01
    for stage in ("text", "latents", "denoise", "decode", "total", "per_step"):
        assert result.timings[stage] >= 0.0
    assert result.timings["per_step"] == pytest.approx(result.timings["denoise"] / 2)
    assert result.peak_memory is None  # CPU
    assert result.fps == 8 and result.settings["seed"] == 0

    out = result.save(tmp_path / "fox.mp4", fps=16)
    video = iio.imread(out)
    assert video.shape == (5, 32, 32, 3)
    assert iio.immeta(out)["fps"] == 16 and iio.immeta(out)["codec"] == "h264"
    assert not [p for p in tmp_path.iterdir() if p.name != "fox.mp4"]  # no temporary left
    assert np.abs(video / 255.0 - frames).mean() < 0.1  # lossy, but the same video


def test_same_seed_same_video_other_seed_other_video(t2v):
    a = t2v.generate("a boat", seed=5, **SMALL).frames
    b = t2v.generate("a boat", seed=5, **SMALL).frames
    c = t2v.generate("a boat", seed=6, **SMALL).frames
    assert np.array_equal(a, b) and not np.allclose(a, c)
    free = t2v.generate("a boat", seed=None, **SMALL)
    again = t2v.generate("a boat", seed=free.settings["seed"], **SMALL)  # the random seed is recorded
    assert isinstance(free.settings["seed"], int) and np.array_equal(free.frames, again.frames)


def test_output_types(t2v):
    latents = t2v.generate("a boat", output_type="latent", **SMALL).frames
    assert isinstance(latents, torch.Tensor) and latents.shape == (1, 16, 2, 4, 4)
    pt = t2v.generate("a boat", output_type="pt", **SMALL).frames
    assert isinstance(pt, torch.Tensor) and pt.shape == (5, 3, 32, 32)
    with pytest.raises(InputError, match="output_type"):
        t2v.generate("a boat", output_type="pil", **SMALL)


def test_model_defaults_apply(t2v):
    result = t2v.generate("a boat", num_inference_steps=1)  # size and frames from the model
    assert result.frames.shape == (9, 64, 64, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_frames=6), "num_frames must be 4k\\+1"),
    (dict(height=20), "height must be a positive multiple of 16"),
    (dict(num_inference_steps=0), "at least 1"),
    (dict(guidance_scale=-2.0), "guidance_scale must be >= 0"),
    (dict(image=sample_image()), "takes no image"),
    (dict(guidance_scale_2=2.0), "two-expert"),
])
def test_bad_input_raises_value_error(t2v, kwargs, message):
    with pytest.raises(ValueError, match=message):
        t2v.generate("a boat", **{**SMALL, **kwargs})
    with pytest.raises(InputError, match="prompt must be a string"):
        t2v.generate(None)


def test_image_forms_give_the_same_video(tiny_model, tmp_path):
    pipe = fastdit.load(tiny_model("ti2v"), device="cpu", dtype=torch.float32)
    image = sample_image()
    image.save(tmp_path / "im.png")
    kw = dict(height=64, width=64, num_frames=5, num_inference_steps=2, seed=1)
    a = pipe.generate("a bird", image=image, **kw).frames
    b = pipe.generate("a bird", image=str(tmp_path / "im.png"), **kw).frames
    c = pipe.generate("a bird", image=np.asarray(image), **kw).frames
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert not np.allclose(a, pipe.generate("a bird", **kw).frames)  # the image matters
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(InputError, match="cannot read image"):
        pipe.generate("a bird", image=str(tmp_path / "bad.png"), **kw)
    with pytest.raises(InputError, match="cannot read image"):
        pipe.generate("a bird", image=str(tmp_path / "missing.png"), **kw)


@pytest.mark.parametrize("offload", ["experts", "model"])
def test_offload_modes_give_the_same_video(tiny_model, offload):
    path = tiny_model("a14b")
    kw = dict(SMALL, num_inference_steps=3, seed=2)
    base = fastdit.load(path, device="cpu", dtype=torch.float32, offload="none").generate("a cat", **kw).frames
    pipe = fastdit.load(path, device="cpu", dtype=torch.float32, offload=offload)
    assert pipe.offload == offload
    assert np.array_equal(pipe.generate("a cat", **kw).frames, base)


def test_load_options_and_errors(tiny_model, tmp_path):
    path = tiny_model("t2v")
    pipe = fastdit.load(path, device="cpu", dtype=torch.float32, flow_shift=7.0, vae_tiling=True)
    assert pipe.scheduler.config.flow_shift == 7.0 and pipe.vae.use_tiling
    assert fastdit.load(path).dtype == torch.float32  # CPU default
    with pytest.raises(ValueError, match="scheduler must be one of"):
        fastdit.load(path, scheduler="ddim")
    with pytest.raises(ModelFolderError, match="model folder not found"):
        fastdit.load(tmp_path / "missing")

    # weights that do not fit the config: the transformer loader's error, on one line
    broken = shutil.copytree(path, tmp_path / "broken")
    cfg = (broken / "transformer" / "config.json")
    cfg.write_text(cfg.read_text().replace('"num_layers": 2', '"num_layers": 3'))
    with pytest.raises(ModelFolderError, match="cannot load transformer") as info:
        fastdit.load(broken, device="cpu")
    assert "\n" not in str(info.value)

"""The stages of a Wan video pipeline, as plain functions.

encode_text -> encode_image (CLIP, Wan2.1 I2V) -> prepare_latents (+ image condition) ->
denoise (transformer -> guidance -> scheduler step) -> decode.

Each stage reproduces the math of diffusers' ``WanPipeline`` / ``WanImageToVideoPipeline``
(same prompt cleaning, same noise, same latent and mask construction, same scheduler calls,
same guidance formula), so the same weights, seed and settings give the same video.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fastdit.pipelines.host_frames import host_array

# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------
try:  # diffusers cleans prompts with ftfy when it is installed, and skips that step otherwise
    import ftfy as _ftfy
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy = None


def prompt_clean(text: str) -> str:
    """diffusers' Wan prompt cleaning: ftfy (if installed), double HTML unescape, collapse spaces."""
    import regex

    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def encode_text(tokenizer, text_encoder, prompts: Sequence[str], max_sequence_length: int = 512,
                device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """UMT5 embeddings of ``prompts``, trimmed to each prompt's length, zero-padded to
    ``max_sequence_length``: ``(N, max_sequence_length, D)``.

    All prompts go through the encoder in one batch (the padding mask keeps them independent).
    A prompt longer than ``max_sequence_length`` tokens is cut there (as in diffusers), with a
    logged notice saying how many tokens were dropped.
    """
    texts = [prompt_clean(p) for p in prompts]
    warn_truncated(tokenizer, texts, max_sequence_length)
    inputs = tokenizer(texts, padding="max_length", max_length=max_sequence_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = inputs.input_ids, inputs.attention_mask
    seq_lens = mask.gt(0).sum(dim=1).long()
    enc_device = next(text_encoder.parameters()).device
    hidden = text_encoder(ids.to(enc_device), mask.to(enc_device)).last_hidden_state  # (N, L, D)
    hidden = hidden.to(dtype=dtype or hidden.dtype, device=device or hidden.device)
    rows = [h[:n] for h, n in zip(hidden, seq_lens.tolist())]
    return torch.stack([torch.cat([u, u.new_zeros(max_sequence_length - u.size(0), u.size(1))]) for u in rows])


PROMPT_NAMES = ("the prompt", "the negative prompt")


def warn_truncated(tokenizer, texts: Sequence[str], max_sequence_length: int) -> list[int]:
    """Log a notice for each text longer than ``max_sequence_length`` tokens; returns the
    token counts (special tokens included)."""
    import logging

    counts = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    for i, n in enumerate(counts):
        if n > max_sequence_length:
            name = PROMPT_NAMES[i] if i < len(PROMPT_NAMES) else f"prompt {i}"
            logging.getLogger("fastdit.pipelines").warning(
                "%s has %d tokens; only the first %d are used (max_sequence_length): %d dropped",
                name, n, max_sequence_length, n - max_sequence_length)
    return counts


# ---------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------
def load_image(image: Any):
    """A PIL RGB image from a PIL image, a path, or an array / tensor (HWC or CHW, 1, 3 or 4
    channels; alpha dropped), scaled to 8 bits:

    * 8-bit images and ``uint8`` arrays as they are; 16-bit images (PIL ``I;16``, ``I``) and
      ``uint16`` arrays divided by 257 (65535 -> 255); other integer arrays must hold 0..255;
    * float arrays must be finite and in [0, 1] (within 1e-3, then clipped);
    * empty images, and images above PIL's decompression-bomb limit
      (``PIL.Image.MAX_IMAGE_PIXELS``), are refused.

    Raises :class:`~fastdit.errors.ImageError` (a ``ValueError``; ``FileNotFoundError`` for a
    missing file) with a message that does not repeat the image's name.
    """
    from PIL import Image

    from fastdit.errors import ImageError

    if isinstance(image, Image.Image):
        return _pil_rgb(image)
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        return _pil_rgb(_open_image(image))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.is_floating_point() else image).numpy()
    if isinstance(image, np.ndarray):
        return Image.fromarray(_array_rgb(image))
    raise ImageError(f"image must be a PIL image, a path or an array, got {type(image).__name__}")


def _open_image(path):
    """Open and decode an image file; the decompression-bomb guard is an error, not a warning."""
    import warnings

    from PIL import Image

    from fastdit.errors import ImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return im.copy() if im.mode in ("I;16", "I;16B", "I;16L", "I", "F") else im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{pixels.group(1)} pixels" if pixels else "the image"
        raise ImageError(f"{count} is more than the limit of {Image.MAX_IMAGE_PIXELS} pixels "
                         "(PIL's decompression-bomb guard, PIL.Image.MAX_IMAGE_PIXELS)") from None


def _pil_rgb(im):
    """RGB from any PIL mode; 16- and 32-bit integer modes through the array rules."""
    from fastdit.errors import ImageError

    if im.width == 0 or im.height == 0:
        raise ImageError(f"image is empty ({im.width}x{im.height})")
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return _from_array(np.asarray(im).astype(np.uint16))
    if im.mode == "I":  # 32-bit integers; 16-bit PNGs open this way: 0..65535 when above 255
        arr = np.asarray(im)
        return _from_array(arr.astype(np.uint16) if arr.min() >= 0 and 255 < arr.max() <= 65535 else arr)
    if im.mode == "F":  # 32-bit floats on the 0..255 scale
        return _from_array(np.clip(np.asarray(im), 0, 255).round().astype(np.uint8))
    return im.convert("RGB")


def _from_array(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(_array_rgb(arr))


def _array_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 from an HWC/CHW/HW array of the kinds :func:`load_image` takes."""
    from fastdit.errors import ImageError

    arr = image
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImageError(f"image array must be HWC with 1, 3 or 4 channels, got shape {image.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"image is empty ({arr.shape[1]}x{arr.shape[0]})")
    arr = _to_uint8(arr[..., :3] if arr.shape[-1] == 4 else arr)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr)


FLOAT_SLACK = 1e-3  # float images may stray this far outside [0, 1] (rounding); then clipped


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    from fastdit.errors import ImageError

    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # round(x / 257)
    if kind == "b":
        return arr.astype(np.uint8) * 255
    if kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageError(f"integer image arrays must hold 0..255 (uint16: 0..65535), got {arr.dtype} "
                             f"values from {lo} to {hi}")
        return arr.astype(np.uint8)
    if kind == "f":
        values = arr.astype(np.float32)
        if not np.isfinite(values).all():
            raise ImageError("float image arrays must be finite, got NaN or infinity")
        lo, hi = float(values.min()), float(values.max())
        if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
            raise ImageError(f"float image arrays must be in [0, 1], got values from {lo:g} to {hi:g} "
                             "(divide 0..255 data by 255, or pass uint8)")
        return (np.clip(values, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    raise ImageError(f"image arrays must hold integers or floats, got {arr.dtype}")


@torch.no_grad()
def encode_image(image_processor, image_encoder, image, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """CLIP vision tokens for Wan2.1 I2V: the penultimate hidden states, ``(1, 257, 1280)``."""
    enc_device = next(image_encoder.parameters()).device
    inputs = image_processor(images=image, return_tensors="pt").to(enc_device)
    hidden = image_encoder(**inputs, output_hidden_states=True).hidden_states[-2]
    return hidden.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------
# Latents
# ---------------------------------------------------------------------------------------
def latent_shape(channels: int, num_frames: int, height: int, width: int, stride_t: int,
                 stride_s: int, batch: int = 1) -> tuple[int, int, int, int, int]:
    return (batch, channels, (num_frames - 1) // stride_t + 1, height // stride_s, width // stride_s)


def initial_noise(shape: Sequence[int], seed: int | torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """Noise drawn exactly as diffusers draws it: a CPU generator seeded with ``seed``,
    ``torch.randn`` of the latent shape in fp32 on the CPU, then moved to ``device``."""
    if isinstance(seed, torch.Generator):
        generator = seed
    else:
        generator = torch.Generator("cpu")
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
    noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device)


def _latent_stats(vae, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(device, dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(device, dtype)
    return mean, inv_std


@dataclass
class ImageCondition:
    """What the image adds to the latents.

    ``channels`` (Wan2.1 I2V, Wan2.2 I2V-A14B): mask (4 channels) + image latent, concatenated
    to the noisy latents along channels at every step.
    ``first_frame`` (TI2V-5B): the image latent that replaces latent frame 0, with ``keep_mask``
    (1 where the latents are generated, 0 on frame 0).
    """

    channels: torch.Tensor | None = None
    first_frame: torch.Tensor | None = None
    keep_mask: torch.Tensor | None = None


@torch.no_grad()
def encode_image_condition(vae, video_processor, image, latents: torch.Tensor, num_frames: int,
                           height: int, width: int, stride_t: int, expand_timesteps: bool) -> ImageCondition:
    """diffusers' ``WanImageToVideoPipeline.prepare_latents`` image part, for batch 1."""
    device = latents.device
    _, _, num_latent_frames, lat_h, lat_w = latents.shape
    pixels = video_processor.preprocess(image, height=height, width=width).to(device, dtype=torch.float32)
    pixels = pixels.unsqueeze(2)  # (1, 3, 1, H, W)
    if expand_timesteps:
        video = pixels
    else:
        video = torch.cat([pixels, pixels.new_zeros(1, pixels.shape[1], num_frames - 1, height, width)], dim=2)
    vae_device = next(vae.parameters()).device
    video = video.to(device=vae_device, dtype=vae.dtype)
    mean, inv_std = _latent_stats(vae, device, torch.float32)
    cond = vae.encode(video).latent_dist.mode()
    cond = cond.to(device=device, dtype=torch.float32)
    cond = (cond - mean) * inv_std
    if expand_timesteps:
        keep = torch.ones(1, 1, num_latent_frames, lat_h, lat_w, dtype=torch.float32, device=device)
        keep[:, :, 0] = 0
        return ImageCondition(first_frame=cond, keep_mask=keep)
    mask = torch.ones(1, 1, num_frames, lat_h, lat_w)
    mask[:, :, 1:] = 0
    first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=stride_t)
    mask = torch.cat([first, mask[:, :, 1:]], dim=2)
    mask = mask.view(1, -1, stride_t, lat_h, lat_w).transpose(1, 2).to(device)  # (1, 4, T_lat, h, w)
    return ImageCondition(channels=torch.cat([mask, cond], dim=1))


# ---------------------------------------------------------------------------------------
# Denoising
# ---------------------------------------------------------------------------------------
@dataclass
class Expert:
    """One transformer and its guidance strategy (:mod:`fastdit.pipelines.guidance`)."""

    model: Callable[..., torch.Tensor]
    guidance: Any = None  # a strategy; None: NoGuidance

    def strategy(self):
        from fastdit.pipelines.guidance import NoGuidance

        return self.guidance if self.guidance is not None else NoGuidance()


def timestep_rows(t: torch.Tensor, batch: int, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """The transformer's timestep for one step: ``(B,)``, or per latent frame ``(B, F)`` when
    ``frame_mask (F,)`` holds frames at t = 0 (TI2V: the image's first frame)."""
    if frame_mask is None:
        return t.expand(batch)  # (B,)
    return (frame_mask * t).unsqueeze(0).expand(batch, -1)  # (B, F)


def expert_plan(timesteps: torch.Tensor, boundary_timestep: float | None) -> list[int]:
    """Which expert runs each step: 0 for ``t >= boundary_timestep`` (or always), 1 below;
    decided once on the host (no device sync inside the loop)."""
    if boundary_timestep is None:
        return [0] * len(timesteps)
    return [0 if float(t) >= boundary_timestep else 1 for t in timesteps.cpu()]


def plan_steps(scheduler, num_inference_steps: int, boundary_timestep: float | None,
               device: torch.device) -> list[int]:
    """:func:`expert_plan` for the timesteps ``scheduler`` will run (it sets them, as
    :func:`denoise` does again)."""
    scheduler.set_timesteps(num_inference_steps, device=device)
    return expert_plan(scheduler.timesteps, boundary_timestep)


@torch.no_grad()
def denoise(latents: torch.Tensor, scheduler, num_inference_steps: int, experts: Sequence[Expert],
            texts: Sequence[torch.Tensor], *, dtype: torch.dtype,
            boundary_timestep: float | None = None, image_embeds: torch.Tensor | None = None,
            condition: ImageCondition | None = None, expand_timesteps: bool = False,
            patch_size: Sequence[int] = (1, 2, 2), control=None,
            on_expert: Callable[[int], None] | None = None,
            wrap_model: Callable[[int, Any], Any] | None = None) -> torch.Tensor:
    """The denoising loop; returns the final latents (fp32, first frame restored for TI2V).

    ``scheduler`` is this generation's own (its state is changed). ``texts``: the text
    embeddings of each guidance branch (prompt, then negative prompt when guided).
    ``experts[0]`` runs for ``t >= boundary_timestep`` (or always), ``experts[1]`` below; each
    expert's guidance strategy turns its :class:`~fastdit.pipelines.guidance.BranchModel` into
    the step's noise prediction. ``wrap_model(expert_index, branch_model)`` may wrap the model
    (a step cache). ``control`` (a :class:`~fastdit.pipelines.control.GenerationControl`) is
    checked before every step (cancellation) and told after it (progress); ``on_expert(i)`` is
    called before expert i first runs.
    """
    from fastdit.pipelines.guidance import BranchModel

    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    timesteps = scheduler.timesteps
    scheduler.set_begin_index(0)
    batch = latents.shape[0]
    cond = condition or ImageCondition()
    frame_mask = None  # TI2V: per-frame timesteps, 0 on a first frame that holds the image
    if expand_timesteps:
        keep = cond.keep_mask if cond.keep_mask is not None else torch.ones_like(latents[:1, :1])
        frame_mask = keep[0, 0, ::patch_size[0], 0, 0]  # (F,)
    models = []
    for index, expert in enumerate(experts):
        model = BranchModel(expert.model, texts, image_embeds)
        models.append(model if wrap_model is None else wrap_model(index, model))
    strategies = [expert.strategy() for expert in experts]  # once, not per step
    plan = expert_plan(timesteps, boundary_timestep)
    # TI2V with an image: the held first frame's part of every step's input, computed once
    held_frame = None if cond.first_frame is None else (1 - cond.keep_mask) * cond.first_frame
    total = len(timesteps)
    if control is not None:
        control.begin(total)
    current = -1
    for i, t in enumerate(timesteps):
        if control is not None:
            control.check()
        index = plan[i]
        if index != current:
            if on_expert is not None:
                on_expert(index)
            current = index
        if cond.first_frame is not None:
            x = held_frame + cond.keep_mask * latents
        elif cond.channels is not None:
            x = torch.cat([latents, cond.channels], dim=1)
        else:
            x = latents
        noise = strategies[index](models[index], x.to(dtype), timestep_rows(t, batch, frame_mask), i)
        latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        if control is not None:
            control.step_done(i + 1, total)

    if cond.first_frame is not None:
        latents = held_frame + cond.keep_mask * latents
    return latents


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def decode(vae, video_processor, latents: torch.Tensor, output_type: str = "np",
           decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
           host: torch.Tensor | None = None):
    """Latents -> frames: un-normalise with the VAE's latents_mean/std, decode, map to [0, 1].

    ``output_type="np"``: float32 ``(F, H, W, 3)``; ``"pt"``: float32 ``(F, 3, H, W)``.
    ``decoder(z) -> video`` replaces ``vae.decode(z).sample`` (the parallel decode). ``host``: a
    pinned float32 ``(F, H, W, 3)`` tensor the "np" frames may land in
    (:class:`fastdit.pipelines.host_frames.FramesBuffer`).
    """
    vae_device = next(vae.parameters()).device
    latents = latents.to(vae_device, dtype=vae.dtype)
    mean, inv_std = _latent_stats(vae, latents.device, latents.dtype)
    latents = latents / inv_std + mean
    if decoder is None:
        video = vae.decode(latents, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
    else:
        video = decoder(latents)
    if output_type == "np":
        return frames_array(video, video_processor, host)
    return video_processor.postprocess_video(video, output_type=output_type)[0]


def frames_array(video: torch.Tensor, video_processor, host: torch.Tensor | None = None):
    """diffusers' ``postprocess_video(video, "np")[0]`` with its work on the video's device:
    ``frames = clamp(video * 0.5 + 0.5, 0, 1)`` in the video's dtype (when the processor
    normalises, as diffusers does it), then float32 in ``(F, H, W, 3)`` order, the same values
    bit for bit; diffusers moves the VAE's bf16 frames to the CPU and converts them there. A GPU
    video lands in pinned host memory (the array is a view of it): on the H200 machine 8 ms for
    a 480x832x81 video against 311 ms into pageable memory (``benchmarks/vae.py
    --frames-stage``, h200-run15); into ``host`` when it is given with the frames' shape.

    ``video [1, 3, F, H, W]`` -> numpy float32 ``[F, H, W, 3]``."""
    frames = video[0]  # (3, F, H, W)
    if video_processor.config.do_normalize:
        frames = (frames * 0.5 + 0.5).clamp(0, 1)
    frames = frames.permute(1, 2, 3, 0).float().contiguous()  # (F, H, W, 3)
    return frames.numpy() if frames.device.type == "cpu" else host_array(frames, host)

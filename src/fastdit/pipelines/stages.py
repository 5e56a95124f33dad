"""The stages of a Wan video pipeline, as plain functions.

encode_text -> encode_image (CLIP, Wan2.1 I2V) -> prepare_latents (+ image condition) ->
denoise (transformer -> guidance -> scheduler step) -> decode.

Each stage reproduces the math of diffusers' ``WanPipeline`` / ``WanImageToVideoPipeline``
(same prompt cleaning, same noise, same latent and mask construction, same scheduler calls,
same guidance formula), so the same weights, seed and settings give the same video.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

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
    """
    texts = [prompt_clean(p) for p in prompts]
    inputs = tokenizer(texts, padding="max_length", max_length=max_sequence_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = inputs.input_ids, inputs.attention_mask
    seq_lens = mask.gt(0).sum(dim=1).long()
    enc_device = next(text_encoder.parameters()).device
    hidden = text_encoder(ids.to(enc_device), mask.to(enc_device)).last_hidden_state  # (N, L, D)
    hidden = hidden.to(dtype=dtype or hidden.dtype, device=device or hidden.device)
    rows = [h[:n] for h, n in zip(hidden, seq_lens.tolist())]
    return torch.stack([torch.cat([u, u.new_zeros(max_sequence_length - u.size(0), u.size(1))]) for u in rows])


# ---------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------
def load_image(image: Any):
    """A PIL RGB image from a PIL image, a path, or an array (HWC uint8, or float in [0, 1])."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        with Image.open(image) as im:
            im.load()
            return im.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise ValueError(f"image array must be HWC with 1, 3 or 4 channels, got shape {image.shape}")
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        return Image.fromarray(arr[..., :3])
    raise ValueError(f"image must be a PIL image, a path or an array, got {type(image).__name__}")


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
    # which expert runs each step, decided once on the host (no device sync inside the loop)
    if boundary_timestep is None:
        plan = [0] * len(timesteps)
    else:
        plan = [0 if float(t) >= boundary_timestep else 1 for t in timesteps.cpu()]
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
        noise = experts[index].strategy()(models[index], x.to(dtype), timestep_rows(t, batch, frame_mask), i)
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
           decoder: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Latents -> frames: un-normalise with the VAE's latents_mean/std, decode, map to [0, 1].

    ``output_type="np"``: float32 ``(F, H, W, 3)``; ``"pt"``: float32 ``(F, 3, H, W)``.
    ``decoder(z) -> video`` replaces ``vae.decode(z).sample`` (the parallel decode).
    """
    vae_device = next(vae.parameters()).device
    latents = latents.to(vae_device, dtype=vae.dtype)
    mean, inv_std = _latent_stats(vae, latents.device, latents.dtype)
    latents = latents / inv_std + mean
    if decoder is None:
        video = vae.decode(latents, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
    else:
        video = decoder(latents)
    return video_processor.postprocess_video(video, output_type=output_type)[0]

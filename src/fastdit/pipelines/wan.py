"""The Wan video pipeline: T2V, I2V (Wan2.1 CLIP / Wan2.2 A14B latents), TI2V-5B, A14B experts.

    pipe = WanVideoPipeline.from_pretrained("Wan2.1-T2V-1.3B-Diffusers", device="cuda",
                                            dtype=torch.bfloat16)
    result = pipe.generate("a cat surfing", num_frames=81, seed=0)
    result.save("cat.mp4")

The task comes from the folder's ``model_index.json`` (see :mod:`fastdit.pipelines.spec`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from fastdit.pipelines import stages
from fastdit.pipelines.result import GenerationResult
from fastdit.pipelines.spec import InputError, ModelFolderError, ModelSpec, _first_line, inspect_model
from fastdit.pipelines.unipc import FlowUniPCScheduler

log = logging.getLogger("fastdit.pipelines")

SCHEDULERS = ("unipc", "euler")
OFFLOAD_MODES = ("auto", "none", "experts", "model")


# ---------------------------------------------------------------------------------------
# Requests: checked before any heavy work
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """A generation request with every default resolved and every value checked."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    max_sequence_length: int
    fps: int


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
            isinstance(value, float) and value.is_integer()):
        raise InputError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _as_float(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return out


def resolve_request(spec: ModelSpec, *, height=None, width=None, num_frames=None,
                    num_inference_steps=None, guidance_scale=None, guidance_scale_2=None,
                    max_sequence_length=512, image=None, has_image: bool | None = None) -> Request:
    """Fill in the model's defaults and check every value; raises :class:`InputError`."""
    d = spec.defaults
    height = _as_int("height", d.height if height is None else height)
    width = _as_int("width", d.width if width is None else width)
    num_frames = _as_int("num_frames", d.num_frames if num_frames is None else num_frames)
    steps = _as_int("num_inference_steps", d.num_inference_steps if num_inference_steps is None
                    else num_inference_steps)
    seq = _as_int("max_sequence_length", max_sequence_length)
    m = spec.spatial_multiple
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % m:
            raise InputError(f"{name} must be a positive multiple of {m} for this model, got {value}")
    st = spec.vae_stride_temporal
    if num_frames < 1 or (num_frames - 1) % st:
        lo = max(1, (num_frames - 1) // st * st + 1)
        raise InputError(f"num_frames must be {st}k+1 (1, {1 + st}, {1 + 2 * st}, ..., 81), got {num_frames}"
                         f" (try {lo} or {lo + st})")
    if steps < 1:
        raise InputError(f"num_inference_steps must be at least 1, got {steps}")
    if seq < 1:
        raise InputError(f"max_sequence_length must be at least 1, got {seq}")

    if guidance_scale is None:
        g = d.guidance_scale
        g2 = guidance_scale_2 if guidance_scale_2 is not None else d.guidance_scale_2
    else:
        g, g2 = guidance_scale, guidance_scale_2
    g = _as_float("guidance_scale", g)
    if g < 0:
        raise InputError(f"guidance_scale must be >= 0 (1 or less turns guidance off), got {g}")
    if spec.two_experts:
        g2 = g if g2 is None else _as_float("guidance_scale_2", g2)
        if g2 < 0:
            raise InputError(f"guidance_scale_2 must be >= 0 (1 or less turns guidance off), got {g2}")
    elif guidance_scale_2 is not None:
        raise InputError("guidance_scale_2 is only for two-expert models (Wan2.2 A14B); "
                         f"{spec.name or 'this model'} has one transformer")
    else:
        g2 = None

    has_image = (image is not None) if has_image is None else has_image
    if spec.image_mode == "required" and not has_image:
        raise InputError(f"{spec.name or 'this model'} is an image-to-video model: an image is required")
    if spec.image_mode == "none" and has_image:
        raise InputError(f"{spec.name or 'this model'} is a text-to-video model: it takes no image")
    return Request(height, width, num_frames, steps, g, g2, seq, int(spec.defaults.fps))


# ---------------------------------------------------------------------------------------
# Loading components
# ---------------------------------------------------------------------------------------
def _dtype_kw(dtype: torch.dtype) -> dict[str, Any]:
    """transformers >= 4.56 takes ``dtype=``; older releases ``torch_dtype=``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def diffusers_dtype_kw(dtype: torch.dtype) -> dict[str, Any]:
    """Recent diffusers take ``dtype=`` (``torch_dtype=`` is deprecated); older ones ``torch_dtype=``."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


@contextlib.contextmanager
def _loading(spec: ModelSpec, component: str):
    """Turn any failure while loading ``component`` into one-line ModelFolderError."""
    try:
        yield
    except ModelFolderError:
        raise
    except (KeyboardInterrupt, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        raise ModelFolderError(f"cannot load {component} from {spec.root / component}: "
                               f"{_first_line(exc)}") from exc


def load_transformer(spec: ModelSpec, subfolder: str, device: torch.device, dtype: torch.dtype):
    from fastdit.models.wan import WanTransformer

    with _loading(spec, subfolder):
        return WanTransformer.from_pretrained(str(spec.root), dtype=dtype, device=device,
                                              subfolder=subfolder)  # in eval mode


def make_scheduler(spec: ModelSpec, kind: str = "unipc", flow_shift: float | None = None):
    """The checkpoint's flow-matching UniPC scheduler (``flow_shift`` from the checkpoint unless
    given), or flow-match Euler with the same shift. UniPC is fastdit's
    :class:`~fastdit.pipelines.unipc.FlowUniPCScheduler` when it covers the configuration (every
    Wan checkpoint's), else diffusers' class."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    config = dict(spec.scheduler_config)
    shift = flow_shift if flow_shift is not None else config.get("flow_shift", spec.defaults.flow_shift)
    if kind == "unipc":
        if config.get("_class_name") not in (None, "UniPCMultistepScheduler"):
            log.info("the checkpoint's scheduler is %s; using UniPC as asked", config.get("_class_name"))
        extra = {"flow_shift": shift} if shift is not None else {}
        if shift is not None and "use_flow_sigmas" not in config:
            extra.update(use_flow_sigmas=True, prediction_type="flow_prediction")
        scheduler = UniPCMultistepScheduler.from_config(config, **extra)  # resolves the defaults
        if FlowUniPCScheduler.takes(scheduler.config):
            log.info("scheduler: FlowUniPCScheduler (diffusers' UniPC numbers, coefficients on the host)")
            return FlowUniPCScheduler(scheduler.config)
        log.info("scheduler: diffusers UniPCMultistepScheduler (a configuration FlowUniPCScheduler "
                 "does not cover)")
        return scheduler
    if kind == "euler":
        return FlowMatchEulerDiscreteScheduler.from_config(
            config, shift=shift if shift is not None else 1.0,
            num_train_timesteps=config.get("num_train_timesteps", 1000))
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {kind!r}")


def default_device() -> torch.device:
    from fastdit.platforms import current_platform

    return current_platform().device()


# ---------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------
class WanVideoPipeline:
    """Components of a Wan model and the generate() entry point.

    ``offload``: ``"none"`` keeps everything on the device; ``"experts"`` keeps only the active
    Wan2.2 expert there (the other waits in CPU memory); ``"model"`` also moves the text and
    image encoders to the device only while they run; ``"auto"`` picks by free device memory.
    """

    def __init__(self, spec: ModelSpec, *, tokenizer, text_encoder, vae, scheduler, transformer,
                 transformer_2=None, image_encoder=None, image_processor=None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 offload: str = "none"):
        from diffusers.video_processor import VideoProcessor

        self.spec = spec
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.vae = vae
        self.scheduler = scheduler
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype
        if offload not in OFFLOAD_MODES or offload == "auto":
            raise ValueError(f"offload must be one of none, experts, model; got {offload!r}")
        self.offload = offload
        self.video_processor = VideoProcessor(vae_scale_factor=spec.vae_stride_spatial)
        self.load_seconds: float | None = None

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | ModelSpec, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, *, scheduler: str = "unipc",
                        flow_shift: float | None = None, offload: str = "auto",
                        vae_dtype: torch.dtype | None = None, vae_tiling: bool = False,
                        check_files: bool = True) -> "WanVideoPipeline":
        """Load a diffusers-format Wan folder (or Hub id). ``dtype`` defaults to bf16 on a GPU and
        fp32 on the CPU; the VAE runs in ``vae_dtype`` (default: ``dtype``)."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        from fastdit.platforms import current_platform

        start = time.perf_counter()
        spec = path if isinstance(path, ModelSpec) else inspect_model(path, check_files=check_files)
        device = torch.device(device) if device is not None else default_device()
        if device.type == "cuda" and device.index is None and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        if dtype is None:
            dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
        if offload == "auto":
            offload = _auto_offload(spec, device, dtype)
        root = str(spec.root)
        home = torch.device("cpu") if offload == "model" else device

        with _loading(spec, "tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        place = {} if home.type == "cpu" else {"device_map": {"": home}}  # straight to the GPU
        with _loading(spec, "text_encoder"):
            text_encoder = UMT5EncoderModel.from_pretrained(root, subfolder="text_encoder", **_dtype_kw(dtype),
                                                            **place)
            text_encoder.to(home).eval()
        image_encoder = image_processor = None
        if spec.has_clip:
            import transformers
            from transformers import CLIPVisionModel

            # the processor class model_index.json names (as diffusers loads it)
            entry = spec.components.get("image_processor") or ("transformers", "CLIPImageProcessor")
            with _loading(spec, "image_processor"):
                processor_cls = getattr(transformers, entry[1], transformers.CLIPImageProcessor)
                image_processor = processor_cls.from_pretrained(root, subfolder="image_processor")
            with _loading(spec, "image_encoder"):
                image_encoder = CLIPVisionModel.from_pretrained(root, subfolder="image_encoder", **_dtype_kw(dtype),
                                                                **place)
                image_encoder.to(home).eval()
        with _loading(spec, "vae"):
            from diffusers import AutoencoderKLWan

            vae = AutoencoderKLWan.from_pretrained(root, subfolder="vae", **diffusers_dtype_kw(vae_dtype or dtype))
            vae.to(device).eval()
            if vae_tiling:
                vae.enable_tiling()
            vae = current_platform().optimize_vae(vae)
        with _loading(spec, "scheduler"):
            sched = make_scheduler(spec, scheduler, flow_shift)
        transformer = load_transformer(spec, "transformer", device, dtype)
        transformer_2 = None
        if spec.two_experts:
            second_home = device if offload == "none" else torch.device("cpu")
            transformer_2 = load_transformer(spec, "transformer_2", second_home, dtype)
        pipe = cls(spec, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=sched,
                   transformer=transformer, transformer_2=transformer_2, image_encoder=image_encoder,
                   image_processor=image_processor, device=device, dtype=dtype, offload=offload)
        current_platform().synchronize()
        pipe.load_seconds = time.perf_counter() - start
        log.debug("loaded %s in %.1f s (offload=%s)", spec.describe(), pipe.load_seconds, offload)
        return pipe

    # ---- helpers ---------------------------------------------------------------------
    @property
    def experts(self) -> list:
        return [m for m in (self.transformer, self.transformer_2) if m is not None]

    def check_request(self, **kwargs) -> Request:
        """:func:`resolve_request` for this model."""
        return resolve_request(self.spec, **kwargs)

    def _activate_expert(self, index: int) -> None:
        if self.offload == "none" or len(self.experts) < 2:
            return
        active, idle = self.experts[index], self.experts[1 - index]
        idle.to("cpu")
        active.to(self.device)

    @contextlib.contextmanager
    def _on_device(self, module):
        """Run ``module`` on the device; in offload='model' mode it goes back to the CPU after."""
        if module is None or self.offload != "model":
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")

    # ---- generation ------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: str, negative_prompt: str | None = None, height: int | None = None,
                 width: int | None = None, num_frames: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 guidance_scale_2: float | None = None, seed: int | torch.Generator | None = 0,
                 image: Any = None, max_sequence_length: int = 512, output_type: str = "np",
                 progress: bool = False,
                 callback: Callable[[int, int], None] | None = None) -> GenerationResult:
        """Generate one video. Unset sizes/steps/guidance come from the model's defaults.

        ``image``: a PIL image, a path or an array (I2V: required; TI2V-5B: optional).
        ``output_type``: ``"np"`` (float32 [F, H, W, 3] in [0, 1]), ``"pt"`` ([F, 3, H, W]) or
        ``"latent"``. ``callback(step, total)`` runs after every denoising step.
        """
        from fastdit.platforms import current_platform

        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InputError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
        if output_type not in ("np", "pt", "latent"):
            raise InputError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        req = self.check_request(height=height, width=width, num_frames=num_frames,
                                 num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                 guidance_scale_2=guidance_scale_2, max_sequence_length=max_sequence_length,
                                 image=image)
        pil_image = None
        if image is not None:
            try:
                pil_image = stages.load_image(image)
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read image {image if isinstance(image, (str, os.PathLike)) else ''}: "
                                 f"{_first_line(exc)}".replace("image : ", "image: ")) from None

        if seed is None:  # a random seed, recorded in the result so the video can be made again
            seed = random.SystemRandom().randrange(2**63)
        platform = current_platform()
        platform.reset_peak_memory()
        timings: dict[str, float] = {}
        clock = _StageClock(platform, timings)
        spec, device, dtype = self.spec, self.device, self.dtype
        # As diffusers: guidance is on when guidance_scale > 1, and then every expert applies its own
        # scale (an expert whose scale is exactly 1 runs the prompt alone: the same math, half the work).
        guided = req.guidance_scale > 1.0
        if not guided and (req.guidance_scale_2 or 0.0) > 1.0:
            log.warning("guidance_scale <= 1 turns guidance off for both experts (as in diffusers); "
                        "guidance_scale_2=%s is not used", req.guidance_scale_2)

        with clock("text"), self._on_device(self.text_encoder):
            prompts = [prompt] + ([negative_prompt or ""] if guided else [])
            embeds = stages.encode_text(self.tokenizer, self.text_encoder, prompts, req.max_sequence_length,
                                        device=device, dtype=self.text_encoder.dtype).to(dtype)
            text_embeds, negative_embeds = embeds[:1], (embeds[1:] if guided else None)

        image_embeds = None
        if spec.has_clip:
            with clock("image"), self._on_device(self.image_encoder):
                image_embeds = stages.encode_image(self.image_processor, self.image_encoder, pil_image,
                                                   device, dtype)

        with clock("latents"):
            shape = stages.latent_shape(spec.latent_channels, req.num_frames, req.height, req.width,
                                        spec.vae_stride_temporal, spec.vae_stride_spatial)
            latents = stages.initial_noise(shape, seed, device)
            condition = None
            if pil_image is not None:
                condition = stages.encode_image_condition(
                    self.vae, self.video_processor, pil_image, latents, req.num_frames, req.height,
                    req.width, spec.vae_stride_temporal, spec.expand_timesteps)

        experts = [stages.Expert(self.transformer, req.guidance_scale, guided)]
        boundary = None
        if spec.two_experts:
            experts.append(stages.Expert(self.transformer_2, req.guidance_scale_2,
                                         guided and req.guidance_scale_2 != 1.0))
            boundary = spec.boundary_ratio * self.scheduler.config.num_train_timesteps
        bar = _progress_bar(req.num_inference_steps) if progress else None

        def on_step(i: int, total: int) -> None:
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(i, total)

        try:
            with clock("denoise"):
                latents = stages.denoise(
                    latents, self.scheduler, req.num_inference_steps, experts, text_embeds, negative_embeds,
                    dtype=dtype, boundary_timestep=boundary, image_embeds=image_embeds, condition=condition,
                    expand_timesteps=spec.expand_timesteps, patch_size=spec.patch_size,
                    on_expert=self._activate_expert, on_step=on_step)
        finally:
            if bar is not None:
                bar.close()
        timings["per_step"] = timings["denoise"] / req.num_inference_steps

        if output_type == "latent":
            frames = latents
        else:
            with clock("decode"):
                frames = stages.decode(self.vae, self.video_processor, latents, output_type=output_type)
        timings["total"] = sum(v for k, v in timings.items() if k != "per_step")
        settings = dataclasses.asdict(req) | {"seed": seed if not isinstance(seed, torch.Generator) else None,
                                              "prompt": prompt, "negative_prompt": negative_prompt or "",
                                              "image": pil_image is not None, "model": spec.name,
                                              "task": spec.task}
        return GenerationResult(frames=frames, timings=timings, fps=req.fps,
                                peak_memory=platform.memory_allocated_peak(), settings=settings)

    __call__ = generate


class _StageClock:
    """``with clock("name"):`` adds the stage's wall time (synchronized) to ``timings``."""

    def __init__(self, platform, timings: dict[str, float]):
        self.platform, self.timings = platform, timings

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.platform.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.platform.synchronize()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="denoising", unit="step", dynamic_ncols=True, leave=True)


def _auto_offload(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> str:
    """'none' when all weights (plus room for activations) fit in free device memory."""
    if device.type == "cpu" or not hasattr(torch, device.type):
        return "none"
    backend = getattr(torch, device.type)
    if not hasattr(backend, "mem_get_info"):
        return "none"
    try:
        free, _total = backend.mem_get_info(device)
    except Exception:
        return "none"
    return choose_offload(spec, dtype, free)


def choose_offload(spec: ModelSpec, dtype: torch.dtype, free_bytes: int) -> str:
    """'none' if all weights fit in 3/4 of ``free_bytes`` (the rest is for activations and the
    VAE), else 'experts' if dropping the idle Wan2.2 expert is enough, else 'model'."""
    free = free_bytes
    if not spec.param_counts:
        return "none"
    width = torch.finfo(dtype).bits // 8
    weights = {name: n * width for name, n in spec.param_counts.items()}
    total = sum(weights.values())
    headroom = 0.75 * free
    if total <= headroom:
        return "none"
    if spec.two_experts and total - weights.get("transformer_2", 0) <= headroom:
        log.info("offloading the idle Wan2.2 expert to CPU memory (weights %.1f GB, free %.1f GB)",
                 total / 1e9, free / 1e9)
        return "experts"
    log.info("offloading idle components to CPU memory (weights %.1f GB, free %.1f GB)", total / 1e9, free / 1e9)
    return "model"

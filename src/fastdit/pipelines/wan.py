"""The Wan video pipeline: T2V, I2V (Wan2.1 CLIP / Wan2.2 A14B latents), TI2V-5B, A14B experts.

    pipe = WanVideoPipeline.from_pretrained("Wan2.1-T2V-1.3B-Diffusers", device="cuda",
                                            dtype=torch.bfloat16)
    result = pipe.generate("a cat surfing", num_frames=81, seed=0)
    result.save("cat.mp4")

The task comes from the folder's ``model_index.json`` (see :mod:`fastdit.pipelines.spec`);
loading lives in :mod:`fastdit.pipelines.loading`, requests in :mod:`.request`, per-generation
progress and cancellation in :mod:`.control`, guidance strategies in :mod:`.guidance`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import random
import threading
import time
from typing import Any, Callable

import torch

from fastdit.distributed import pipeline as parallel_run
from fastdit.distributed.groups import ParallelState, broadcast_from_writer, close_parallel, single_process
from fastdit.errors import InputError, first_line
from fastdit.pipelines import stages
from fastdit.pipelines.control import GenerationControl, Progress
from fastdit.pipelines.guidance import CFG, CFGZeroStar, GuidanceUntil, NoGuidance
from fastdit.pipelines.host_frames import FramesBuffer
from fastdit.pipelines.loading import (  # noqa: F401  (re-exported for older imports)
    OFFLOAD_MODES,
    SCHEDULERS,
    LoadOptions,
    choose_offload,
    vae_decoder_choice,
    default_device,
    load_pipeline,
    load_transformer,
    make_scheduler,
)
from fastdit.pipelines.request import (  # noqa: F401  (re-exported)
    GenerationRequest,
    ResolvedRequest,
    check_texts,
    resolve_request,
)
from fastdit.pipelines.result import GenerationResult
from fastdit.pipelines.spec import ModelSpec
from fastdit.pipelines.variants import Variant

log = logging.getLogger("fastdit.pipelines")

Request = ResolvedRequest  # the name earlier releases used


class WanVideoPipeline:
    """Components of a Wan model and the generate() / run() entry points.

    ``offload``: ``"none"`` keeps everything on the device; ``"experts"`` keeps only the active
    Wan2.2 expert there (the other waits in CPU memory); ``"model"`` also moves the text and
    image encoders to the device only while they run. ``cache``: the step cache of every
    generation that sets none (docs/caching.md). The pipeline holds no per-generation state:
    every generation makes its own scheduler, control object and cache session.

    ``parallel``: this process's place in a multi-GPU run (:mod:`fastdit.distributed`; default
    one process). Every rank calls :meth:`run` with the same request; the text encoder and CLIP
    run on the writer (rank 0, the only rank that loads them) and their outputs are broadcast;
    every rank returns the latents, the ranks of the VAE group the frames (others: None).
    """

    def __init__(self, spec: ModelSpec, *, tokenizer, text_encoder, vae, scheduler, transformer,
                 transformer_2=None, image_encoder=None, image_processor=None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 offload: str = "none", cache: Any = None, options: LoadOptions | None = None,
                 variant: Variant | None = None, parallel: ParallelState | None = None):
        from diffusers.video_processor import VideoProcessor

        self.spec = spec
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.vae = vae
        self.scheduler = scheduler  # a template: each generation works on its own copy
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype
        if offload not in OFFLOAD_MODES or offload == "auto":
            raise ValueError(f"offload must be one of none, experts, model; got {offload!r}")
        self.offload = offload
        self.cache = None  # the default CacheConfig (frozen; each generation has its own session)
        if cache is not None:  # checked against the model now (load() did so before any weights)
            from fastdit.cache.config import as_cache_config
            from fastdit.cache.wiring import check_cache

            self.cache = as_cache_config(cache)
            if self.cache is not None:
                check_cache(self.cache, spec)
        self.parallel = parallel if parallel is not None else single_process(self.device)
        self.video_processor = VideoProcessor(vae_scale_factor=spec.vae_stride_spatial)
        self.load_seconds: float | None = None
        self.options = options if options is not None else LoadOptions()  # how it was loaded
        self._vae_decoder_name: str | None = None  # the vae_decoder property's resolved choice
        self._decode_fn = None  # its z -> video (None: vae.decode), made once by _vae_decoder
        self.variant = variant if variant is not None else Variant()  # preset, files, LoRAs
        from fastdit.quant.config import PrecisionConfig

        # the precision setting of the transformers (exact unless loaded with quantize=...) and
        # what applying it did to each (fastdit.quant.apply.PrecisionReport)
        self.precision = PrecisionConfig()
        self.precision_reports: list = []
        # diffusers' Wan VAE keeps its causal-convolution cache on the module: one user at a time
        self._vae_lock = threading.Lock()

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | ModelSpec, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, variant: Variant | None = None,
                        **options: Any) -> "WanVideoPipeline":
        """Load a diffusers-format Wan folder (or Hub id); ``options`` are :class:`LoadOptions`
        fields. ``dtype`` defaults to bf16 on a GPU and fp32 on the CPU. ``variant``: the
        result of :func:`~fastdit.pipelines.variants.plan_variant` for these options, when the
        caller checked them first (``path`` is then the spec it returned)."""
        return load_pipeline(cls, path, device, dtype, LoadOptions.from_kwargs(**options), variant)

    # ---- helpers ---------------------------------------------------------------------
    @property
    def is_writer(self) -> bool:
        """True on the process that saves the video and prints (rank 0; always in one process)."""
        return self.parallel.is_writer

    def close(self) -> None:
        """Leave the process group this pipeline joined (a multi-GPU run); else nothing."""
        close_parallel(self.parallel)

    @property
    def experts(self) -> list:
        return [m for m in (self.transformer, self.transformer_2) if m is not None]

    def check_request(self, request: GenerationRequest | None = None, **kwargs) -> ResolvedRequest:
        """:func:`resolve_request` for this model (and this pipeline's default cache)."""
        return resolve_request(self.spec, request, default_cache=self.cache, **kwargs)

    @property
    def vae_decoder(self) -> str:
        """The VAE decode this pipeline runs (``options.vae_decoder`` with "auto" resolved,
        :func:`~fastdit.pipelines.loading.vae_decoder_choice`); named in ``result.settings``."""
        if self._vae_decoder_name is None:
            self._vae_decoder_name = vae_decoder_choice(self.options.vae_decoder, self.vae)
            log.info("VAE decode: %s", self._vae_decoder_name)
        return self._vae_decoder_name

    def _frames_buffer(self, output_type: str, req: ResolvedRequest) -> FramesBuffer | None:
        """The pinned host buffer of this generation's numpy frames, its allocation started now
        (:mod:`fastdit.pipelines.host_frames`); None for other outputs and ranks outside the VAE
        group."""
        if output_type != "np" or not parallel_run.decodes(self.parallel):
            return None
        return FramesBuffer((req.num_frames, req.height, req.width, 3), next(self.vae.parameters()).device)

    def _vae_decoder(self):
        """``z -> video`` for the decode stage: fastdit's decode for a fastdit choice, else None
        (``vae.decode``); made at the first decode."""
        if self._decode_fn is None and self.vae_decoder != "diffusers":
            from fastdit.models.wan.vae import decoder_for

            self._decode_fn = decoder_for(self.vae, self.vae_decoder)
        return self._decode_fn

    def _activate_expert(self, index: int) -> None:
        if self.offload == "none" or len(self.experts) < 2:
            return
        active, idle = self.experts[index], self.experts[1 - index]
        idle.to("cpu")
        active.to(self.device)

    @contextlib.contextmanager
    def _on_device(self, module):
        """Run ``module`` on the device; in offload='model' mode it visits the device and keeps
        its host tensors (nothing is copied back: :func:`fastdit.runtime.visit.visiting`)."""
        if module is None or self.offload != "model":
            yield module
            return
        from fastdit.runtime.visit import visiting

        with visiting(module, self.device):
            yield module

    def _scheduler_for(self, req: ResolvedRequest):
        """This generation's own scheduler: the few-step schedule it resolved to, the model's
        scheduler with the request's shift, or a fresh copy of the pipeline's."""
        if req.few_step is not None:
            return req.few_step.scheduler(self.spec.scheduler_config.get("num_train_timesteps", 1000))
        if req.flow_shift is not None:
            return make_scheduler(self.spec, self.options.scheduler, req.flow_shift)
        return copy.deepcopy(self.scheduler)

    def _experts_for(self, req: ResolvedRequest) -> tuple[list[stages.Expert], float | None]:
        """Each expert with its guidance, and the timestep where the second takes over.

        As diffusers: guidance is on when guidance_scale > 1, and then every expert applies its
        own scale (an expert whose scale is exactly 1 runs the prompt alone: the same math, half
        the work). The guidance shortcuts of the request (CFG-Zero*, guidance until a step
        fraction) replace CFG in each guided expert; their step index is the global one. The
        switch is at ``boundary_ratio * num_train_timesteps``, or, on a few-step schedule, after
        its ``boundary_step`` steps (LightX2V)."""
        from fastdit.schedulers.few_step import FewStepScheduler

        guided = req.guided
        experts = [stages.Expert(self.transformer, self._guidance(req.guidance_scale, req) if guided
                                 else NoGuidance())]
        boundary = None
        if self.spec.two_experts:
            second = (self._guidance(req.guidance_scale_2, req) if guided and req.guidance_scale_2 != 1.0
                      else NoGuidance())
            experts.append(stages.Expert(self.transformer_2, second))
            scheduler = self._scheduler_for(req) if req.few_step is not None else self.scheduler
            if isinstance(scheduler, FewStepScheduler):
                boundary = scheduler.boundary_timestep  # None: one step, the first expert
            else:
                boundary = self.spec.boundary_ratio * scheduler.config.num_train_timesteps
        return experts, boundary

    @staticmethod
    def _guidance(scale: float, req: ResolvedRequest):
        """CFG at ``scale``, or the request's guidance shortcuts around it."""
        steps = req.num_inference_steps
        strategy = (CFGZeroStar(scale, steps, zero_init_steps=req.zero_init_steps) if req.cfg_zero_star
                    else CFG(scale))
        if req.guidance_until is not None and req.guidance_until < 1.0:
            strategy = GuidanceUntil(scale, req.guidance_until, steps, guided=strategy)
        return strategy

    # ---- generation ------------------------------------------------------------------
    def generate(self, prompt: str, negative_prompt: str | None = None, height: int | None = None,
                 width: int | None = None, num_frames: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 guidance_scale_2: float | None = None, seed: int | torch.Generator | None = 0,
                 image: Any = None, max_sequence_length: int = 512, output_type: str = "np",
                 progress: bool = False, callback: Callable[[int, int], None] | None = None,
                 control: GenerationControl | None = None, cache: Any = None,
                 guidance_until: float | None = None, cfg_zero_star: bool = False,
                 zero_init_steps: int | None = None, timesteps=None,
                 flow_shift: float | None = None, boundary_step: int | None = None) -> GenerationResult:
        """Generate one video. Unset sizes/steps/guidance come from the model's defaults.

        ``image``: a PIL image, a path or an array (I2V: required; TI2V-5B: optional).
        ``output_type``: ``"np"`` (float32 [F, H, W, 3] in [0, 1]), ``"pt"`` ([F, 3, H, W]) or
        ``"latent"``. ``progress``: a progress bar on stderr. ``callback(step, total)`` runs
        after every denoising step; ``control`` reports progress and can cancel (see
        :class:`~fastdit.pipelines.control.GenerationControl`).

        Opt-in, output-changing features (docs/caching.md): ``cache`` a step cache
        (``"teacache:threshold=0.08"``; None: the pipeline's default, ``"none"``: off; the
        result's ``stats["cache"]`` says what it reused); ``guidance_until`` guidance on that
        fraction of the steps only; ``cfg_zero_star`` CFG-Zero* (``zero_init_steps`` zero-velocity
        first steps, default 1).
        :class:`~fastdit.pipelines.control.GenerationControl`). ``timesteps``, ``flow_shift``,
        ``boundary_step``: this generation's sampler (see
        :class:`~fastdit.pipelines.request.GenerationRequest`).
        """
        request = GenerationRequest(
            prompt=prompt, negative_prompt=negative_prompt, image=image, height=height, width=width,
            num_frames=num_frames, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2, seed=seed,
            max_sequence_length=max_sequence_length, output_type=output_type, cache=cache,
            guidance_until=guidance_until, cfg_zero_star=cfg_zero_star, zero_init_steps=zero_init_steps,
            timesteps=timesteps, flow_shift=flow_shift, boundary_step=boundary_step)
        return self.run(request, control=control, progress=progress, callback=callback)

    __call__ = generate

    @torch.no_grad()
    def run(self, request: GenerationRequest, control: GenerationControl | None = None, *,
            progress: bool = False, callback: Callable[[int, int], None] | None = None) -> GenerationResult:
        """Generate the video ``request`` describes (see :meth:`generate`)."""
        from fastdit.platforms import current_platform

        req = self.check_request(request)  # the texts first, then every other value
        frames_buffer = self._frames_buffer(request.output_type, req)  # allocated while it denoises
        pil_image = self._read_image(request.image)
        seed = request.seed
        if seed is None:  # a random seed, recorded in the result so the video can be made again
            seed = random.SystemRandom().randrange(2**63)
        platform = current_platform()
        platform.reset_peak_memory()
        timings: dict[str, float] = {}
        clock = _StageClock(platform, timings)
        spec, device, dtype = self.spec, self.device, self.dtype
        par = self.parallel
        parallel_run.check_request(par, req.guided)
        if not req.guided and (req.guidance_scale_2 or 0.0) > 1.0:
            log.warning("guidance_scale <= 1 turns guidance off for both experts (as in diffusers); "
                        "guidance_scale_2=%s is not used", req.guidance_scale_2)

        with clock("text"), self._on_device(self.text_encoder):  # on the writer, shared (parallel)
            prompts = [request.prompt] + ([request.negative_prompt or ""] if req.guided else [])
            embeds = parallel_run.share_from_writer(lambda: stages.encode_text(
                self.tokenizer, self.text_encoder, prompts, req.max_sequence_length, device=device,
                dtype=self.text_encoder.dtype).to(dtype), par)
            texts = list(embeds.split(1))  # one (1, S, D) per guidance branch

        image_embeds = None
        if spec.has_clip:
            with clock("image"), self._on_device(self.image_encoder):
                image_embeds = parallel_run.share_from_writer(lambda: stages.encode_image(
                    self.image_processor, self.image_encoder, pil_image, device, dtype), par)

        with clock("latents"):
            shape = stages.latent_shape(spec.latent_channels, req.num_frames, req.height, req.width,
                                        spec.vae_stride_temporal, spec.vae_stride_spatial)
            latents = broadcast_from_writer(stages.initial_noise(shape, seed, device), par)  # rank 0's
            condition = None
            if pil_image is not None:
                with self._vae_lock:
                    condition = parallel_run.share_from_writer(lambda: stages.encode_image_condition(
                        self.vae, self.video_processor, pil_image, latents, req.num_frames, req.height,
                        req.width, spec.vae_stride_temporal, spec.expand_timesteps), par)

        scheduler = self._scheduler_for(req)
        experts, boundary = self._experts_for(req)
        guidance = [repr(e.strategy()) for e in experts]
        experts = parallel_run.parallel_experts(experts, par)
        session = None
        if req.cache is not None:  # a step cache: this generation's own session, every expert
            experts, session = self._cached(experts, req, scheduler, boundary, pil_image is not None)
        control, bar = _control_with_reports(control, progress and par.is_writer, callback,
                                             req.num_inference_steps)
        try:
            with clock("denoise"):
                latents = stages.denoise(
                    latents, scheduler, req.num_inference_steps, experts, texts,
                    dtype=dtype, boundary_timestep=boundary, image_embeds=image_embeds, condition=condition,
                    expand_timesteps=spec.expand_timesteps, patch_size=spec.patch_size, control=control,
                    on_expert=self._activate_expert)
        finally:
            if bar is not None:
                bar.close()
        timings["per_step"] = timings["denoise"] / req.num_inference_steps

        decoded_by = None  # the VAE decode that ran, for the settings
        if request.output_type == "latent":
            frames = latents
        elif not parallel_run.decodes(par):  # a rank outside the VAE group
            frames = None
        else:
            with clock("decode"), self._vae_lock:
                decoder = parallel_run.vae_decoder(self.vae, par)
                decoded_by = "parallel" if decoder is not None else self.vae_decoder
                decoder = decoder or self._vae_decoder()
                frames = stages.decode(self.vae, self.video_processor, latents, output_type=request.output_type,
                                       decoder=decoder, host=frames_buffer.take() if frames_buffer else None)
        timings["total"] = sum(v for k, v in timings.items() if k != "per_step")
        settings = dataclasses.asdict(req) | {
            "seed": seed if not isinstance(seed, torch.Generator) else None, "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or "", "image": pil_image is not None,
            "model": spec.name, "task": spec.task, "guidance": guidance,
            "cache": None if req.cache is None else req.cache.spec(),
            "sampler": req.few_step.describe() if req.few_step is not None else type(scheduler).__name__,
            "weights": [e.settings() for e in self.variant.experts],
            "quantize": self.precision.spec(), "precision": self.precision_summary(),
            "vae_decoder": decoded_by}
        stats = {} if session is None else {"cache": session.finish().to_dict()}
        if par.world_size > 1:
            settings["parallel"] = par.config.describe()
        return GenerationResult(frames=frames, timings=timings, fps=req.fps,
                                peak_memory=platform.memory_allocated_peak(), settings=settings,
                                stats=stats)

    def _cached(self, experts: list[stages.Expert], req: ResolvedRequest, scheduler,
                boundary: float | None, has_image: bool):
        """The experts with their guidance behind this generation's step cache, and the session."""
        from fastdit.cache.session import CachedGuidance
        from fastdit.cache.wiring import new_session

        plan = stages.plan_steps(scheduler, req.num_inference_steps, boundary, self.device)
        session = new_session(req.cache, self.spec, self.transformer, plan, height=req.height,
                              width=req.width, has_image=has_image)
        cached = [dataclasses.replace(e, guidance=CachedGuidance(e.strategy(), session)) for e in experts]
        return cached, session

    def precision_summary(self) -> dict[str, Any]:
        """The precision setting and what it changed, for ``result.settings``: ``exact``, the
        text form, the parts, the self-attention providers and the transformers' weight bytes."""
        summary: dict[str, Any] = {"exact": self.precision.exact, "quantize": self.precision.spec(),
                                   "attention": self.precision.attention,
                                   "linear": self.precision.linear}
        if self.precision_reports:
            summary["attention_providers"] = list(self.precision_reports[0].attention_providers)
            summary["weight_bytes"] = sum(r.weight_bytes for r in self.precision_reports)
        return summary

    @staticmethod
    def _read_image(image: Any):
        if image is None:
            return None
        try:
            return stages.load_image(image)
        except (OSError, ValueError) as exc:
            name = image if isinstance(image, (str, os.PathLike)) else ""
            raise InputError(f"cannot read image {name}: {first_line(exc)}".replace("image : ", "image: "),
                             field="image") from None


def _control_with_reports(control: GenerationControl | None, progress: bool,
                          callback: Callable[[int, int], None] | None, total: int):
    """The generation's control object, also driving a progress bar and the step callback."""
    bar = _progress_bar(total) if progress else None
    control = control if control is not None else GenerationControl()
    if bar is None and callback is None:
        return control, None
    inner = control.on_progress

    def report(p: Progress) -> None:
        if p.step > 0:
            if bar is not None:
                bar.update(p.step - bar.n)
            if callback is not None:
                callback(p.step - 1, p.total)
        if inner is not None:
            inner(p)

    return GenerationControl(on_progress=report, cancel_event=control.cancel_event), bar


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

"""Loading a Wan pipeline: the options (:class:`LoadOptions`), each component, the scheduler,
and the choice of what stays in device memory.

    pipe = fastdit.load(path, device="cuda", dtype=torch.bfloat16, offload="auto")

Before any weights load, the device and dtype are checked (:func:`resolve_device`,
:func:`resolve_dtype`: :class:`~fastdit.errors.DeviceError`), and, with ``check_files``, the
folder's JSON files, weight headers and every component's tensor names and shapes
(:func:`~fastdit.pipelines.spec.inspect_model`, :func:`~fastdit.pipelines.preflight.check_components`).
Every failure while reading a component becomes one :class:`~fastdit.errors.ModelFolderError`
line naming the component; only I/O and format errors are wrapped (a bug keeps its traceback).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from fastdit.errors import (CheckpointError, DeviceError, LoraError, ModelFolderError, UserError,
                            first_line, is_out_of_memory)
from fastdit.pipelines.spec import ModelSpec, inspect_model
from fastdit.pipelines.variants import ExpertWeights, Variant, plan_variant
from fastdit.schedulers.unipc import FlowUniPCScheduler

log = logging.getLogger("fastdit.pipelines")

SCHEDULERS = ("unipc", "euler")
OFFLOAD_MODES = ("auto", "none", "experts", "model", "blocks")
#: dtype names the CLI and ``load(dtype=...)`` accept
DTYPE_NAMES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
               "float16": torch.float16, "half": torch.float16, "fp32": torch.float32,
               "float32": torch.float32, "float": torch.float32}
LORA_MODES = ("merge", "runtime")
VAE_DECODERS = ("auto", "diffusers", "fastdit", "fastdit-channels-last")


@dataclass(frozen=True)
class LoadOptions:
    """How :func:`fastdit.load` builds a pipeline (every keyword option of ``load``).

    ``scheduler``: "unipc" (the checkpoint's) or "euler"; ``flow_shift``: overrides the
    checkpoint's; ``offload``: "none" keeps everything on the device, "experts" only the active
    Wan2.2 expert, "model" also moves the encoders there only while they run, "auto" picks by
    free device memory; ``vae_dtype``: the VAE's dtype (default: the pipeline's);
    ``vae_tiling``: decode in tiles; ``vae_decoder``: "diffusers" (``vae.decode``), "fastdit"
    (:func:`fastdit.models.wan.vae.decode`: the same decode on diffusers' modules with a fused
    norm + SiLU op and padding-free causal convolutions; bit for bit diffusers' on the CPU),
    "fastdit-channels-last" (the same with NDHWC activations), or "auto" (the default: the
    platform's measured choice for the VAE's device, :func:`vae_decoder_choice`);
    ``check_files``: check every weight file's header first.

    Memory (:mod:`fastdit.pipelines.memory`, :mod:`fastdit.runtime`): ``offload="blocks"``
    streams transformer blocks from host memory as the budget needs ("auto" may too);
    ``max_gpu_memory``: the budget ("24GB", "16GiB" or bytes; default: the device's free
    memory); ``weights``: "dense" or "fp8" (e4m3 block weights, per-channel scales);
    ``text_encoder_device``: "auto", "device" or "cpu" (also the CLIP encoder's);
    ``prefetch``: streamed blocks copied ahead (default: the planner's); ``plan_video``:
    ``(height, width, num_frames)`` the plan must hold (default: the model's defaults).
    ``cache``: the step cache of every generation that sets none (``"teacache:threshold=0.08"``,
    a :class:`~fastdit.cache.CacheConfig`; stored as the parsed CacheConfig; docs/caching.md).
    Few-step models and LoRAs (docs/lora.md): ``loras``: LoRAs for ``transformer`` (Wan2.2
    A14B: the high-noise expert), each a path, ``(path, scale)`` or ``"[high:|low:]PATH[:SCALE]"``
    (``low:`` sends it to the second expert); ``loras_2``: LoRAs for ``transformer_2``;
    ``lora_mode``: "merge" (into the weights, no cost per step) or "runtime" (side branches
    ``y += s (x A^T) B^T`` on the Linear layers); ``lora_strict``: a LoRA key that maps to no
    parameter is an error (False: skipped with a warning); ``transformer`` / ``transformer_2``:
    a single ``.safetensors`` file (a distilled model, official or diffusers names, fp8/int8
    with scales dequantised) replacing the folder's transformer; ``preset``: a few-step preset
    ("lightx2v-4step", "lightning-4step": timesteps, shift, guidance off, expert switch);
    ``timesteps``: a few-step timestep list (``[1000, 750, 500, 250]`` or "1000,750,500,250");
    ``boundary_step``: the first step of the low-noise expert on a few-step schedule. With a
    preset or timesteps, ``flow_shift`` is the few-step schedule's shift.
    ``parallel``: the multi-GPU layout, a :class:`~fastdit.distributed.layout.ParallelConfig`, a
    dict of its fields, a spec ``"ulysses=2,ring=2,cfg=2,vae=4"`` or ``"auto"`` (None: one
    process, or ``"auto"`` when launched with several; see ``docs/distributed.md``).
    ``quantize``: the precision of the transformers (``"none"``, the default: exact, output
    equal to diffusers; ``"fp8"``: 8-bit self-attention and fp8 block linear layers; per-part
    overrides such as ``"fp8:attention=exact"``; or a
    :class:`~fastdit.quant.config.PrecisionConfig`), applied once at load
    (:func:`fastdit.quant.apply.apply_precision`; docs/quantization.md); stored here as a
    ``PrecisionConfig``.
    """

    scheduler: str = "unipc"
    flow_shift: float | None = None
    offload: str = "auto"
    vae_dtype: torch.dtype | None = None
    vae_tiling: bool = False
    vae_decoder: str = "auto"
    check_files: bool = True
    max_gpu_memory: int | str | None = None
    weights: str = "dense"
    text_encoder_device: str = "auto"
    prefetch: int | None = None
    plan_video: tuple[int, int, int] | None = None
    cache: Any = None
    loras: Sequence[Any] = ()
    loras_2: Sequence[Any] = ()
    lora_mode: str = "merge"
    lora_strict: bool = True
    transformer: str | os.PathLike | None = None
    transformer_2: str | os.PathLike | None = None
    preset: str | None = None
    timesteps: Any = None
    boundary_step: int | None = None
    parallel: Any = None
    quantize: Any = None  # str | PrecisionConfig | None, normalised to a PrecisionConfig

    def __post_init__(self) -> None:
        from fastdit.distributed.layout import parallel_option
        from fastdit.quant.config import parse_quantize

        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {self.offload!r}")
        if self.flow_shift is not None:
            object.__setattr__(self, "flow_shift", check_flow_shift(self.flow_shift))
        if self.vae_dtype is not None:
            object.__setattr__(self, "vae_dtype", resolve_dtype(self.vae_dtype, None, name="vae_dtype"))
        if self.vae_decoder not in VAE_DECODERS:
            raise UserError(f"vae_decoder must be one of {', '.join(VAE_DECODERS)}, got {self.vae_decoder!r}")
        _check_memory_options(self)
        if self.cache is not None:  # parsed here: a bad setting fails before anything loads
            from fastdit.cache.config import as_cache_config

            object.__setattr__(self, "cache", as_cache_config(self.cache))
        for name in ("loras", "loras_2"):
            value = getattr(self, name)
            if value is None:
                value = ()
            elif isinstance(value, (str, os.PathLike)) or (
                    isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], (int, float))):
                value = (value,)  # one LoRA on its own: a path or (path, scale)
            object.__setattr__(self, name, tuple(value))
        if self.lora_mode not in LORA_MODES:
            raise LoraError(f"lora_mode must be one of {', '.join(LORA_MODES)}, got {self.lora_mode!r}")
        if not isinstance(self.lora_strict, bool):
            raise LoraError(f"lora_strict must be True or False, got {self.lora_strict!r}")
        if isinstance(self.timesteps, list):
            object.__setattr__(self, "timesteps", tuple(self.timesteps))
        object.__setattr__(self, "parallel", parallel_option(self.parallel))  # canonical form
        object.__setattr__(self, "quantize", parse_quantize(self.quantize))  # InputError if bad

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "LoadOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"fastdit.load: unknown option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        return cls(**kwargs)


def vae_decoder_choice(choice: str, vae) -> str:
    """The ``vae_decoder`` the decode runs: ``choice`` itself, or for "auto" the platform's
    :attr:`~fastdit.platforms.base.Platform.vae_decoder_default` when the VAE sits on that
    platform's device (else "diffusers"), and "diffusers" for a VAE fastdit's decode does not
    cover (:func:`fastdit.models.wan.vae.supports`; logged with the reason)."""
    if choice != "auto":
        return choice
    from fastdit.models.wan.vae import supports
    from fastdit.platforms import current_platform

    platform = current_platform()
    device = next(vae.parameters()).device
    chosen = platform.vae_decoder_default if device.type == platform.device_type else "diffusers"
    if chosen != "diffusers" and (reason := supports(vae)) is not None:
        log.info("vae_decoder auto: diffusers' vae.decode (fastdit's decode cannot run this VAE: %s)", reason)
        return "diffusers"
    return chosen


def check_flow_shift(value: Any) -> float:
    """A positive finite flow shift (nan, inf or <= 0 give an all-NaN video)."""
    from fastdit.errors import InputError

    try:
        shift = float(value)
    except (TypeError, ValueError):
        raise InputError(f"flow_shift must be a number, got {value!r}", field="flow_shift") from None
    if not math.isfinite(shift) or shift <= 0:
        raise InputError(f"flow_shift must be a positive finite number, got {value!r}", field="flow_shift")
    return shift


def quiet_libraries() -> None:
    """Keep transformers' and diffusers' loading bars and warnings off the terminal (the CLI
    unless -v, a server's workers)."""
    try:
        from diffusers.utils import logging as dlogging
        from transformers.utils import logging as tlogging
    except ImportError:
        return
    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()


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
    except CheckpointError as exc:  # the loader names the tensor; say which component too
        raise CheckpointError(f"cannot load {component} from {spec.root / component}: {exc}") from None
    except ModelFolderError:
        raise
    except (KeyboardInterrupt, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        if is_out_of_memory(exc):  # the machine's limit, not the folder's fault
            raise
        raise ModelFolderError(f"cannot load {component} from {spec.root / component}: "
                               f"{first_line(exc)}") from exc


def _reject_missing(info: dict[str, Any] | None) -> None:
    """The library's own loading report: a missing or mis-shaped tensor would be random."""
    info = info or {}
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"its weights lack tensor(s) {shown}")  # _loading names the component
    if mismatched:
        first = mismatched[0][0] if isinstance(mismatched[0], (tuple, list)) else mismatched[0]
        raise CheckpointError(f"tensor {first!r} does not have the shape its config.json expects")


def load_transformer(spec: ModelSpec, subfolder: str, device: torch.device, dtype: torch.dtype):
    from fastdit.models.wan import WanTransformer

    with _loading(spec, subfolder):
        return WanTransformer.from_pretrained(str(spec.root), dtype=dtype, device=device,
                                              subfolder=subfolder)  # in eval mode


def load_expert(spec: ModelSpec, weights: ExpertWeights, device: torch.device, dtype: torch.dtype):
    """One transformer: the folder's ``weights.subfolder`` or the checked single file, then its
    LoRAs (merged, or as runtime adapters) with the plans made when they were checked."""
    if weights.file is not None:
        from fastdit.models.wan.single_file import load_transformer_file

        model = load_transformer_file(weights.file, dtype=dtype, device=device)
    else:
        model = load_transformer(spec, weights.subfolder, device, dtype)
    if weights.loras:
        from fastdit.models.wan.lora import apply_loras

        apply_loras(model, weights.loras, mode=weights.mode, strict=weights.strict, plans=weights.plans)
    return model


def make_scheduler(spec: ModelSpec, kind: str = "unipc", flow_shift: float | None = None):
    """The checkpoint's flow-matching UniPC scheduler (``flow_shift`` from the checkpoint unless
    given), or flow-match Euler with the same shift. UniPC is fastdit's
    :class:`~fastdit.schedulers.unipc.FlowUniPCScheduler` when it covers the configuration (every
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
    """This machine's device (the platform's: a forced ``FASTDIT_PLATFORM`` whose device is
    missing is a :class:`DeviceError`)."""
    from fastdit.platforms import current_platform

    platform = current_platform()
    try:
        return platform.device()
    except (RuntimeError, AssertionError) as exc:
        raise DeviceError(f"the {platform.name} platform (FASTDIT_PLATFORM) has no usable device on this "
                          f"machine: {first_line(exc)}") from None


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device to run on: as given (``cuda`` resolved to the current index), else this
    machine's GPU, else the CPU. An unknown or unavailable device is a :class:`DeviceError`."""
    if device is None:
        device = default_device()
        given = str(device)
    elif isinstance(device, (str, torch.device)):
        given = str(device)
        try:
            device = torch.device(device)
        except (RuntimeError, ValueError):
            raise DeviceError(f"unknown device {given!r} (try cuda, cuda:0 or cpu)") from None
    else:
        raise DeviceError(f"device must be a string or a torch.device, got {type(device).__name__}")
    if device.type != "cpu":
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        try:
            ok = bool(available()) if callable(available) else False
        except (RuntimeError, AssertionError):
            ok = False
        if not ok:
            raise DeviceError(f"device {given!r} is not available on this machine")
        count = getattr(backend, "device_count", lambda: 1)()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {given!r} does not exist (this machine has {count})")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | None, *,
                  name: str = "dtype") -> torch.dtype:
    """A floating-point dtype (a ``torch.dtype`` or a name such as ``"bf16"``); None: bf16 on a
    GPU, fp32 on the CPU. fp16 on the CPU is refused (:class:`DeviceError`), as in the CLI."""
    if dtype is None:
        return torch.float32 if device is None or device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPE_NAMES:
            raise DeviceError(f"{name} must be one of {', '.join(DTYPE_NAMES)} or a torch dtype, got {dtype!r}")
        dtype = DTYPE_NAMES[dtype.lower()]
    if not isinstance(dtype, torch.dtype):
        raise DeviceError(f"{name} must be a torch dtype or a name such as 'bf16', got {type(dtype).__name__}")
    if not dtype.is_floating_point or dtype.itemsize < 2:
        raise DeviceError(f"{name} must be a floating-point dtype (float32, bfloat16, float16), got {dtype}")
    if device is not None and device.type == "cpu" and dtype == torch.float16:
        raise DeviceError(f"{name} float16 is not supported on the CPU (use float32 or bfloat16)")
    return dtype


def load_pipeline(cls, path: str | os.PathLike | ModelSpec, device: torch.device | str | None,
                  dtype: torch.dtype | None, options: LoadOptions, variant: Variant | None = None):
    """Load a diffusers-format Wan folder (or Hub id) into ``cls`` (a pipeline class). ``dtype``
    defaults to bf16 on a GPU and fp32 on the CPU. ``variant``: what
    :func:`~fastdit.pipelines.variants.plan_variant` returned for ``options`` (with ``path``
    the spec it returned), when the caller checked them already."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    from fastdit.distributed.pipeline import resolve_parallel
    from fastdit.pipelines.limits import device_budget
    from fastdit.pipelines.preflight import check_components
    from fastdit.platforms import current_platform

    start = time.perf_counter()
    spec = path if isinstance(path, ModelSpec) else inspect_model(path, check_files=options.check_files)
    if device is not None and not isinstance(device, torch.device):
        resolve_device(device)  # a bad name or an absent device: a DeviceError, before anything else
    parallel = resolve_parallel(options.parallel, spec, device, vae_tiling=options.vae_tiling)  # weights: none yet
    device = parallel.device if parallel.world_size > 1 else resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if options.cache is not None:  # the cache's settings against this model, before any weights
        from fastdit.cache.wiring import check_cache

        check_cache(options.cache, spec)
    # presets, transformer files and LoRAs: checked (headers only) before anything loads
    if variant is None:
        spec, variant = plan_variant(spec, options)
    for line in variant.summary():
        log.info("%s", line)
    if options.check_files:
        check_components(spec)  # every tensor name and shape, before any weights load
    spec.device_budget = device_budget(spec, device, dtype, offload=options.offload,
                                       vae_tiling=options.vae_tiling)
    offload = options.offload
    plan = plan_for_load(spec, device, dtype, options)  # None: no memory option asks for one
    if plan is not None:
        offload = plan.pipeline_offload
    elif offload == "auto":
        offload = _auto_offload(spec, device, dtype)
    root = str(spec.root)
    home = torch.device("cpu") if offload == "model" or (plan and plan.encoders == "cpu") else device

    with _loading(spec, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
    place = {} if home.type == "cpu" else {"device_map": {"": home}}  # straight to the GPU
    text_encoder = image_encoder = image_processor = None
    if parallel.is_writer:  # the writer encodes the prompt (and CLIP image) for every rank
        with _loading(spec, "text_encoder"):
            text_encoder, info = UMT5EncoderModel.from_pretrained(
                root, subfolder="text_encoder", **_dtype_kw(dtype), output_loading_info=True, **place)
            _reject_missing(info)
            text_encoder.to(home).eval()
        if spec.has_clip:
            image_processor, image_encoder = _load_clip(spec, dtype, home, place)
    with _loading(spec, "vae"):
        from diffusers import AutoencoderKLWan

        vae, info = AutoencoderKLWan.from_pretrained(root, subfolder="vae", output_loading_info=True,
                                                     **diffusers_dtype_kw(options.vae_dtype or dtype))
        _reject_missing(info)
        vae.to(device).eval()
        if options.vae_tiling or (plan is not None and plan.vae_tiling):
            vae.enable_tiling()
        vae = current_platform().optimize_vae(vae)
        decoder_choice = vae_decoder_choice(options.vae_decoder, vae)
        if decoder_choice != "diffusers":  # checked before the transformer loads
            from fastdit.models.wan.vae import decoder_for

            try:
                decoder_for(vae, decoder_choice)
            except ValueError as exc:
                raise ModelFolderError(f"vae_decoder={options.vae_decoder!r} cannot decode with "
                                       f"{spec.root / 'vae'}: {exc}") from None
    with _loading(spec, "scheduler"):
        if variant.few_step is not None:
            sched = variant.few_step.scheduler(spec.scheduler_config.get("num_train_timesteps", 1000))
        else:
            sched = make_scheduler(spec, options.scheduler, options.flow_shift)
    if plan is not None and plan.uses_runtime:  # blocks in host memory, streamed
        if any(e.loras and e.mode != "merge" for e in variant.experts):
            raise LoraError("runtime LoRA mode is not combined with streamed block offload or fp8 "
                            "weight storage; use lora_mode='merge' (the LoRAs merge into the weights "
                            "as they load, before the fp8 quantisation)")
        transformer, transformer_2 = load_streamed_experts(spec, device, dtype, plan, options, variant)
    else:
        transformer = load_expert(spec, variant.expert("transformer"), device, dtype)
        transformer_2 = None
        if spec.two_experts:
            second_home = device if offload == "none" else torch.device("cpu")
            transformer_2 = load_expert(spec, variant.expert("transformer_2"), second_home, dtype)
    reports = apply_precision_to(options.quantize, device, transformer, transformer_2)
    pipe = cls(spec, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=sched,
               transformer=transformer, transformer_2=transformer_2, image_encoder=image_encoder,
               image_processor=image_processor, device=device, dtype=dtype, offload=offload,
               cache=options.cache, options=options, variant=variant, parallel=parallel)
    pipe.precision, pipe.precision_reports = options.quantize, reports
    pipe.memory_plan = plan
    current_platform().synchronize()
    pipe.load_seconds = time.perf_counter() - start
    log.debug("loaded %s in %.1f s (offload=%s)", spec.describe(), pipe.load_seconds, offload)
    return pipe


def apply_precision_to(precision, device: torch.device, *transformers) -> list:
    """Apply the precision setting to each transformer (the experts) that is there, once, for
    running on ``device``; the reports (weight memory, providers), one per transformer. The
    exact setting leaves the models untouched."""
    if precision.exact:
        return []
    from fastdit.quant.apply import apply_precision
    from fastdit.quant.weights import format_bytes
    from fastdit.runtime import StreamedTransformer

    # a streamed transformer's model is converted: its block Linears hold the host store's
    # e4m3 weights and scales (runtime_weights), so they only switch to fp8 products
    models = [m.model if isinstance(m, StreamedTransformer) else m for m in transformers if m is not None]
    reports = [apply_precision(model, precision, device, log_report=False) for model in models]
    log.info("%s; transformer weights %s%s", reports[0].describe().rsplit("; transformer", 1)[0],
             format_bytes(sum(r.weight_bytes for r in reports)),
             f" ({len(reports)} experts)" if len(reports) > 1 else "")
    return reports


def _load_clip(spec: ModelSpec, dtype: torch.dtype, home: torch.device, place: dict):
    """Wan2.1 I2V: the CLIP image processor (the class model_index.json names, as diffusers
    loads it) and vision encoder."""
    import transformers
    from transformers import CLIPVisionModel

    root = str(spec.root)
    entry = spec.components.get("image_processor") or ("transformers", "CLIPImageProcessor")
    with _loading(spec, "image_processor"):
        processor_cls = getattr(transformers, entry[1], transformers.CLIPImageProcessor)
        image_processor = processor_cls.from_pretrained(root, subfolder="image_processor")
    with _loading(spec, "image_encoder"):
        image_encoder, info = CLIPVisionModel.from_pretrained(root, subfolder="image_encoder", **_dtype_kw(dtype),
                                                              output_loading_info=True, **place)
        _reject_missing(info)
        image_encoder.to(home).eval()
    return image_processor, image_encoder


def _auto_offload(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> str:
    """'none' when all weights (plus room for activations) fit in free device memory."""
    from fastdit.platforms import current_platform

    if device.type == "cpu":
        return "none"
    info = current_platform().mem_get_info(device)
    if info is None:
        return "none"
    return choose_offload(spec, dtype, info[0])


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


# ---------------------------------------------------------------------------------------
# Memory: the budget, the plan and streamed transformers (fastdit.pipelines.memory, runtime)
# ---------------------------------------------------------------------------------------
def _check_memory_options(options: LoadOptions) -> None:
    """Normalise and check the memory options (sizes to bytes); bad values are UserErrors."""
    from fastdit.errors import UserError
    from fastdit.pipelines.memory import ENCODER_CHOICES, parse_size
    from fastdit.runtime.fp8 import check_weights

    if options.max_gpu_memory is not None:
        object.__setattr__(options, "max_gpu_memory", parse_size(options.max_gpu_memory))
    check_weights(options.weights)
    if options.text_encoder_device not in ENCODER_CHOICES:
        raise UserError(f"text_encoder_device must be one of {', '.join(ENCODER_CHOICES)}, got "
                        f"{options.text_encoder_device!r}")
    if options.prefetch is not None and (isinstance(options.prefetch, bool) or not isinstance(options.prefetch, int)
                                         or options.prefetch < 0):
        raise UserError(f"prefetch must be an integer >= 0, got {options.prefetch!r}")
    if options.plan_video is not None:
        video = tuple(options.plan_video)
        if len(video) != 3 or not all(isinstance(v, int) and v > 0 for v in video):
            raise UserError(f"plan_video must be (height, width, num_frames), got {options.plan_video!r}")
        object.__setattr__(options, "plan_video", video)


def _memory_asked(options: LoadOptions) -> bool:
    return (options.max_gpu_memory is not None or options.weights != "dense" or options.offload == "blocks"
            or options.text_encoder_device != "auto" or options.prefetch is not None)


def plan_for_load(spec: ModelSpec, device: torch.device, dtype: torch.dtype, options: LoadOptions):
    """The :class:`~fastdit.pipelines.memory.MemoryPlan` for this load, printed; None when no
    memory option asks for one and ``offload`` is not "auto" on a GPU (the plain path)."""
    from fastdit.pipelines import memory

    asked = _memory_asked(options)
    if not asked and (options.offload != "auto" or device.type == "cpu"):
        return None
    try:
        sizes = memory.sizes_for_spec(spec, dtype, runtime_weights(options), vae_dtype=options.vae_dtype)
    except ValueError as exc:  # a transformer config the planner cannot read
        if not asked:
            return None  # the plain path reports it when it loads the transformer
        raise ModelFolderError(f"cannot plan memory for {spec.root}: {first_line(exc)}") from None
    video = memory.VideoSize(*(options.plan_video or (spec.defaults.height, spec.defaults.width,
                                                      spec.defaults.num_frames)))
    budget, source = memory.device_budget(options.max_gpu_memory, device)
    if budget is None:  # the CPU: no memory to plan for; stream every block when asked to
        budget, source = memory.NO_LIMIT, f"{device.type}: memory not known"
        if options.offload == "blocks":
            plan = memory.plan_memory(sizes, budget, video, offload="blocks", prefetch=options.prefetch,
                                      encoders=options.text_encoder_device, budget_source=source)
            plan = dataclasses.replace(plan, resident_blocks=0, experts_on_device=1,
                                       prefetch=1 if options.prefetch is None else options.prefetch)
            log.info("%s", plan.describe())
            return plan
    plan = memory.plan_memory(sizes, budget, video, offload=options.offload, prefetch=options.prefetch,
                              encoders=options.text_encoder_device,
                              vae_tiling=True if options.vae_tiling else None, budget_source=source)
    log.info("%s", plan.describe())
    return plan


def load_streamed_experts(spec: ModelSpec, device: torch.device, dtype: torch.dtype, plan,
                          options: LoadOptions, variant=None):
    """The transformer (and Wan2.2's second expert) loaded lazily into host stores, streaming by
    ``plan``; experts that take turns share one device pool. An expert given as one file
    (``transformer=``, checked already) is read from it; its LoRAs (merge mode, checked
    already) merge into its tensors as they are read."""
    from fastdit.runtime.lazy import load_streamed

    def load(subfolder: str, **kwargs):
        expert = variant.expert(subfolder) if variant is not None else None
        merger = _lora_merger(expert, device)  # reads the LoRA files: its LoraError stays one
        file = expert.file if expert is not None else None  # a checked single-file transformer
        with _loading(spec, subfolder):
            model = load_streamed(spec.root, stream_plan, device, dtype=dtype, subfolder=subfolder,
                                  weights=weights, dequantize=dequantize, transform=merger, file=file,
                                  **kwargs)
        if merger is not None:
            merger.finish()
        return model

    stream_plan = plan.stream_plan()
    weights = runtime_weights(options)
    if weights != options.weights:
        log.info("quantize=%s: the streamed block weights are stored in e4m3 (the fp8 products take "
                 "them as they are), not %s", options.quantize.spec(), options.weights)
    # fp8 products take the e4m3 weights and scales as they are; otherwise a block's weights are
    # dequantised once into the pool's dense buffer
    dequantize = "linear" if options.quantize.linear == "fp8" else "slot"
    first = load("transformer")
    second = None
    if spec.two_experts:
        shared = first.streamer.region if plan.experts_on_device == 1 else None
        second = load("transformer_2", region=shared)
    return first, second


def _lora_merger(expert, device: torch.device):
    """The expert's LoRAs as a :class:`~fastdit.models.wan.lora.LoraMerger` (None without)."""
    if expert is None or not expert.loras:
        return None
    from fastdit.models.wan import WanTransformer
    from fastdit.models.wan.lora import LoraMerger

    with torch.device("meta"):
        shape_model = WanTransformer(expert.config)  # parameter names and shapes, no memory
    return LoraMerger(shape_model, expert.loras, strict=expert.strict, plans=expert.plans, device=device)


def runtime_weights(options: LoadOptions) -> str:
    """How the runtime path (streamed or fp8-stored blocks) stores the block weights:
    ``options.weights``, except that fp8 products (``quantize`` with ``linear="fp8"``) always
    take e4m3 weights with per-channel scales, the same quantiser's output in both options, so
    their host store is fp8 whatever ``weights`` says."""
    return "fp8" if options.quantize.linear == "fp8" else options.weights

"""Loading a Wan pipeline: the options (:class:`LoadOptions`), each component, the scheduler,
and the choice of what stays in device memory.

    pipe = fastdit.load(path, device="cuda", dtype=torch.bfloat16, offload="auto")

Every failure while reading a component becomes one :class:`~fastdit.errors.ModelFolderError`
line naming the component; only I/O and format errors are wrapped (a bug keeps its traceback).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from fastdit.errors import CheckpointError, ModelFolderError, first_line
from fastdit.pipelines.spec import ModelSpec, inspect_model
from fastdit.schedulers.unipc import FlowUniPCScheduler

log = logging.getLogger("fastdit.pipelines")

SCHEDULERS = ("unipc", "euler")
OFFLOAD_MODES = ("auto", "none", "experts", "model")


@dataclass(frozen=True)
class LoadOptions:
    """How :func:`fastdit.load` builds a pipeline (every keyword option of ``load``).

    ``scheduler``: "unipc" (the checkpoint's) or "euler"; ``flow_shift``: overrides the
    checkpoint's; ``offload``: "none" keeps everything on the device, "experts" only the active
    Wan2.2 expert, "model" also moves the encoders there only while they run, "auto" picks by
    free device memory; ``vae_dtype``: the VAE's dtype (default: the pipeline's);
    ``vae_tiling``: decode in tiles; ``check_files``: check every weight file's header first;
    ``parallel``: the multi-GPU layout, a :class:`~fastdit.distributed.layout.ParallelConfig`, a
    dict of its fields, a spec ``"ulysses=2,ring=2,cfg=2,vae=4"`` or ``"auto"`` (None: one
    process, or ``"auto"`` when launched with several; see ``docs/distributed.md``).
    """

    scheduler: str = "unipc"
    flow_shift: float | None = None
    offload: str = "auto"
    vae_dtype: torch.dtype | None = None
    vae_tiling: bool = False
    check_files: bool = True
    parallel: Any = None

    def __post_init__(self) -> None:
        from fastdit.distributed.layout import parallel_option

        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {self.offload!r}")
        object.__setattr__(self, "parallel", parallel_option(self.parallel))  # canonical form

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "LoadOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"fastdit.load: unknown option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        return cls(**kwargs)


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
        raise ModelFolderError(f"cannot load {component} from {spec.root / component}: "
                               f"{first_line(exc)}") from exc


def load_transformer(spec: ModelSpec, subfolder: str, device: torch.device, dtype: torch.dtype):
    from fastdit.models.wan import WanTransformer

    with _loading(spec, subfolder):
        return WanTransformer.from_pretrained(str(spec.root), dtype=dtype, device=device,
                                              subfolder=subfolder)  # in eval mode


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
    from fastdit.platforms import current_platform

    return current_platform().device()


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device to run on: as given (``cuda`` resolved to the current index), else this
    machine's GPU, else the CPU."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def load_pipeline(cls, path: str | os.PathLike | ModelSpec, device: torch.device | str | None,
                  dtype: torch.dtype | None, options: LoadOptions):
    """Load a diffusers-format Wan folder (or Hub id) into ``cls`` (a pipeline class). ``dtype``
    defaults to bf16 on a GPU and fp32 on the CPU."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    from fastdit.distributed.pipeline import resolve_parallel
    from fastdit.platforms import current_platform

    start = time.perf_counter()
    spec = path if isinstance(path, ModelSpec) else inspect_model(path, check_files=options.check_files)
    parallel = resolve_parallel(options.parallel, spec, device, vae_tiling=options.vae_tiling)  # weights: none yet
    device = parallel.device if parallel.world_size > 1 else resolve_device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    offload = options.offload
    if offload == "auto":
        offload = _auto_offload(spec, device, dtype)
    root = str(spec.root)
    home = torch.device("cpu") if offload == "model" else device

    with _loading(spec, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
    place = {} if home.type == "cpu" else {"device_map": {"": home}}  # straight to the GPU
    text_encoder = image_encoder = image_processor = None
    if parallel.is_writer:  # the writer encodes the prompt (and CLIP image) for every rank
        with _loading(spec, "text_encoder"):
            text_encoder = UMT5EncoderModel.from_pretrained(root, subfolder="text_encoder", **_dtype_kw(dtype),
                                                            **place)
            text_encoder.to(home).eval()
        if spec.has_clip:
            image_processor, image_encoder = _load_clip(spec, dtype, home, place)
    with _loading(spec, "vae"):
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(root, subfolder="vae",
                                               **diffusers_dtype_kw(options.vae_dtype or dtype))
        vae.to(device).eval()
        if options.vae_tiling:
            vae.enable_tiling()
        vae = current_platform().optimize_vae(vae)
    with _loading(spec, "scheduler"):
        sched = make_scheduler(spec, options.scheduler, options.flow_shift)
    transformer = load_transformer(spec, "transformer", device, dtype)
    transformer_2 = None
    if spec.two_experts:
        second_home = device if offload == "none" else torch.device("cpu")
        transformer_2 = load_transformer(spec, "transformer_2", second_home, dtype)
    pipe = cls(spec, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=sched,
               transformer=transformer, transformer_2=transformer_2, image_encoder=image_encoder,
               image_processor=image_processor, device=device, dtype=dtype, offload=offload,
               parallel=parallel)
    current_platform().synchronize()
    pipe.load_seconds = time.perf_counter() - start
    log.debug("loaded %s in %.1f s (offload=%s)", spec.describe(), pipe.load_seconds, offload)
    return pipe


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
        image_encoder = CLIPVisionModel.from_pretrained(root, subfolder="image_encoder", **_dtype_kw(dtype),
                                                        **place)
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

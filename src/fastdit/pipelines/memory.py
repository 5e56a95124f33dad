"""The memory planner: from a budget, decide what stays on the device, what streams, where the
encoders live and whether the VAE decodes in tiles.

    plan = plan_memory(sizes, parse_size("24GB"), VideoSize(480, 832, 81))
    print(plan.describe())

The device holds, phase by phase (the plan must fit the largest)::

    text     = fixed + DiT + text encoder + its activations     (encoders on the device)
    denoise  = fixed + DiT + transformer activations
    decode   = fixed + DiT + VAE decode peak (tiled or not)
    fixed    = VAE weights + reserve                DiT = embeddings/head + r blocks + pool

``r`` is the number of resident blocks; the pool is ``prefetch + 1`` staging block buffers when
blocks stream (plus, with fp8 storage, one dense buffer a block is dequantised into). The idle
Wan2.2 expert stays in host memory unless both experts fit. Estimates (bytes):

* transformer activations: ``11 * B * L * D`` for bf16 (``5.5 * B * L * D * itemsize``), from
  the H100 measurements at 480x832x81 (L = 32,760 tokens), batch 1, FFN chunks of 8192 tokens:
  Wan2.1-1.3B (D = 1536) 0.55 GB and 14B (D = 5120) 1.69 GB (the formula gives 0.55 and 1.85).
  Guidance runs both branches as one batch: B = 2.
* VAE decode: ``bpp * H * W + 2 * output`` untiled, ``bpp * 256^2 + 3 * output`` tiled
  (diffusers' 256-pixel tiles), output = ``F * 3 * H * W * itemsize``; ``bpp`` is the peak of
  live tensors per output pixel measured on diffusers' AutoencoderKLWan in bf16 (it decodes one
  latent frame at a time): 10.2 KB for the Wan2.1 VAE, 11.0 KB for the Wan2.2 VAE.
* encoders: their weights, plus 5% (at most 0.5 GB) for activations.
* reserve: 5% of the budget, at most 1.5 GB (allocator fragmentation, library workspaces).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastdit.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: parsing a budget stays cheap (the CLI)
    import torch

log = logging.getLogger("fastdit.pipelines")

GB = 10**9
NO_LIMIT = 1 << 62  # the budget of a device whose memory is not known (the CPU)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")

ACTIVATION_FACTOR = 5.5  # bytes per (batch row x token x channel) per byte of the dtype
VAE_BYTES_PER_PIXEL = {16: 10_200, 48: 11_000}  # by latent channels (Wan2.1 / Wan2.2 VAE), bf16
VAE_TILE = 256
ENCODERS = ("device", "while-encoding", "cpu")
ENCODER_CHOICES = ("auto", "device", "cpu")
PREFETCH_CHOICES = (2, 1, 0)
# Released checkpoints' component sizes (parameters), for plans without a folder.
UMT5_XXL_PARAMS = 5_680_000_000
CLIP_H_PARAMS = 632_000_000
VAE_PARAMS = {16: 126_892_531, 48: 704_688_668}


def parse_size(value: Any, what: str = "max_gpu_memory") -> int:
    """Bytes from an int or a string with a unit: ``"24GB"`` (10^9), ``"24GiB"`` (2^30),
    ``"500MB"``, ``"1.5 TB"``. Zero, negative, unitless or unreadable values are UserErrors."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{what} must be a size such as 24GB or 24GiB, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else ""
        if match and float(match.group(1)) == 0:
            size = 0
        elif not match or unit not in _UNITS:
            raise UserError(f"{what} must be a size such as 24GB, 16GiB or 500MB, got {value!r}")
        else:
            size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise UserError(f"{what} must be more than 0, got {value!r}")
    return size


def format_size(nbytes: int) -> str:
    return f"{nbytes / GB:.2f} GB" if nbytes >= GB / 10 else f"{nbytes / 1e6:.1f} MB"


@dataclass(frozen=True)
class VideoSize:
    """The largest video the plan must hold: height, width (pixels) and frames."""

    height: int
    width: int
    num_frames: int

    def tokens(self, patch: tuple[int, int, int], stride_t: int = 4, stride_s: int = 8) -> int:
        """Transformer tokens: latent frames x latent rows x columns, over the patch size."""
        frames = (self.num_frames - 1) // stride_t + 1
        return (frames // patch[0]) * (self.height // stride_s // patch[1]) * (self.width // stride_s // patch[2])

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.num_frames}"


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of each component as the pipeline would hold it (see :func:`sizes_for_config`)."""

    num_blocks: int
    block_bytes: int  # one block in its storage format (the host store's and a slot's size)
    dense_bytes: int  # fp8 storage: the dense buffer a block dequantises into; else 0
    other_bytes: int  # one transformer's embeddings and head
    dim: int
    patch: tuple[int, int, int]
    dtype_bytes: int
    experts: int = 1
    text_encoder_bytes: int = 0
    image_encoder_bytes: int = 0
    vae_bytes: int = 0
    vae_dtype_bytes: int = 2
    latent_channels: int = 16
    vae_stride_t: int = 4
    vae_stride_s: int = 8
    weights: str = "dense"

    @property
    def transformer_bytes(self) -> int:
        return self.num_blocks * self.block_bytes + self.other_bytes

    def activation_bytes(self, video: VideoSize, batch: int) -> int:
        tokens = video.tokens(self.patch, self.vae_stride_t, self.vae_stride_s)
        return int(ACTIVATION_FACTOR * self.dtype_bytes * batch * tokens * self.dim)

    def vae_decode_bytes(self, video: VideoSize, tiled: bool) -> int:
        per_pixel = VAE_BYTES_PER_PIXEL.get(self.latent_channels, max(VAE_BYTES_PER_PIXEL.values()))
        per_pixel = per_pixel * self.vae_dtype_bytes // 2
        output = video.num_frames * 3 * video.height * video.width * self.vae_dtype_bytes
        if tiled:
            side = min(VAE_TILE, video.height), min(VAE_TILE, video.width)
            return per_pixel * side[0] * side[1] + 3 * output
        return per_pixel * video.height * video.width + 2 * output


def _encoder_activation(weights: int) -> int:
    return min(GB // 2, weights // 20)


@dataclass(frozen=True)
class MemoryPlan:
    """What the pipeline keeps where under ``budget`` (see the module docstring)."""

    budget: int
    video: VideoSize
    batch: int
    weights: str
    num_blocks: int
    resident_blocks: int
    prefetch: int
    encoders: str  # "device" (resident) | "while-encoding" | "cpu"
    vae_tiling: bool
    experts: int
    experts_on_device: int
    peaks: dict[str, int] = field(default_factory=dict)
    parts: dict[str, int] = field(default_factory=dict)
    budget_source: str = "max_gpu_memory"

    @property
    def streams(self) -> bool:
        return self.resident_blocks < self.num_blocks

    @property
    def uses_runtime(self) -> bool:
        """Whether the transformer goes through :mod:`fastdit.runtime` (streaming or fp8)."""
        return self.streams or self.weights == "fp8"

    @property
    def pipeline_offload(self) -> str:
        """The pipeline's own mode: encoders moved while running ("model"), the idle expert in
        host memory ("experts"), or everything where it was loaded ("none")."""
        if self.encoders == "while-encoding":
            return "model"
        return "experts" if self.experts > self.experts_on_device else "none"

    def stream_plan(self):
        from fastdit.runtime.streamer import StreamPlan

        return StreamPlan.spread(self.num_blocks, self.resident_blocks,
                                 self.prefetch if self.streams else 0)

    def describe(self) -> str:
        where = {"device": "on the device", "while-encoding": "on the device only while encoding",
                 "cpu": "on the CPU"}[self.encoders]
        if self.streams:
            dit = (f"{self.resident_blocks} of {self.num_blocks} blocks resident, "
                   f"{self.num_blocks - self.resident_blocks} streamed from host memory "
                   f"(prefetch {self.prefetch})")
        else:
            dit = f"all {self.num_blocks} blocks resident"
        if self.experts == 2:
            dit += ("; both experts on the device" if self.experts_on_device == 2
                    else "; the idle expert in host memory")
        peaks = ", ".join(f"{k} {format_size(v)}" for k, v in self.peaks.items())
        parts = ", ".join(f"{k} {format_size(v)}" for k, v in self.parts.items() if v)
        budget = "no limit" if self.budget >= NO_LIMIT else format_size(self.budget)
        return "\n".join([
            f"memory plan for {budget} ({self.budget_source}), video {self.video}, "
            f"batch {self.batch}:",
            f"  transformer: {dit}; weights {self.weights}",
            f"  text/image encoders: {where}",
            f"  VAE decode: {'tiled' if self.vae_tiling else 'not tiled'}",
            f"  estimated peaks: {peaks}",
            f"  ({parts})"])


# ---------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------
def _phases(sizes: ModelSizes, budget: int, video: VideoSize, batch: int, *, resident: int,
            slots: int, encoders: str, tiled: bool, experts_on: int) -> tuple[dict, dict]:
    streams = resident < sizes.num_blocks
    pool = (slots * sizes.block_bytes if streams else 0) + sizes.dense_bytes
    dit = experts_on * (sizes.other_bytes + resident * sizes.block_bytes + pool)
    reserve = min(int(0.05 * budget), 3 * GB // 2)
    fixed = sizes.vae_bytes + reserve + dit
    text, image = sizes.text_encoder_bytes, sizes.image_encoder_bytes
    kept = text + image if encoders == "device" else 0
    act = sizes.activation_bytes(video, batch)
    decode = sizes.vae_decode_bytes(video, tiled)
    peaks = {}
    if encoders != "cpu":
        peaks["text"] = fixed + kept + (0 if encoders == "device" else text) + _encoder_activation(text)
        if image:
            peaks["image"] = fixed + kept + (0 if encoders == "device" else image) + _encoder_activation(image)
    peaks["denoise"] = fixed + kept + act
    peaks["decode"] = fixed + kept + decode
    parts = {"transformer": dit, "pool": experts_on * pool, "activations": act, "VAE decode": decode,
             "encoders kept": kept, "reserve": reserve}
    return peaks, parts


def plan_memory(sizes: ModelSizes, budget: int, video: VideoSize, *, guided: bool = True,
                offload: str = "auto", prefetch: int | None = None, encoders: str = "auto",
                vae_tiling: bool | None = None, budget_source: str = "max_gpu_memory") -> MemoryPlan:
    """The best plan that fits ``budget`` bytes, or a :class:`UserError` when none does.

    ``offload``: "auto" / "blocks" (anything may stream), "none" (everything on the device),
    "experts" (the idle expert in host memory), "model" (also the encoders while idle);
    ``encoders``: "auto", "device" (on the device, at least while encoding) or "cpu";
    ``prefetch``: streamed blocks copied ahead (None: the planner's choice);
    ``vae_tiling``: None lets the planner tile when an untiled decode does not fit.
    Preference, in order: encoders not on the CPU, an untiled VAE, no streaming, prefetch >= 1,
    more resident blocks, encoders kept on the device, both experts resident, deeper prefetch.
    """
    if encoders not in ENCODER_CHOICES:
        raise UserError(f"text_encoder_device must be one of {', '.join(ENCODER_CHOICES)}, got {encoders!r}")
    batch = 2 if guided else 1
    n = sizes.num_blocks
    stream_ok = offload in ("auto", "blocks")
    experts_options = {"none": [sizes.experts], "experts": [1], "model": [1]}.get(
        offload, sorted({sizes.experts, 1}, reverse=True))
    placements = {"auto": ["device", "while-encoding", "cpu"], "device": ["device", "while-encoding"],
                  "cpu": ["cpu"]}[encoders]
    if offload == "model":
        placements = [p for p in placements if p != "device"]
    elif offload in ("none", "experts"):
        placements = [p for p in placements if p != "while-encoding"]
    tilings = [False, True] if vae_tiling is None else [bool(vae_tiling)]
    prefetches = PREFETCH_CHOICES if prefetch is None else (int(prefetch),)

    best, best_key, smallest = None, None, None
    for experts_on in experts_options:
        for placement in placements:
            for tiled in tilings:
                for depth in prefetches:
                    for resident in range(n, -1, -1) if stream_ok and experts_on == 1 else (n,):
                        slots = min(depth + 1, n - resident)
                        peaks, parts = _phases(sizes, budget, video, batch, resident=resident, slots=slots,
                                               encoders=placement, tiled=tiled, experts_on=experts_on)
                        peak = max(peaks.values())
                        if smallest is None or peak < smallest[0]:
                            smallest = (peak, peaks, parts)
                        if peak > budget:
                            continue
                        streams = resident < n
                        key = (placement != "cpu", not tiled, not streams, depth >= 1 or not streams,
                               resident, placement == "device", experts_on, depth if streams else 0)
                        if best_key is None or key > best_key:
                            best_key = key
                            best = MemoryPlan(budget=budget, video=video, batch=batch, weights=sizes.weights,
                                              num_blocks=n, resident_blocks=resident,
                                              prefetch=depth if streams else 0, encoders=placement,
                                              vae_tiling=tiled, experts=sizes.experts,
                                              experts_on_device=experts_on, peaks=peaks, parts=parts,
                                              budget_source=budget_source)
                        break  # fewer resident blocks only score lower
    if best is None:
        raise UserError(_refusal(sizes, budget, video, batch, offload, smallest))
    return best


def _refusal(sizes: ModelSizes, budget: int, video: VideoSize, batch: int, offload: str, smallest) -> str:
    peak, peaks, parts = smallest
    worst = max(peaks, key=peaks.get)
    detail = ", ".join(f"{k} {format_size(v)}" for k, v in parts.items() if v)
    hints = ["a larger --max-gpu-memory", "a smaller video"]
    if offload not in ("auto", "blocks"):
        hints.insert(0, "--offload blocks (or auto)")
    if sizes.weights != "fp8":
        hints.append("--weights fp8")
    return (f"a {format_size(budget)} GPU memory budget cannot hold this model at {video} (batch {batch}): "
            f"even the smallest plan needs {format_size(peak)} in its {worst} phase ({detail}); "
            f"try {', '.join(hints)}")


# ---------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------
def sizes_for_config(config, dtype: torch.dtype, weights: str = "dense", *, experts: int = 1,
                     text_encoder_params: int = 0, image_encoder_params: int = 0, vae_params: int = 0,
                     vae_dtype: torch.dtype | None = None, latent_channels: int = 16,
                     vae_stride_s: int = 8, vae_stride_t: int = 4,
                     encoder_dtype: torch.dtype | None = None) -> ModelSizes:
    """Sizes of a pipeline around a transformer of ``config`` (a :class:`WanConfig`), its block
    layout measured exactly on the meta device (alignment included)."""
    import torch

    from fastdit.models.wan import WanTransformer
    from fastdit.models.wan.checkpoint import parameter_dtype
    from fastdit.runtime.host import quantized_names
    from fastdit.runtime.model import block_layout

    with torch.device("meta"):
        model = WanTransformer(config)
    layout = block_layout(model.blocks[0], lambda n: parameter_dtype(f"blocks.0.{n}", dtype), weights)
    pairs = quantized_names(layout)
    dense = sum(math.prod(layout.tensors[w].shape) for w, _ in pairs) * dtype.itemsize
    other = sum(p.numel() * parameter_dtype(name, dtype).itemsize for name, p in model.named_parameters()
                if not name.startswith("blocks."))
    enc = (encoder_dtype or dtype).itemsize
    vae_dtype = vae_dtype or dtype
    return ModelSizes(num_blocks=config.num_layers, block_bytes=layout.nbytes, dense_bytes=int(dense * 1.01),
                      other_bytes=other, dim=config.dim, patch=tuple(config.patch_size),
                      dtype_bytes=dtype.itemsize, experts=experts, text_encoder_bytes=text_encoder_params * enc,
                      image_encoder_bytes=image_encoder_params * enc, vae_bytes=vae_params * vae_dtype.itemsize,
                      vae_dtype_bytes=vae_dtype.itemsize, latent_channels=latent_channels,
                      vae_stride_s=vae_stride_s, vae_stride_t=vae_stride_t, weights=weights)


def sizes_for_named(name: str, dtype: torch.dtype | None = None, weights: str = "dense") -> ModelSizes:
    """Sizes of a released checkpoint by name (``Wan2.1-T2V-14B``, ``Wan2.2-T2V-A14B``, ...),
    from its transformer config and the released encoders' parameter counts (default bf16)."""
    import torch

    from fastdit.models.wan.configs import get_config

    dtype = torch.bfloat16 if dtype is None else dtype
    config = get_config(name)
    wan22_vae = name.startswith("Wan2.2-TI2V")
    return sizes_for_config(config, dtype, weights, experts=2 if "A14B" in name else 1,
                            text_encoder_params=UMT5_XXL_PARAMS,
                            image_encoder_params=CLIP_H_PARAMS if config.image_dim else 0,
                            vae_params=VAE_PARAMS[48 if wan22_vae else 16],
                            latent_channels=48 if wan22_vae else 16, vae_stride_s=16 if wan22_vae else 8)


def sizes_for_spec(spec, dtype: torch.dtype, weights: str = "dense",
                   vae_dtype: torch.dtype | None = None, encoders_dtype: torch.dtype | None = None) -> ModelSizes:
    """Sizes of a model folder (:class:`~fastdit.pipelines.spec.ModelSpec`): the transformer's
    config, the encoders' and VAE's element counts from their weight headers."""
    from fastdit.models.wan import WanConfig
    from fastdit.pipelines.spec import check_weights

    counts = dict(spec.param_counts)
    for component in ("text_encoder", "image_encoder", "vae"):
        if component not in counts and spec.components.get(component) and (spec.root / component).is_dir():
            counts[component] = check_weights(spec.root / component)[1]
    config = WanConfig.from_diffusers_config(spec.transformer_config)
    return sizes_for_config(config, dtype, weights, experts=2 if spec.two_experts else 1,
                            text_encoder_params=counts.get("text_encoder", 0),
                            image_encoder_params=counts.get("image_encoder", 0) if spec.has_clip else 0,
                            vae_params=counts.get("vae", 0), vae_dtype=vae_dtype,
                            latent_channels=spec.latent_channels, vae_stride_s=spec.vae_stride_spatial,
                            vae_stride_t=spec.vae_stride_temporal, encoder_dtype=encoders_dtype)


def device_budget(max_gpu_memory: int | None, device: torch.device) -> tuple[int | None, str]:
    """The budget in bytes and where it came from: ``max_gpu_memory`` (checked against the
    device's total memory), else the device's free memory, else None (unknown: the CPU)."""
    from fastdit.platforms import current_platform

    info = current_platform().mem_get_info(device) if device.type != "cpu" else None
    if max_gpu_memory is None:
        return (info[0], "free device memory") if info else (None, "unknown")
    if info is not None:
        free, total = info
        if max_gpu_memory > total:
            raise UserError(f"max_gpu_memory {format_size(max_gpu_memory)} is larger than the device's "
                            f"{format_size(total)} ({device})")
        if max_gpu_memory > free:
            log.warning("max_gpu_memory %s is more than the %s free on %s now", format_size(max_gpu_memory),
                        format_size(free), device)
    return max_gpu_memory, "max_gpu_memory"

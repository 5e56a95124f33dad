"""How big a request may be: the model's range, and a cheap estimate of work and memory.

Checked before anything heavy runs (:func:`check_size`, called by
:func:`~fastdit.pipelines.request.resolve_request`); ``force=True`` (``--force``) skips it.

* **Range.** Wan's rotary position tables cover ``rope_max_seq_len`` (1024) positions per axis
  of the latent patch grid; diffusers and the official code cannot go beyond it, so neither
  does fastdit: ``num_frames <= 4 * (R * p_t) - 3``, ``height <= R * 8 * p_h`` (16,384 px and
  4,093 frames for Wan2.1).
* **Estimate** (formulas, no model run; :func:`estimate`). With ``L`` video tokens, ``S`` text
  tokens, width ``D``, FFN width ``F`` and ``N`` blocks, one transformer forward costs
  ``N * (12 L D^2 + 4 S D^2 + 4 L D F + 4 L^2 D + 4 L S D)`` FLOPs, run ``steps * branches``
  times (2 branches with guidance); the VAE decoder's 3x3x3 convolutions add
  ``sum over levels of voxels * convs * 54 * C^2``. Peak memory is the resident weights plus
  the larger of the transformer's activations (``~6 L D`` values per branch and one FFN chunk)
  and the VAE decode (``3 * 4 * H * W * C_top`` values per chunk of frames, or per 256x256
  tile with tiling) with the decoded video. Both are lower bounds on purpose: a request is
  refused only when even the optimistic figures do not fit.
* **Device.** Memory is the GPU's total memory, or the host's RAM (and any ``ulimit``) on the
  CPU; the rate is an optimistic FLOP/s figure (:data:`GPU_FLOPS`, :data:`CPU_FLOPS_PER_CORE`
  per core). A request is refused when its memory exceeds the device's or its time exceeds
  :data:`MAX_SECONDS`; past :data:`WARN_SECONDS` a notice says how long it will take at least.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from fastdit.errors import ResourceError
from fastdit.pipelines.spec import ModelSpec

MAX_SECONDS = 24 * 3600  # refuse a request whose optimistic time is longer than a day
WARN_SECONDS = 10 * 60  # say how long a request takes at least when it is longer than this
GPU_FLOPS = 2.0e15  # above any GPU's dense bf16 rate today (H200: 0.99e15)
CPU_FLOPS_PER_CORE = 1.0e11  # above one core's fp32 FMA peak (AVX-512 at 3 GHz: 0.96e11)
VAE_TILE = 256  # diffusers' Wan VAE tile (tile_sample_min_height/width)
_GIB = 2**30


@dataclass(frozen=True)
class DeviceBudget:
    """What a device offers a request: ``memory_bytes`` (GPU total memory, host RAM on the CPU;
    None when unknown), ``host_bytes`` (host RAM for the decoded video; None when unknown or
    the same as ``memory_bytes``), an optimistic ``flops`` rate, the weights that stay on the
    device while the transformer runs (``resident_bytes``), activation width ``dtype_bytes``."""

    device: str
    memory_bytes: int | None
    host_bytes: int | None
    flops: float
    resident_bytes: int = 0
    dtype_bytes: int = 2
    vae_tiling: bool = False


@dataclass(frozen=True)
class Estimate:
    """The cost of one request: ``tokens`` per transformer forward (``grid`` F x H x W latent
    patches), ``forwards`` run, total ``flops``, optimistic ``seconds`` (None without a device),
    peak ``device_bytes`` and ``host_bytes`` (the decoded video on the host; 0 on the CPU),
    and the ``parts`` of the device peak in bytes."""

    tokens: int
    grid: tuple[int, int, int]
    forwards: int
    flops: float
    seconds: float | None
    device_bytes: int
    host_bytes: int
    parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        time = f", at least {format_seconds(self.seconds)}" if self.seconds is not None else ""
        return (f"{self.tokens:,} tokens x {self.forwards} forwards, {self.flops / 1e12:,.0f} TFLOP{time}, "
                f"about {self.device_bytes / _GIB:.1f} GiB")


# ---------------------------------------------------------------------------------------
# The model's numbers
# ---------------------------------------------------------------------------------------
def _transformer_dims(spec: ModelSpec) -> dict[str, Any]:
    t = spec.transformer_config
    heads = int(t.get("num_attention_heads", t.get("num_heads", 12)))
    head_dim = int(t.get("attention_head_dim", t.get("dim", 1536) // max(heads, 1)))
    return {"dim": heads * head_dim, "ffn": int(t.get("ffn_dim", 8960)),
            "layers": int(t.get("num_layers", 30)), "rope": int(t.get("rope_max_seq_len", 1024)),
            "image_tokens": 257 if spec.has_clip else 0}


def latent_grid(spec: ModelSpec, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The transformer's patch grid ``(F, H, W)`` for a video; its product is the token count."""
    pt, ph, pw = spec.patch_size
    s, st = spec.vae_stride_spatial, spec.vae_stride_temporal
    frames = (num_frames - 1) // st + 1
    return (-(-frames // pt), height // (s * ph), width // (s * pw))


def model_range(spec: ModelSpec) -> tuple[int, int, int]:
    """The largest ``(num_frames, height, width)`` the model's position tables cover."""
    rope = _transformer_dims(spec)["rope"]
    pt, ph, pw = spec.patch_size
    s, st = spec.vae_stride_spatial, spec.vae_stride_temporal
    return (st * (rope * pt - 1) + 1, rope * s * ph, rope * s * pw)


def check_range(spec: ModelSpec, num_frames: int, height: int, width: int) -> None:
    """Raise :class:`ResourceError` when a size is beyond :func:`model_range`."""
    rope = _transformer_dims(spec)["rope"]
    limits = model_range(spec)
    axes = ("latent frames", "latent rows", "latent columns")
    for name, value, limit, axis in zip(("num_frames", "height", "width"), (num_frames, height, width),
                                        limits, axes):
        if value > limit:
            raise ResourceError(f"{name} {value} is beyond this model's range: at most {limit} (its "
                                f"position tables cover {rope} {axis}); force=True runs it anyway")


# ---------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------
def transformer_flops(spec: ModelSpec, tokens: int, text_tokens: int) -> float:
    """FLOPs of one transformer forward for one branch (the formula in the module docstring)."""
    d = _transformer_dims(spec)
    dim, ffn, L, S, img = d["dim"], d["ffn"], tokens, text_tokens, d["image_tokens"]
    block = (12 * L * dim**2 + 4 * (S + img) * dim**2 + 4 * L * dim * ffn + 4 * L * L * dim
             + 4 * L * (S + img) * dim)
    return float(d["layers"] * block)


def _vae_levels(spec: ModelSpec, num_frames: int, height: int, width: int):
    """Per decoder level (lowest resolution first): (frames, pixels per frame, channels)."""
    v = spec.vae_config
    base = int(v.get("decoder_base_dim") or v.get("base_dim", 96))
    mult = list(v.get("dim_mult") or [1, 2, 4, 4])
    down = list(v.get("temperal_downsample") or [False, True, True])
    patch = int(v.get("patch_size") or 1)
    levels = len(mult) - 1
    channels = [base * m for m in mult[::-1]]
    frames = (num_frames - 1) // spec.vae_stride_temporal + 1
    out = []
    for i, c in enumerate(channels):
        scale = 2 ** (levels - i)
        out.append((frames, (height // patch // scale) * (width // patch // scale), c))
        if i < len(down) and down[::-1][i]:
            frames = frames * 2 - 1  # causal temporal upsampling
    return out, int(v.get("num_res_blocks", 2))


def vae_flops(spec: ModelSpec, num_frames: int, height: int, width: int) -> float:
    """FLOPs of the VAE decoder's 3x3x3 convolutions (rough: norms, attention and the
    up-sampling convolutions are left out)."""
    levels, res_blocks = _vae_levels(spec, num_frames, height, width)
    total = 0.0
    for i, (frames, pixels, c) in enumerate(levels):
        convs = 2 * (res_blocks + 1) + (4 if i == 0 else 0)  # the mid block's two resblocks
        total += frames * pixels * convs * 54.0 * c * c
    return total


def vae_peak_bytes(spec: ModelSpec, num_frames: int, height: int, width: int, dtype_bytes: int,
                   tiling: bool) -> int:
    """Activations of one chunk of frames at the decoder's top level (three live tensors): the
    first latent frame decodes to one frame, each later one to ``vae_stride_temporal``."""
    if tiling:
        height, width = min(height, VAE_TILE), min(width, VAE_TILE)
    levels, _ = _vae_levels(spec, 1, height, width)
    chunk = 1 if num_frames == 1 else spec.vae_stride_temporal
    return int(max(chunk * pixels * c * 3 * dtype_bytes for _, pixels, c in levels))


def estimate(spec: ModelSpec, num_frames: int, height: int, width: int, steps: int, guided: bool,
             text_tokens: int = 512, budget: DeviceBudget | None = None) -> Estimate:
    """The work and peak memory of a request (lower bounds; see the module docstring)."""
    grid = latent_grid(spec, num_frames, height, width)
    tokens = grid[0] * grid[1] * grid[2]
    branches = 2 if guided else 1
    forwards = steps * branches
    flops = forwards * transformer_flops(spec, tokens, text_tokens) + vae_flops(spec, num_frames, height, width)
    width_bytes = budget.dtype_bytes if budget is not None else 2
    d = _transformer_dims(spec)
    s, st = spec.vae_stride_spatial, spec.vae_stride_temporal
    latent_values = spec.latent_channels * ((num_frames - 1) // st + 1) * (height // s) * (width // s)
    transformer = branches * tokens * d["dim"] * width_bytes * 6 + branches * min(tokens, 8192) * d["ffn"] * width_bytes
    video = num_frames * height * width * 3
    vae = vae_peak_bytes(spec, num_frames, height, width, width_bytes, budget.vae_tiling if budget else False)
    parts = {"weights": budget.resident_bytes if budget else 0, "latents": latent_values * 4 * 6,
             "transformer": transformer, "vae decode": vae + video * width_bytes}
    on_cpu = budget is None or budget.device.startswith("cpu")
    host = video * 4 * 2  # the float32 frames (and one copy while they are made)
    device_bytes = parts["weights"] + parts["latents"] + max(parts["transformer"], parts["vae decode"])
    if on_cpu:
        device_bytes += host
        parts["video"] = host
        host = 0
    seconds = flops / budget.flops if budget is not None else None
    return Estimate(tokens, grid, forwards, flops, seconds, int(device_bytes), int(host), parts)


def check_size(spec: ModelSpec, num_frames: int, height: int, width: int, steps: int, guided: bool,
               text_tokens: int, budget: DeviceBudget | None) -> list[str]:
    """Refuse a request beyond the model's range or, with a ``budget``, one that cannot fit the
    device or take less than :data:`MAX_SECONDS` (:class:`ResourceError`); returns notices."""
    check_range(spec, num_frames, height, width)
    if budget is None:
        return []
    est = estimate(spec, num_frames, height, width, steps, guided, text_tokens, budget)
    _check_memory(est, budget)
    if est.seconds is not None and est.seconds > MAX_SECONDS:
        raise ResourceError(f"this request would take at least {format_seconds(est.seconds)} on {budget.device} "
                            f"({est.tokens:,} tokens, {est.forwards} transformer forwards, "
                            f"{est.flops / 1e12:,.0f} TFLOP at an optimistic {budget.flops / 1e12:g} TFLOP/s; "
                            f"the limit is {format_seconds(MAX_SECONDS)}): try fewer steps or a smaller "
                            "size; force=True runs it anyway")
    if est.seconds is not None and est.seconds > WARN_SECONDS:
        return [f"a large request: {est.describe()} on {budget.device} (estimate)"]
    return []


def _check_memory(est: Estimate, budget: DeviceBudget) -> None:
    if budget.memory_bytes is not None and est.device_bytes > budget.memory_bytes:
        largest = max((k for k in est.parts if k != "weights"), key=lambda k: est.parts[k])
        hint = "--vae-tiling, " if largest == "vae decode" and not budget.vae_tiling else ""
        raise ResourceError(f"this request needs at least {est.device_bytes / _GIB:.1f} GiB on {budget.device} "
                            f"({largest} {est.parts[largest] / _GIB:.1f} GiB; {est.tokens:,} tokens), more than "
                            f"its {budget.memory_bytes / _GIB:.1f} GiB: try {hint}a smaller height, width or "
                            "num_frames; force=True runs it anyway")
    if budget.host_bytes is not None and est.host_bytes > budget.host_bytes:
        raise ResourceError(f"the decoded video needs at least {est.host_bytes / _GIB:.1f} GiB of host memory, "
                            f"more than this machine's {budget.host_bytes / _GIB:.1f} GiB: try a smaller "
                            "height, width or num_frames; force=True runs it anyway")


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


# ---------------------------------------------------------------------------------------
# The device
# ---------------------------------------------------------------------------------------
def host_memory_bytes() -> int | None:
    """Physical RAM, lowered by a finite ``ulimit -v`` / ``-d``; None when unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        total = None
    try:
        import resource

        for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
            soft = resource.getrlimit(limit)[0]
            if soft != resource.RLIM_INFINITY and soft > 0:
                total = soft if total is None else min(total, soft)
    except (ImportError, OSError, ValueError):
        pass
    return total


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def device_budget(spec: ModelSpec, device, dtype, *, offload: str = "auto", vae_tiling: bool = False) -> DeviceBudget:
    """The :class:`DeviceBudget` of ``device`` (a ``torch.device``) for ``spec`` in ``dtype``."""
    import torch

    width = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    weights = {name: n * width for name, n in spec.param_counts.items()}
    experts = [weights.get(k, 0) for k in ("transformer", "transformer_2")]
    host = host_memory_bytes()
    if device.type == "cpu":
        return DeviceBudget(str(device), host, None, cpu_cores() * CPU_FLOPS_PER_CORE,
                            sum(weights.values()), width, vae_tiling)
    from fastdit.platforms import current_platform

    try:
        info = current_platform().mem_get_info(device)
    except (RuntimeError, AssertionError):
        info = None
    resident = max(experts) if offload in ("auto", "model", "experts") else sum(weights.values())
    return DeviceBudget(str(device), info[1] if info else None, host, GPU_FLOPS, resident, width, vae_tiling)

"""A generation request: what the user asked for (:class:`GenerationRequest`) and the same with
every default filled in and every value checked (:class:`ResolvedRequest`).

The CLI, the Python API and the server all build a ``GenerationRequest`` and resolve it with
:func:`resolve_request` against the model's :class:`~fastdit.pipelines.spec.ModelSpec` before
anything heavy is loaded, so one set of checks and messages serves every front end. Every
number must be finite and in range; sizes are bounded by the model's range and, when the spec
knows its device (:attr:`ModelSpec.device_budget`), by an estimate of time and memory
(:mod:`fastdit.pipelines.limits`); ``force=True`` skips those size limits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from fastdit.errors import InputError
from fastdit.pipelines.spec import MAX_FPS, ModelSpec

log = logging.getLogger("fastdit.pipelines")

if TYPE_CHECKING:
    from fastdit.schedulers.presets import FewStep

OUTPUT_TYPES = ("np", "pt", "latent")
#: Wan's text encoder is used with 512 tokens; longer sequences only cost memory.
MAX_SEQUENCE_LENGTH = 512
#: torch.Generator.manual_seed takes [-2^63, 2^64) (negative seeds wrap around).
SEED_RANGE = (-(2**63), 2**64)


@dataclass(frozen=True)
class GenerationRequest:
    """One video to generate. ``None`` means the model's default.

    ``image``: a PIL image, a path or an array (I2V: required; TI2V-5B: optional). ``seed``:
    an integer in [-2^63, 2^64) (None draws a random one, recorded in the result).
    ``output_type``: ``"np"`` (float32 ``[F, H, W, 3]`` in [0, 1]), ``"pt"`` (``[F, 3, H, W]``)
    or ``"latent"``. ``force``: run a request beyond the model's range or the device estimate.

    The sampler, for this generation only (see :mod:`fastdit.schedulers.presets`):
    ``timesteps`` (e.g. ``[1000, 750, 500, 250]`` or ``"1000,750,500,250"``) runs the few-step
    Euler sampler on that list; ``flow_shift`` is the shift of the few-step schedule, or of the
    model's own scheduler when there is none; ``boundary_step`` is the first step of Wan2.2's
    low-noise expert on a few-step schedule. Unset, they come from the pipeline (a preset
    given to :func:`fastdit.load`) or the model.
    """

    prompt: str
    negative_prompt: str | None = None
    image: Any = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    seed: int | None = 0
    max_sequence_length: int = 512
    fps: int | None = None
    output_type: str = "np"
    force: bool = False
    # Opt-in features that change the output (docs/caching.md):
    cache: Any = None  # a step cache: "NAME[:k=v,...]", a CacheConfig; None: the pipeline's; "none": off
    guidance_until: float | None = None  # guidance on the first fraction of the steps only
    cfg_zero_star: bool = False  # CFG-Zero*: zero-init first steps, optimised guidance scale
    zero_init_steps: int | None = None  # CFG-Zero*'s zero-velocity first steps (default 1)
    timesteps: Any = None
    flow_shift: float | None = None
    boundary_step: int | None = None

    def replace(self, **changes: Any) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ResolvedRequest:
    """A generation request with every default resolved and every value checked.

    ``notices``: what the user may not expect (a negative prompt that guidance does not use,
    a long run), already logged by :func:`resolve_request`."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    max_sequence_length: int
    fps: int
    notices: tuple[str, ...] = field(default=(), compare=False)
    cache: Any = None  # the CacheConfig this generation runs with (checked), or None
    guidance_until: float | None = None
    cfg_zero_star: bool = False
    zero_init_steps: int = 1
    few_step: FewStep | None = None  # the few-step schedule, or None: the model's scheduler
    flow_shift: float | None = None  # without few_step: the shift for the model's scheduler

    @property
    def guided(self) -> bool:
        """Classifier-free guidance is on when ``guidance_scale > 1`` (as in diffusers)."""
        return self.guidance_scale > 1.0


# ---------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------
def as_int(name: str, value: Any) -> int:
    """An integer: ``int``, numpy/torch integers (0-d tensors too) or an integral float."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be an integer, got {value!r}", field=name)
    if isinstance(value, float):
        if not value.is_integer():
            raise InputError(f"{name} must be an integer, got {value!r}", field=name)
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        pass
    item = getattr(value, "item", None)  # a 0-d integer tensor or array
    if callable(item) and getattr(value, "ndim", None) == 0:
        inner = item()
        if isinstance(inner, numbers.Integral) and not isinstance(inner, bool):
            return int(inner)
    raise InputError(f"{name} must be an integer, got {value!r}", field=name)


def as_float(name: str, value: Any) -> float:
    """A finite number."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}", field=name) from None
    if not math.isfinite(out):
        raise InputError(f"{name} must be a finite number, got {value!r}", field=name)
    return out


def check_seed(seed: Any) -> None:
    """``seed``: None, a ``torch.Generator``, or an integer in :data:`SEED_RANGE`."""
    if seed is None or type(seed).__name__ == "Generator":
        return
    value = as_int("seed", seed)
    lo, hi = SEED_RANGE
    if not lo <= value < hi:
        raise InputError(f"seed must be an integer in [-2^63, 2^64), got {value}", field="seed")


def check_fps(fps: Any, name: str = "fps") -> int:
    value = as_int(name, fps)
    if not 1 <= value <= MAX_FPS:
        raise InputError(f"{name} must be between 1 and {MAX_FPS}, got {value}", field=name)
    return value


def _check_text(name: str, text: Any) -> None:
    if not isinstance(text, str):
        raise InputError(f"{name} must be a string, got {type(text).__name__}", field=name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8 (argv, files)
        raise InputError(f"{name} is not valid UTF-8 (character {exc.start}: {text[exc.start]!r})",
                         field=name) from None


def check_texts(request: GenerationRequest) -> None:
    """The prompt and negative prompt are valid strings; the output type is known."""
    _check_text("prompt", request.prompt)
    if request.negative_prompt is not None:
        _check_text("negative_prompt", request.negative_prompt)
    if request.output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be 'np', 'pt' or 'latent', got {request.output_type!r}",
                         field="output_type")


# ---------------------------------------------------------------------------------------
# Resolving
# ---------------------------------------------------------------------------------------
def resolve_request(spec: ModelSpec, request: GenerationRequest | None = None, *, height=None,
                    width=None, num_frames=None, num_inference_steps=None, guidance_scale=None,
                    guidance_scale_2=None, max_sequence_length=512, image=None,
                    has_image: bool | None = None, seed: Any = 0, force: bool = False,
                    notify: Callable[[str], None] | None = log.warning,
                    default_cache: Any = None, timesteps=None, flow_shift=None,
                    boundary_step=None) -> ResolvedRequest:
    """Fill in the model's defaults and check every value; raises :class:`InputError`
    (:class:`~fastdit.errors.ResourceError` for a request too large, unless ``force``); each
    names the request keyword it is about in ``field`` (a bad cache setting is a
    :class:`~fastdit.errors.CacheError`, field ``"cache"``).

    Give a :class:`GenerationRequest`, or the fields as keywords (``has_image`` stands for an
    image that was checked elsewhere). ``notify`` gets each notice (default: a log warning).
    ``default_cache``: the pipeline's cache (``load(..., cache=...)``), used when the request
    sets none. A few-step schedule (the request's ``timesteps``, else the pipeline's preset in
    ``spec.defaults.few_step``) fixes the step count to the length of its list, and guidance
    defaults to off.
    """
    negative_prompt = None
    if request is not None:
        check_texts(request)
        height, width, num_frames = request.height, request.width, request.num_frames
        num_inference_steps, guidance_scale = request.num_inference_steps, request.guidance_scale
        guidance_scale_2, max_sequence_length = request.guidance_scale_2, request.max_sequence_length
        image, seed, force, negative_prompt = request.image, request.seed, request.force, request.negative_prompt
        timesteps, flow_shift, boundary_step = request.timesteps, request.flow_shift, request.boundary_step
    d = spec.defaults
    few_step, model_shift = _sampler(spec, timesteps, flow_shift, boundary_step)
    if few_step is not None and d.few_step is None and guidance_scale is None:
        guidance_scale = few_step.guidance_scale  # few-step models run without guidance
        if spec.two_experts and guidance_scale_2 is None:
            guidance_scale_2 = few_step.guidance_scale
    height = as_int("height", d.height if height is None else height)
    width = as_int("width", d.width if width is None else width)
    num_frames = as_int("num_frames", d.num_frames if num_frames is None else num_frames)
    if few_step is not None:
        if num_inference_steps is not None and as_int("num_inference_steps", num_inference_steps) != (
                few_step.num_inference_steps):
            raise InputError(f"num_inference_steps={num_inference_steps} does not match the "
                             f"{few_step.num_inference_steps} timesteps of the few-step schedule "
                             f"({','.join(map(str, few_step.timesteps))}); leave it unset",
                             field="num_inference_steps")
        num_inference_steps = few_step.num_inference_steps
    steps = as_int("num_inference_steps", d.num_inference_steps if num_inference_steps is None
                   else num_inference_steps)
    seq = as_int("max_sequence_length", max_sequence_length)
    _check_sizes(spec, height, width, num_frames)
    if steps < 1:
        raise InputError(f"num_inference_steps must be at least 1, got {steps}", field="num_inference_steps")
    if not 1 <= seq <= MAX_SEQUENCE_LENGTH:
        raise InputError(f"max_sequence_length must be between 1 and {MAX_SEQUENCE_LENGTH}, got {seq}",
                         field="max_sequence_length")
    check_seed(seed)
    g, g2 = _guidance(spec, guidance_scale, guidance_scale_2)
    _check_image_mode(spec, (image is not None) if has_image is None else has_image)
    fps = d.fps if request is None or request.fps is None else check_fps(request.fps)

    notices: list[str] = []
    if not force:
        from fastdit.pipelines.limits import check_size

        notices += check_size(spec, num_frames, height, width, steps, g > 1.0, seq, spec.device_budget)
    if negative_prompt and g <= 1.0:
        notices.append(f"guidance_scale {g:g} turns guidance off: the negative prompt is not used "
                       "(guidance_scale > 1 uses it)")
    if notify is not None:
        for notice in notices:
            notify(notice)
    resolved = ResolvedRequest(height, width, num_frames, steps, g, g2, seq, int(fps), tuple(notices),
                               few_step=few_step, flow_shift=model_shift)
    has_image = (image is not None) if has_image is None else has_image
    return _opt_in(spec, request, resolved, has_image, default_cache)


def _check_sizes(spec: ModelSpec, height: int, width: int, num_frames: int) -> None:
    m = spec.spatial_multiple
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % m:
            raise InputError(f"{name} must be a positive multiple of {m} for this model, got {value}",
                             field=name)
    st = spec.vae_stride_temporal
    if num_frames < 1 or (num_frames - 1) % st:
        lo = max(1, (num_frames - 1) // st * st + 1)
        raise InputError(f"num_frames must be {st}k+1 (1, {1 + st}, {1 + 2 * st}, ..., 81), got {num_frames}"
                         f" (try {lo} or {lo + st})", field="num_frames")


def _check_image_mode(spec: ModelSpec, has_image: bool) -> None:
    if spec.image_mode == "required" and not has_image:
        raise InputError(f"{spec.name or 'this model'} is an image-to-video model: an image is required",
                         field="image")
    if spec.image_mode == "none" and has_image:
        raise InputError(f"{spec.name or 'this model'} is a text-to-video model: it takes no image",
                         field="image")


def _opt_in(spec: ModelSpec, request: GenerationRequest | None, resolved: ResolvedRequest,
            has_image: bool, default_cache: Any) -> ResolvedRequest:
    """The step cache and the guidance shortcuts of a request, checked (docs/caching.md)."""
    value = None if request is None else request.cache
    cache = None
    if value is not None or default_cache is not None:
        from fastdit.cache.wiring import resolve_cache

        cache = resolve_cache(value, default_cache, spec, num_steps=resolved.num_inference_steps,
                              height=resolved.height, width=resolved.width, has_image=has_image)
    until, zero_star, zero_steps = None, False, 1
    if request is not None:
        until, zero_star = request.guidance_until, request.cfg_zero_star
        if until is not None:
            until = as_float("guidance_until", until)
            if not 0.0 <= until <= 1.0:
                raise InputError(f"guidance_until must be a fraction of the steps in [0, 1], got {until:g}",
                                 field="guidance_until")
        if not isinstance(zero_star, bool):
            raise InputError(f"cfg_zero_star must be True or False, got {zero_star!r}", field="cfg_zero_star")
        if request.zero_init_steps is not None:
            zero_steps = as_int("zero_init_steps", request.zero_init_steps)
            if not zero_star:
                raise InputError("zero_init_steps is a CFG-Zero* setting: it needs cfg_zero_star",
                                 field="zero_init_steps")
            if not 0 <= zero_steps <= resolved.num_inference_steps:
                raise InputError(f"zero_init_steps must be in 0..{resolved.num_inference_steps} "
                                 f"(the steps), got {zero_steps}", field="zero_init_steps")
        if (until is not None or zero_star) and not resolved.guided:
            what = "guidance_until" if until is not None else "cfg_zero_star"
            raise InputError(f"{what} changes classifier-free guidance, which is off "
                             f"(guidance_scale {resolved.guidance_scale:g} <= 1)", field=what)
    return dataclasses.replace(resolved, cache=cache, guidance_until=until, cfg_zero_star=zero_star,
                               zero_init_steps=zero_steps)


def _sampler(spec: ModelSpec, timesteps, flow_shift, boundary_step) -> tuple[FewStep | None, float | None]:
    """``(few-step schedule or None, shift for the model's own scheduler or None)``."""
    from fastdit.schedulers.presets import positive_shift, resolve_few_step

    few_step = resolve_few_step(spec.defaults.few_step, timesteps, flow_shift, boundary_step,
                                two_experts=spec.two_experts)
    if few_step is not None or flow_shift is None:
        return few_step, None
    return None, positive_shift(flow_shift)


def _guidance(spec: ModelSpec, guidance_scale, guidance_scale_2) -> tuple[float, float | None]:
    d = spec.defaults
    if guidance_scale is None:
        g = d.guidance_scale
        g2 = guidance_scale_2 if guidance_scale_2 is not None else d.guidance_scale_2
    else:
        g, g2 = guidance_scale, guidance_scale_2
    g = as_float("guidance_scale", g)
    if g < 0:
        raise InputError(f"guidance_scale must be >= 0 (1 or less turns guidance off), got {g}",
                         field="guidance_scale")
    if spec.two_experts:
        g2 = g if g2 is None else as_float("guidance_scale_2", g2)
        if g2 < 0:
            raise InputError(f"guidance_scale_2 must be >= 0 (1 or less turns guidance off), got {g2}",
                             field="guidance_scale_2")
    elif guidance_scale_2 is not None:
        raise InputError("guidance_scale_2 is only for two-expert models (Wan2.2 A14B); "
                         f"{spec.name or 'this model'} has one transformer", field="guidance_scale_2")
    else:
        g2 = None
    return g, g2

"""A generation request: what the user asked for (:class:`GenerationRequest`) and the same with
every default filled in and every value checked (:class:`ResolvedRequest`).

The CLI, the Python API and the server all build a ``GenerationRequest`` and resolve it with
:func:`resolve_request` against the model's :class:`~fastdit.pipelines.spec.ModelSpec` before
anything heavy is loaded, so one set of checks and messages serves every front end.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fastdit.errors import InputError
from fastdit.pipelines.spec import ModelSpec

OUTPUT_TYPES = ("np", "pt", "latent")


@dataclass(frozen=True)
class GenerationRequest:
    """One video to generate. ``None`` means the model's default.

    ``image``: a PIL image, a path or an array (I2V: required; TI2V-5B: optional). ``seed``:
    an integer (None draws a random one, recorded in the result). ``output_type``: ``"np"``
    (float32 ``[F, H, W, 3]`` in [0, 1]), ``"pt"`` (``[F, 3, H, W]``) or ``"latent"``.
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

    def replace(self, **changes: Any) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ResolvedRequest:
    """A generation request with every default resolved and every value checked."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    max_sequence_length: int
    fps: int

    @property
    def guided(self) -> bool:
        """Classifier-free guidance is on when ``guidance_scale > 1`` (as in diffusers)."""
        return self.guidance_scale > 1.0


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


def check_texts(request: GenerationRequest) -> None:
    """The prompt and negative prompt are strings; the output type is known."""
    if not isinstance(request.prompt, str):
        raise InputError(f"prompt must be a string, got {type(request.prompt).__name__}")
    if request.negative_prompt is not None and not isinstance(request.negative_prompt, str):
        raise InputError(f"negative_prompt must be a string, got {type(request.negative_prompt).__name__}")
    if request.output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be 'np', 'pt' or 'latent', got {request.output_type!r}")


def resolve_request(spec: ModelSpec, request: GenerationRequest | None = None, *, height=None,
                    width=None, num_frames=None, num_inference_steps=None, guidance_scale=None,
                    guidance_scale_2=None, max_sequence_length=512, image=None,
                    has_image: bool | None = None) -> ResolvedRequest:
    """Fill in the model's defaults and check every value; raises :class:`InputError`.

    Give a :class:`GenerationRequest`, or the fields as keywords (``has_image`` stands for an
    image that was checked elsewhere).
    """
    if request is not None:
        height, width, num_frames = request.height, request.width, request.num_frames
        num_inference_steps, guidance_scale = request.num_inference_steps, request.guidance_scale
        guidance_scale_2, max_sequence_length = request.guidance_scale_2, request.max_sequence_length
        image = request.image
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
    g, g2 = _guidance(spec, guidance_scale, guidance_scale_2)

    has_image = (image is not None) if has_image is None else has_image
    if spec.image_mode == "required" and not has_image:
        raise InputError(f"{spec.name or 'this model'} is an image-to-video model: an image is required")
    if spec.image_mode == "none" and has_image:
        raise InputError(f"{spec.name or 'this model'} is a text-to-video model: it takes no image")
    fps = d.fps if request is None or request.fps is None else _as_int("fps", request.fps)
    if fps < 1:
        raise InputError(f"fps must be at least 1, got {fps}")
    return ResolvedRequest(height, width, num_frames, steps, g, g2, seq, int(fps))


def _guidance(spec: ModelSpec, guidance_scale, guidance_scale_2) -> tuple[float, float | None]:
    d = spec.defaults
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
    return g, g2

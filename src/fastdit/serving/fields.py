"""The fields of ``POST /v1/videos`` and the load options of ``fastdit serve``: one table each.

A request field is one :class:`Field` row: its API name, its kind, the ``fastdit generate``
option it mirrors and the request keyword it fills. Parsing (JSON or multipart), the web page's
form (through ``GET /v1/models``) and the docs all read :data:`FIELDS`, so a new generation
option is one new row (plus, when its kind is new, one parser in :data:`_PARSERS`).

Validation happens in two steps, both before a job is queued:

1. :func:`parse_fields`: types and ranges of each field on its own, unknown fields refused;
2. :func:`resolve_job`: the model's own rules (sizes, frame counts, steps, guidance, image),
   through the same ``resolve_request`` that ``fastdit generate`` uses.

Both raise :class:`RequestError` (an :class:`~fastdit.errors.InputError` that knows which
field it is about), which the server answers with HTTP 400.
"""

from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from fastdit.errors import InputError, UserError

SEED_LIMIT = 2**63  # seeds are 0 <= seed < 2**63 (torch.Generator.manual_seed takes 64-bit values)
RANDOM_SEED_LIMIT = 2**53  # server-made seeds stay exact as JSON numbers in JavaScript


class RequestError(InputError):
    """A request the server refuses before queueing: HTTP ``status`` with an OpenAI-style body."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value",
                 status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


@dataclass(frozen=True)
class Field:
    """One field of ``POST /v1/videos``.

    ``kind``: a key of :data:`_PARSERS` (``str``, ``int``, ``float``, ``size``, ``seconds``,
    ``object``) or ``file`` (multipart only). ``target``: the keyword of the resolved request
    it sets (None: handled by :func:`resolve_job` itself). ``cli``: the ``fastdit generate``
    option it mirrors. ``ui``: shown on the web page's form. ``test_only``: accepted only when
    the server runs with ``--test-faults``.
    """

    name: str
    kind: str
    help: str
    target: str | None = None
    cli: str | None = None
    ui: bool = False
    minimum: float | None = None
    maximum: float | None = None
    test_only: bool = False

    def describe(self) -> dict[str, Any]:
        """The row as JSON (for ``GET /v1/models`` and the web page)."""
        return {"name": self.name, "kind": self.kind, "help": self.help, "cli": self.cli, "ui": self.ui,
                "minimum": self.minimum, "maximum": self.maximum}


FIELDS: tuple[Field, ...] = (
    Field("prompt", "str", "what the video shows (required)", "prompt", "--prompt", ui=True),
    Field("negative_prompt", "str", "what it should not show", "negative_prompt", "--negative-prompt", ui=True),
    Field("input_reference", "file", "first frame (image-to-video models; multipart upload)", None, "--image",
          ui=True),
    Field("size", "size", '"WIDTHxHEIGHT", e.g. "832x480"', None, "--width/--height", ui=True),
    Field("seconds", "seconds", "length in seconds (num_frames = seconds * fps + 1, rounded to 4k+1)", None),
    Field("num_frames", "int", "frames: 4k+1 (81 is 5 s at 16 fps)", "num_frames", "--num-frames", ui=True,
          minimum=1),
    Field("steps", "int", "denoising steps", "num_inference_steps", "--steps", ui=True, minimum=1),
    Field("guidance_scale", "float", "classifier-free guidance (<= 1 turns it off)", "guidance_scale",
          "--guidance-scale", ui=True, minimum=0),
    Field("guidance_scale_2", "float", "guidance of the low-noise expert (Wan2.2 A14B)", "guidance_scale_2",
          "--guidance-scale-2", minimum=0),
    Field("seed", "int", "random seed (default: a random one, recorded in the job)", None, "--seed", ui=True,
          minimum=0, maximum=SEED_LIMIT - 1),
    Field("max_sequence_length", "int", "text tokens", "max_sequence_length", "--max-sequence-length",
          minimum=1, maximum=4096),
    Field("fps", "int", "frames per second of the mp4 (default: the model's)", None, "--fps", minimum=1,
          maximum=240),
    # opt-in features that change the output (docs/caching.md, docs/lora.md)
    Field("cache", "str", 'a step cache, e.g. "teacache:threshold=0.08" ("none": off)', "cache", "--cache",
          ui=True),
    Field("guidance_until", "float", "guidance on this fraction of the steps only", "guidance_until",
          "--guidance-until", minimum=0, maximum=1),
    Field("cfg_zero_star", "bool", "CFG-Zero*: zero velocity on the first steps, optimised scale",
          "cfg_zero_star", "--cfg-zero-star"),
    Field("zero_init_steps", "int", "CFG-Zero*'s zero-velocity first steps", "zero_init_steps",
          "--zero-init-steps", minimum=0),
    Field("timesteps", "str", 'few-step Euler on these timesteps, e.g. "1000,750,500,250"', "timesteps",
          "--timesteps"),
    Field("boundary_step", "int", "few-step schedule on Wan2.2 A14B: the low-noise expert's first step",
          "boundary_step", "--boundary-step", minimum=0),
    Field("model", "str", "the served model's id (optional; another id is refused)", None),
    Field("fault", "object", "test-only fault injection (servers started with --test-faults)", None,
          test_only=True),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}

# Keys of the test-only ``fault`` object (see fastdit.serving.worker.apply_fault).
FAULT_KEYS = {"sleep_per_step": float, "oom_at_step": int, "hang_at_step": int, "error_at_step": int}


# ---------------------------------------------------------------------------------------
# Parsing one field
# ---------------------------------------------------------------------------------------
def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _parse_str(field: Field, value: Any, from_form: bool) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{field.name} must be a string, got {_type_name(value)}", field.name, "invalid_type")
    if "\x00" in value:
        raise RequestError(f"{field.name} must not contain NUL characters", field.name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{field.name} is not valid Unicode (a lone surrogate)", field.name) from None
    return value


def _parse_int(field: Field, value: Any, from_form: bool) -> int:
    if from_form and _is_text(value):
        if not re.fullmatch(r"\s*[+-]?\d{1,20}\s*", value):
            raise RequestError(f"{field.name} must be an integer, got {value[:40]!r}", field.name, "invalid_type")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(f"{field.name} must be an integer, got {_show(value)}", field.name, "invalid_type")
    _check_range(field, value)
    return value


def _parse_float(field: Field, value: Any, from_form: bool) -> float:
    if from_form and _is_text(value):
        try:
            value = float(value)
        except ValueError:
            raise RequestError(f"{field.name} must be a number, got {value[:40]!r}", field.name,
                               "invalid_type") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{field.name} must be a number, got {_show(value)}", field.name, "invalid_type")
    value = float(value)
    if not math.isfinite(value):
        raise RequestError(f"{field.name} must be a finite number, got {value}", field.name)
    _check_range(field, value)
    return value


def _parse_size(field: Field, value: Any, from_form: bool) -> tuple[int, int]:
    """``"832x480"`` -> ``(width, height)``."""
    if not isinstance(value, str):
        raise RequestError(f'size must be a string "WIDTHxHEIGHT" such as "832x480", got {_show(value)}',
                           "size", "invalid_type")
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", value)
    if not match:
        raise RequestError(f'size must be "WIDTHxHEIGHT" such as "832x480", got {value[:40]!r}', "size")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1:
        raise RequestError(f"size must be positive, got {value!r}", "size")
    return width, height


def _parse_seconds(field: Field, value: Any, from_form: bool) -> float:
    if isinstance(value, str):  # OpenAI's API sends seconds as a string ("4")
        try:
            value = float(value)
        except ValueError:
            raise RequestError(f"seconds must be a number, got {value[:40]!r}", "seconds", "invalid_type") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"seconds must be a finite number, got {_show(value)}", "seconds", "invalid_type")
    if value <= 0 or value > 3600:
        raise RequestError(f"seconds must be more than 0 and at most 3600, got {value:g}", "seconds")
    return float(value)


def _parse_object(field: Field, value: Any, from_form: bool) -> dict[str, Any]:
    if from_form and isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise RequestError(f"{field.name} must be a JSON object", field.name, "invalid_type") from None
    if not isinstance(value, dict):
        raise RequestError(f"{field.name} must be an object, got {_type_name(value)}", field.name, "invalid_type")
    out: dict[str, Any] = {}
    for key, item in value.items():
        kind = FAULT_KEYS.get(key)
        if kind is None:
            raise RequestError(f"unknown {field.name} key {key!r} (known: {', '.join(FAULT_KEYS)})", field.name)
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0:
            raise RequestError(f"{field.name}.{key} must be a number >= 0", field.name, "invalid_type")
        out[key] = kind(item)
    return out


def _parse_bool(field: Field, value: Any, from_form: bool) -> bool:
    if from_form and isinstance(value, str) and value.strip().lower() in ("true", "1", "on", "false", "0", "off"):
        return value.strip().lower() in ("true", "1", "on")
    if not isinstance(value, bool):
        raise RequestError(f"{field.name} must be true or false, got {_show(value)}", field.name, "invalid_type")
    return value


_PARSERS: dict[str, Callable[[Field, Any, bool], Any]] = {
    "str": _parse_str, "int": _parse_int, "float": _parse_float, "size": _parse_size,
    "seconds": _parse_seconds, "object": _parse_object, "bool": _parse_bool,
}


def _check_range(field: Field, value: float) -> None:
    if field.minimum is not None and value < field.minimum:
        raise RequestError(f"{field.name} must be at least {field.minimum:g}, got {value}", field.name)
    if field.maximum is not None and value > field.maximum:
        raise RequestError(f"{field.name} must be at most {field.maximum:g}, got {value}", field.name)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", type(None): "null", bool: "a boolean", str: "a string",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return repr(value)[:40]
    return _type_name(value)


# ---------------------------------------------------------------------------------------
# Parsing a request
# ---------------------------------------------------------------------------------------
def parse_fields(raw: Mapping[str, Any], *, from_form: bool = False, test_faults: bool = False) -> dict[str, Any]:
    """Check each field of a JSON object (or of multipart form text fields) on its own.

    Returns ``{name: typed value}`` for the fields given (nulls dropped); unknown fields, test-only
    fields on a normal server and files outside ``input_reference`` are refused.
    """
    values: dict[str, Any] = {}
    for name, value in raw.items():
        field = FIELDS_BY_NAME.get(name)
        if field is None or (field.test_only and not test_faults):
            known = ", ".join(f.name for f in FIELDS if not f.test_only or test_faults)
            raise RequestError(f"unknown field {str(name)[:40]!r} (known fields: {known})", str(name)[:40],
                               "unknown_parameter")
        if field.kind == "file":
            if not from_form:
                raise RequestError("input_reference must be uploaded as a file in a multipart/form-data "
                                   "request", "input_reference", "invalid_type")
            continue  # the upload is read by the server itself
        if value is None:
            continue
        values[name] = _PARSERS[field.kind](field, value, from_form)
    if "prompt" not in values:
        raise RequestError("prompt is required", "prompt", "missing_required_parameter")
    if "seconds" in values and "num_frames" in values:
        raise RequestError("give seconds or num_frames, not both", "seconds")
    return values


@dataclass(frozen=True)
class Limits:
    """Server-side limits on what one request may ask for (beyond the model's own rules)."""

    max_prompt_chars: int = 4096
    max_side: int = 4096  # pixels, width and height
    max_frames: int = 1001
    max_steps: int = 1000


def resolve_job(spec, values: Mapping[str, Any], *, has_image: bool, model_id: str,
                limits: Limits = Limits(), rng: random.Random | None = None) -> dict[str, Any]:
    """The job's full request: every default filled in and every value checked against the model.

    Returns a JSON-able dict with the pipeline's keywords (:data:`PIPELINE_KEYWORDS`: ``prompt``,
    ``negative_prompt``, ``height``, ``width``, ``num_frames``, ``num_inference_steps``,
    ``guidance_scale``, ``guidance_scale_2``, ``max_sequence_length``, ``seed`` and the target of
    any new field) plus ``fps``, ``image`` (bool) and ``fault``. A missing seed becomes a random
    one here, so the record says which seed ran.
    """
    for name in ("prompt", "negative_prompt"):
        text = values.get(name)
        if text is not None and len(text) > limits.max_prompt_chars:
            raise RequestError(f"{name} is {len(text)} characters; this server takes at most "
                               f"{limits.max_prompt_chars}", name, "string_too_long")
    if not values["prompt"].strip():
        raise RequestError("prompt must not be empty", "prompt")
    if values.get("model") not in (None, model_id):
        raise RequestError(f"this server serves model {model_id!r}, not {values['model'][:80]!r}", "model",
                           "model_not_found")

    kwargs: dict[str, Any] = {f.target: values[f.name] for f in FIELDS if f.target and f.name in values}
    if "size" in values:
        kwargs["width"], kwargs["height"] = values["size"]
    fps = values.get("fps") or int(spec.defaults.fps)
    if "seconds" in values:
        stride = spec.vae_stride_temporal
        kwargs["num_frames"] = int(round(values["seconds"] * fps / stride)) * stride + 1
    _check_limits(kwargs, limits)
    resolved = _resolve_with_pipeline(spec, kwargs, has_image)
    seed = values.get("seed")
    if seed is None:
        seed = (rng or random.SystemRandom()).randrange(RANDOM_SEED_LIMIT)
    job = {"negative_prompt": None, **kwargs}  # every field with a target, as given (new rows included)
    job.update({key: getattr(resolved, key) for key in RESOLVED_KEYWORDS})
    job.update(seed=int(seed), fps=int(fps), image=bool(has_image), fault=values.get("fault"))
    return job


@functools.cache
def _request_fields() -> frozenset[str]:
    """The :class:`~fastdit.pipelines.request.GenerationRequest` fields a job's keywords fill."""
    import dataclasses

    from fastdit.pipelines.request import GenerationRequest

    return frozenset(f.name for f in dataclasses.fields(GenerationRequest)) - {"image", "seed"}


# What the pipeline's checker fills in and checks; with the targets of FIELDS and the seed these are
# the keywords the worker passes to the pipeline (fastdit.serving.generation).
RESOLVED_KEYWORDS = ("height", "width", "num_frames", "num_inference_steps", "guidance_scale", "guidance_scale_2",
                     "max_sequence_length")
PIPELINE_KEYWORDS = tuple(dict.fromkeys([*(f.target for f in FIELDS if f.target), *RESOLVED_KEYWORDS, "seed"]))


def _check_limits(kwargs: Mapping[str, Any], limits: Limits) -> None:
    for key in ("width", "height"):
        if kwargs.get(key, 0) > limits.max_side:
            raise RequestError(f"size: {key} {kwargs[key]} is more than this server's limit of {limits.max_side}",
                               "size")
    if kwargs.get("num_frames", 0) > limits.max_frames:
        raise RequestError(f"{kwargs['num_frames']} frames is more than this server's limit of {limits.max_frames}",
                           "num_frames")
    if kwargs.get("num_inference_steps", 0) > limits.max_steps:
        raise RequestError(f"steps {kwargs['num_inference_steps']} is more than this server's limit of "
                           f"{limits.max_steps}", "steps")


# The request keyword an InputError names (its ``field``) -> the API field it comes from.
_API_FIELD_OF = {**{f.target: f.name for f in FIELDS if f.target},
                 "height": "size", "width": "size", "image": "input_reference"}


def _resolve_with_pipeline(spec, kwargs: dict[str, Any], has_image: bool):
    """The CLI's own checks (:func:`fastdit.pipelines.request.resolve_request` on the
    :class:`~fastdit.pipelines.request.GenerationRequest` the job will run), as a RequestError
    whose ``param`` is the API field of the error's ``field``."""
    from fastdit.pipelines.request import GenerationRequest, resolve_request

    fields = {k: v for k, v in kwargs.items() if k in _request_fields() and v is not None}
    fields.setdefault("prompt", "")
    try:
        return resolve_request(spec, GenerationRequest(**fields), has_image=has_image, notify=None)
    except UserError as exc:
        param = _API_FIELD_OF.get(getattr(exc, "field", None))
        message = str(exc).replace("num_inference_steps", "steps")
        if param == "input_reference":
            message = message.replace("an image is required", "an image is required (upload it as input_reference)")
        if param == "size":
            message = f"size: {message}"
        raise RequestError(message, param) from None

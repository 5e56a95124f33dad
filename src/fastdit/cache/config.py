"""Which step cache to use and its settings: ``NAME[:key=value,...]`` -> :class:`CacheConfig`.

``--cache teacache:threshold=0.08`` on the command line, ``cache="teacache:threshold=0.08"`` or
``cache=CacheConfig.of("teacache", threshold=0.08)`` from Python. Every policy's main knob is
``threshold``, and ``threshold=0`` never reuses. A key with the suffix ``_1`` or ``_2`` applies
to one expert of a two-expert model (Wan2.2 A14B: ``_1`` the high-noise expert, ``_2`` the
low-noise one, as ``guidance_scale_2``), e.g. ``magcache:threshold=0.06,threshold_2=0.1``.
Keys the config does not set take the policy's published default for the model (see
``docs/caching.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from fastdit.errors import CacheError

EXPERT_SUFFIXES = ("_1", "_2")


@dataclass(frozen=True)
class Knob:
    """One setting of a policy: its type, its range, and whether an expert may override it."""

    name: str
    kind: type  # float | int | bool | str
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    per_expert: bool = True


_THRESHOLD = Knob("threshold", float, "reuse while the accumulated change stays below this; 0 never reuses",
                  minimum=0.0)
_MODEL = Knob("model", str, "take the constants of this published model (a KNOWN_MODELS name)",
              per_expert=False)
_BLOCK_KNOBS = (
    _THRESHOLD,
    Knob("n", int, "first blocks always computed; their residual is compared", minimum=1),
    Knob("m", int, "last blocks always computed (on the reused middle's output)", minimum=0),
    Knob("warmup", int, "first steps (of each expert) always computed", minimum=0),
    Knob("max_cached", int, "at most this many reused steps per branch (-1: no limit)", minimum=-1),
    Knob("max_continuous", int, "at most this many reused steps in a row (-1: no limit)", minimum=-1),
    Knob("taylorseer", bool, "extrapolate the cached residual to first order (TaylorSeer)"),
)

#: The policies and their knobs.
KNOBS: dict[str, tuple[Knob, ...]] = {
    "teacache": (
        _THRESHOLD,
        Knob("ret_steps", bool, "measure the modulation (temb6) instead of temb, with the "
                                "retention-step coefficients and 5 warm-up steps"),
        _MODEL,
    ),
    "magcache": (
        _THRESHOLD,
        Knob("K", int, "at most this many reused steps in a row", minimum=0),
        Knob("retention", float, "fraction of the first steps always computed", minimum=0.0, maximum=1.0),
        _MODEL,
        Knob("table", str, "a calibration file (JSON) to use instead of the published tables",
             per_expert=False),
        Knob("calibrate", str, "compute every step, record the ratios, write them to this JSON file",
             per_expert=False),
    ),
    "fbcache": _BLOCK_KNOBS,
    "dbcache": _BLOCK_KNOBS,
}

POLICY_NAMES = tuple(KNOBS)
_OFF = ("none", "off", "")


def _knob(policy: str, key: str) -> tuple[Knob, str]:
    """The knob a (possibly expert-suffixed) key names, and the key's canonical spelling."""
    base, suffix = key, ""
    for end in EXPERT_SUFFIXES:
        if key.lower().endswith(end):
            base, suffix = key[: -len(end)], end
            break
    for knob in KNOBS[policy]:
        if knob.name.lower() == base.lower():
            if suffix and not knob.per_expert:
                raise CacheError(f"cache {policy}: '{knob.name}' applies to the whole model, it takes "
                                f"no expert suffix ({key!r})")
            return knob, knob.name + suffix
    for knob in KNOBS[policy]:  # the whole key may be a knob that happens to end in _1/_2
        if knob.name.lower() == key.lower():
            return knob, knob.name
    names = ", ".join(k.name for k in KNOBS[policy])
    raise CacheError(f"cache {policy}: unknown setting {key!r}; known: {names} "
                    f"(per expert: add _1 or _2)")


def _parse_value(policy: str, knob: Knob, key: str, value: Any) -> Any:
    where = f"cache {policy}: {key}"
    if isinstance(value, str) and knob.kind is not str:
        text = value.strip()
        if knob.kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise CacheError(f"{where}={value!r} must be true or false")
        try:
            value = int(text) if knob.kind is int else float(text)
        except ValueError:
            kind = "an integer" if knob.kind is int else "a number"
            raise CacheError(f"{where}={value!r} must be {kind}") from None
    if knob.kind is bool:
        if not isinstance(value, bool):
            raise CacheError(f"{where} must be true or false, got {value!r}")
        return value
    if knob.kind is str:
        if not isinstance(value, str) or not value:
            raise CacheError(f"{where} must be a non-empty string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            knob.kind is int and not isinstance(value, int)):
        kind = "an integer" if knob.kind is int else "a number"
        raise CacheError(f"{where} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise CacheError(f"{where} must be finite, got {value!r}")
    if knob.minimum is not None and value < knob.minimum:
        what = "negative" if knob.minimum == 0 else f"below {knob.minimum:g}"
        raise CacheError(f"{where}={value:g} must not be {what}")
    if knob.maximum is not None and value > knob.maximum:
        raise CacheError(f"{where}={value:g} must be at most {knob.maximum:g}")
    return knob.kind(value)


@dataclass(frozen=True)
class CacheConfig:
    """A step-cache policy and the settings given for it (canonical key -> typed value)."""

    policy: str
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        policy = str(self.policy).strip().lower()
        if policy not in KNOBS:
            raise CacheError(f"unknown cache policy {self.policy!r}; known: {', '.join(POLICY_NAMES)}")
        seen: dict[str, Any] = {}
        for key, value in self.options:
            knob, canonical = _knob(policy, str(key).strip())
            if canonical in seen:
                raise CacheError(f"cache {policy}: {canonical!r} given twice")
            seen[canonical] = _parse_value(policy, knob, canonical, value)
        if policy == "magcache" and "calibrate" in seen and "table" in seen:
            raise CacheError("cache magcache: 'calibrate' and 'table' cannot be combined")
        object.__setattr__(self, "policy", policy)
        object.__setattr__(self, "options", tuple(sorted(seen.items())))

    # ------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> "CacheConfig | None":
        """``"NAME"`` or ``"NAME:key=value,key=value"``; ``"none"`` / ``"off"`` -> None."""
        if not isinstance(text, str):
            raise CacheError(f"cache must be a string like 'teacache:threshold=0.08', got {text!r}")
        name, _, rest = text.strip().partition(":")
        if name.strip().lower() in _OFF and not rest.strip():
            return None
        options = []
        for item in rest.split(",") if rest.strip() else ():
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise CacheError(f"cache {name.strip()}: expected key=value, got {item.strip()!r} "
                                f"(in {text!r})")
            options.append((key.strip(), value.strip()))
        return cls(name, tuple(options))

    @classmethod
    def of(cls, policy: str, **options: Any) -> "CacheConfig":
        return cls(policy, tuple(options.items()))

    # ------------------------------------------------------------------------------------
    def get(self, key: str, expert: int | None = None, default: Any = None) -> Any:
        """The value set for ``key``: the expert's own (``key_1`` / ``key_2``) first."""
        values = dict(self.options)
        if expert is not None and f"{key}_{expert + 1}" in values:
            return values[f"{key}_{expert + 1}"]
        return values.get(key, default)

    def resolve(self, expert: int, preset: Mapping[str, Any]) -> dict[str, Any]:
        """Every knob's value for one expert (0-based). Precedence: the config's ``key_<e>``,
        the preset's ``key_<e>``, the config's ``key``, the preset's ``key``; knobs set by
        neither are left out."""
        values, suffix = dict(self.options), f"_{expert + 1}"
        out: dict[str, Any] = {}
        for knob in KNOBS[self.policy]:
            for source, key in ((values, knob.name + suffix), (preset, knob.name + suffix),
                                (values, knob.name), (preset, knob.name)):
                if key in source:
                    out[knob.name] = source[key]
                    break
        return out

    def spec(self) -> str:
        """The canonical ``NAME:key=value,...`` text (parses back to an equal config)."""
        if not self.options:
            return self.policy
        return self.policy + ":" + ",".join(f"{k}={_format(v)}" for k, v in self.options)

    def __str__(self) -> str:
        return self.spec()


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def policy_help(brief: bool = False) -> str:
    """Every policy and its knobs, for ``--cache`` help text (``brief``: one line, the knob
    names only, policies with the same knobs together)."""
    if brief:
        groups: dict[tuple[str, ...], list[str]] = {}
        for policy, knobs in KNOBS.items():
            groups.setdefault(tuple(k.name for k in knobs), []).append(policy)
        text = "; ".join(f"{'/'.join(names)}: {', '.join(knobs)}" for knobs, names in groups.items())
        return f"Policies and settings: {text}; per expert (Wan2.2 A14B): add _1 or _2 to a key."
    lines = []
    for policy, knobs in KNOBS.items():
        lines.append(f"{policy}:")
        lines += [f"  {k.name} ({k.kind.__name__}): {k.doc}" for k in knobs]
    lines.append("per expert (Wan2.2 A14B): add _1 (high noise) or _2 (low noise) to a key")
    return "\n".join(lines)


def as_cache_config(value: "CacheConfig | str | Mapping[str, Any] | None") -> CacheConfig | None:
    """What ``load(..., cache=...)`` / ``generate(..., cache=...)`` accept: None, a
    :class:`CacheConfig`, its text form, or a mapping ``{"policy": NAME, key: value, ...}``."""
    if value is None or isinstance(value, CacheConfig):
        return value
    if isinstance(value, str):
        return CacheConfig.parse(value)
    if isinstance(value, Mapping):
        options = dict(value)
        if "policy" not in options:
            raise CacheError(f"cache mapping needs a 'policy' key, got {sorted(options)}")
        return CacheConfig.of(str(options.pop("policy")), **options)
    raise CacheError(f"cache must be a policy text like 'teacache:threshold=0.08', a CacheConfig or "
                    f"None, got {type(value).__name__}")

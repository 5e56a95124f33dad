"""Precision settings: which parts of the model run in 8 bits, as a frozen dataclass.

``preset("none")`` is the exact path (the default: output equal to diffusers);
``preset("fp8")`` is the fast path: 8-bit attention (SageAttention2's recipe, INT8 Q/K and
FP8 P/V) in the blocks' self-attention and fp8 products in the transformer blocks' linear
layers (e4m3 weights with per-output-channel scales, activations per token). The small layers
(patch embedding, time/text/image embedders, modulation, head) stay in the model's dtype, and
so does the cross-attention to the text tokens (512 keys: the exact kernel is as fast there).

The text form (``fastdit.load(..., quantize=...)``, ``fastdit generate --quantize``) is a
preset name with optional per-part overrides, :func:`parse_quantize`::

    none | fp8 | fp8:attention=exact | fp8:linear=exact | none:attention=int8 | fp8:attention=sage

:func:`fastdit.quant.apply.apply_precision` applies a setting to a loaded transformer
(weights converted once, the attention provider bound per model).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace

from fastdit.errors import InputError

# attention setting -> the ``attention`` providers tried, in order (the last one runs anywhere)
ATTENTION_PROVIDERS: dict[str, tuple[str, ...]] = {
    "exact": (),  # the platform's default (cuDNN / SDPA): exact
    "int8": ("int8_triton", "int8_native"),  # INT8 Q/K, FP8 P/V (fastdit's kernel, its spec)
    "sage": ("sage",),  # the sageattention library (CUDA) when installed
}
LINEAR_MODES = ("exact", "fp8")

# Providers whose results differ from the exact op (the registry's ``exact`` flag, phase 2).
INEXACT_PROVIDERS = frozenset({
    ("attention", "int8_native"), ("attention", "int8_triton"), ("attention", "sage"),
})

# Linear layers (qualified-name patterns) that stay dense in every preset: the embedders,
# the modulation projection and the head. fnmatch patterns, matched against the module's name.
DENSE_LINEARS = (
    "patch_embedding*", "condition_embedder.*", "*time_embedder*", "*time_proj*",
    "*text_embedder*", "*image_embedder*", "proj_out*", "*head*", "*modulation*",
)


@dataclass(frozen=True)
class PrecisionConfig:
    """``attention``: "exact" | "int8" | "sage" (the blocks' self-attention); ``linear``:
    "exact" | "fp8" (the blocks' linear layers).

    ``dense_linears``: fnmatch patterns of module names whose linear layers keep dense weights
    (matched against the qualified name, e.g. ``blocks.3.ffn.net.2``). ``preset_name``: the
    preset this setting was derived from (for :meth:`spec`; None: derived from none).
    """

    attention: str = "exact"
    linear: str = "exact"
    dense_linears: tuple[str, ...] = DENSE_LINEARS
    preset_name: str | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_PROVIDERS:
            raise InputError(f"PrecisionConfig: attention must be one of "
                             f"{', '.join(ATTENTION_PROVIDERS)}, got {self.attention!r}")
        if self.linear not in LINEAR_MODES:
            raise InputError(f"PrecisionConfig: linear must be one of {', '.join(LINEAR_MODES)}, "
                             f"got {self.linear!r}")
        object.__setattr__(self, "dense_linears", tuple(self.dense_linears))

    @property
    def exact(self) -> bool:
        """True when nothing is quantised (the output equals the reference)."""
        return self.attention == "exact" and self.linear == "exact"

    def op_providers(self) -> dict[str, tuple[str, ...]]:
        """Provider lists to merge into ``KernelConfig.op_providers`` (empty for exact parts)."""
        names = ATTENTION_PROVIDERS[self.attention]
        return {"attention": names} if names else {}

    def quantizes_linear(self, name: str) -> bool:
        """Whether the linear layer called ``name`` gets fp8 weights under this setting."""
        if self.linear != "fp8":
            return False
        return not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.dense_linears)

    def spec(self) -> str:
        """The text form :func:`parse_quantize` reads back: the preset and the parts that
        differ from it (``"fp8"``, ``"fp8:attention=exact"``)."""
        base_name = self.preset_name if self.preset_name in PRESETS else "none"
        base = PRESETS[base_name]
        changed = [f"{part}={getattr(self, part)}" for part in PARTS
                   if getattr(self, part) != getattr(base, part)]
        return base_name + (":" + ",".join(changed) if changed else "")

    def describe(self) -> str:
        """One line for the log and the generation summary."""
        if self.exact:
            return f"precision: exact (quantize={self.spec()})"
        attention = {"exact": "exact", "int8": "8-bit (INT8 QK, FP8 PV)",
                     "sage": "8-bit (sageattention)"}[self.attention]
        linear = "fp8 e4m3" if self.linear == "fp8" else "exact"
        return (f"precision: quantize={self.spec()}: self-attention {attention}, block linear "
                f"layers {linear} (approximate: the output differs from the reference)")


PARTS = ("attention", "linear")  # the per-part overrides of the text form

PRESETS: dict[str, PrecisionConfig] = {
    "none": PrecisionConfig(preset_name="none"),
    "fp8": PrecisionConfig(attention="int8", linear="fp8", preset_name="fp8"),
}


def preset(name: str, **overrides: str) -> PrecisionConfig:
    """The named preset ("none" | "fp8"), with per-part overrides, e.g.
    ``preset("fp8", attention="exact")`` (fp8 products, exact attention)."""
    if name not in PRESETS:
        raise InputError(f"quantize must be one of {', '.join(PRESETS)}, got {name!r}")
    unknown = sorted(set(overrides) - set(PARTS))
    if unknown:
        raise InputError(f"quantize: unknown part(s) {', '.join(unknown)}; the parts are "
                         f"{', '.join(PARTS)}")
    base = PRESETS[name]
    return replace(base, **overrides) if overrides else base


def parse_quantize(value: "str | PrecisionConfig | None") -> PrecisionConfig:
    """A precision setting from its text form (see the module docstring), a
    :class:`PrecisionConfig` (returned as is) or None (``"none"``).

    ``"fp8:attention=exact,linear=fp8"``: the preset, a colon, then ``part=value`` pairs
    separated by commas. Unknown presets, parts or values raise :class:`InputError`.
    """
    if value is None:
        return PRESETS["none"]
    if isinstance(value, PrecisionConfig):
        return value
    if not isinstance(value, str):
        raise InputError(f"quantize must be a preset name such as 'fp8' or a PrecisionConfig, "
                         f"got {type(value).__name__}")
    name, _, rest = value.strip().partition(":")
    overrides: dict[str, str] = {}
    for item in (part.strip() for part in rest.split(",")) if rest.strip() else ():
        part, equals, choice = (s.strip() for s in item.partition("="))
        if not equals or not part or not choice:
            raise InputError(f"quantize: cannot read {item!r} in {value!r} (want part=value, "
                             f"e.g. fp8:attention=exact)")
        if part in overrides:
            raise InputError(f"quantize: {part} given twice in {value!r}")
        overrides[part] = choice
    return preset(name.strip().lower(), **overrides)


# Whether an adaLN norm that feeds fp8 products emits e4m3 + scales itself (the fused
# producer, ``ops.*_norm_scale_shift_fp8``) or a bf16 tensor that each product then quantises
# (``quantize_fp8`` inside ``linear_fp8``). Measured on the H200 at 32760 tokens
# (benchmarks/results/h200-run1): the fused norm costs 0.028 ms more than the bf16 norm at
# D=1536 (0.097 vs 0.069 ms) and 0.27 ms more at D=5120 (0.49 vs 0.22, the Triton whole-row
# kernel; wide rows now go to the compiled provider, not yet timed), a separate quantisation
# pass 0.044 ms (D=1536) and 0.16 ms (D=5120) per consumer. So: fuse for the q/k/v
# projections (three consumers) always, for one consumer up to this width.
FUSE_ONE_CONSUMER_MAX_DIM = 4096


def fuse_norm_quantization(dim: int, consumers: int) -> bool:
    """True when a norm of width ``dim`` feeding ``consumers`` fp8 products should quantise
    its output itself (see :data:`FUSE_ONE_CONSUMER_MAX_DIM`)."""
    return consumers >= 2 or dim <= FUSE_ONE_CONSUMER_MAX_DIM

"""Precision settings: which parts of the model run in 8 bits, as a frozen dataclass.

``preset("none")`` is the exact path (the default: output equal to diffusers);
``preset("fp8")`` is the fast path: 8-bit attention (SageAttention2's recipe, INT8 Q/K and
FP8 P/V) and fp8 products in the transformer blocks' linear layers (e4m3 weights with
per-output-channel scales, activations per token). The small layers (patch embedding,
time/text/image embedders, modulation, head) stay in the model's dtype.

Phase 2 wires this into ``fastdit.load(..., quantize="fp8")``: :meth:`PrecisionConfig.op_providers`
gives the per-op provider lists for ``KernelConfig.op_providers``, and
:func:`fastdit.quant.weights.quantize_linear_weights_` converts the weights.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace

from fastdit.errors import InputError

# attention setting -> the ``attention`` providers tried, in order (the last one runs anywhere)
ATTENTION_PROVIDERS: dict[str, tuple[str, ...]] = {
    "exact": (),  # the platform's default (cuDNN / SDPA): exact
    "int8": ("int8_triton", "int8_native"),  # INT8 Q/K, FP8 P/V (fastdit's kernel, its spec)
    "sage": ("sage", "int8_native"),  # the sageattention library when installed
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
    """``attention``: "exact" | "int8" | "sage"; ``linear``: "exact" | "fp8".

    ``dense_linears``: fnmatch patterns of module names whose linear layers keep dense weights
    (matched against the qualified name, e.g. ``blocks.3.ffn.net.2``).
    """

    attention: str = "exact"
    linear: str = "exact"
    dense_linears: tuple[str, ...] = DENSE_LINEARS

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

    def describe(self) -> str:
        """One line for the log and the generation summary."""
        if self.exact:
            return "precision: exact"
        return f"precision: attention={self.attention}, linear={self.linear} (approximate)"


PRESETS: dict[str, PrecisionConfig] = {
    "none": PrecisionConfig(),
    "fp8": PrecisionConfig(attention="int8", linear="fp8"),
}


def preset(name: str, **overrides: str) -> PrecisionConfig:
    """The named preset ("none" | "fp8"), with per-part overrides, e.g.
    ``preset("fp8", attention="exact")`` (fp8 products, exact attention)."""
    if name not in PRESETS:
        raise InputError(f"quantize must be one of {', '.join(PRESETS)}, got {name!r}")
    base = PRESETS[name]
    return replace(base, **overrides) if overrides else base

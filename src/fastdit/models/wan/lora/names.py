"""LoRA tensor names: what each key of a LoRA file is (role), which format it is written in,
and which parameter of a fastdit Wan model it changes.

A key is ``[prefix] module . suffix``:

* prefix: ``diffusion_model.`` / ``model.diffusion_model.`` (original Wan, ComfyUI, LightX2V),
  ``transformer.`` / ``base_model.model.`` (diffusers, PEFT), ``lora_unet_`` (musubi-tuner),
  or none;
* module: the official Wan name (``blocks.0.self_attn.q``), diffusers' name (= fastdit's,
  ``blocks.0.attn1.to_q``), or musubi's underscore form of the official name
  (``blocks_0_self_attn_q``);
* suffix: the role, see :data:`ROLES`.

Names are resolved against the model's own parameter names through the official <-> diffusers
key map of :mod:`fastdit.models.wan.checkpoint`, so every tensor the official layout names
(blocks, ``text_embedding``, ``time_embedding``, ``time_projection``, ``img_emb``,
``head.head``, modulations, norms, the patch embedding) is covered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from fastdit.models.wan.checkpoint import diffusers_to_original_key

#: key suffix -> role. ``down``/``up``: the two LoRA factors (``W += up @ down``), ``alpha``:
#: the LoRA's alpha (scale ``alpha / rank``), ``diff``: a full weight delta, ``diff_b``: a bias
#: delta, ``diff_m``: a modulation delta (LightX2V), ``bias``: PEFT's ``lora_B.bias`` (a bias
#: delta, what diffusers turns ``diff_b`` into).
ROLES: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_B.bias", "bias"),
    (".alpha", "alpha"),
    (".diff_b", "diff_b"),
    (".diff_m", "diff_m"),
    (".diff", "diff"),
)
#: suffixes of LoRA variants fastdit does not apply (an error, never silently dropped)
UNSUPPORTED: tuple[tuple[str, str], ...] = (
    (".dora_scale", "DoRA"),
    (".lora_magnitude_vector", "DoRA"),
    (".lora_mid.weight", "LoCon with a mid (Tucker) factor"),
    (".hada_w1_a", "LoHa"),
    (".lokr_w1", "LoKr"),
)
_PREFIXES = (("model.diffusion_model.", "original"), ("diffusion_model.", "original"),
             ("base_model.model.", "diffusers"), ("transformer.", "diffusers"),
             ("lora_unet_", "musubi"))
#: module-name parts only one layout uses
_DIFFUSERS_ONLY = re.compile(r"(^|\.)(attn1|attn2|condition_embedder|proj_out|scale_shift_table)(\.|$)"
                             r"|ffn\.net\.")
_ORIGINAL_ONLY = re.compile(r"(^|\.)(self_attn|cross_attn|text_embedding|time_embedding|"
                            r"time_projection|img_emb|head|modulation)(\.|$)|ffn\.[02](\.|$)")
FORMATS = ("original", "diffusers", "musubi")


@dataclass(frozen=True)
class LoraKey:
    """One key of a LoRA file, split: ``key == prefix + module + suffix``."""

    key: str
    module: str  # without prefix and suffix, as written in the file
    role: str  # one of the ROLES values, or "unknown"


def split_key(key: str) -> tuple[str, LoraKey]:
    """``(prefix layout, LoraKey)``; the layout is "" when the key has no known prefix.
    Raises ``ValueError`` (with the variant's name) for a LoRA variant fastdit cannot apply."""
    layout, rest = "", key
    for prefix, name in _PREFIXES:
        if key.startswith(prefix):
            layout, rest = name, key[len(prefix):]
            break
    for suffix, variant in UNSUPPORTED:
        if rest.endswith(suffix):
            raise ValueError(f"tensor {key!r} belongs to a {variant} adapter, which fastdit does not "
                             "apply")
    for suffix, role in ROLES:
        if rest.endswith(suffix):
            return layout, LoraKey(key, rest[: -len(suffix)], role)
    return layout, LoraKey(key, rest, "unknown")


def detect_format(prefix_layouts: Iterable[str], modules: Iterable[str]) -> str | None:
    """The layout of a file from its keys' prefixes, else from its module names; None when the
    keys say nothing (e.g. no module name of either layout)."""
    layouts = {p for p in prefix_layouts if p}
    if len(layouts) == 1:
        return layouts.pop()
    modules = list(modules)
    diffusers = sum(bool(_DIFFUSERS_ONLY.search(m)) for m in modules)
    original = sum(bool(_ORIGINAL_ONLY.search(m)) for m in modules)
    if diffusers == original == 0:
        return None
    return "diffusers" if diffusers > original else "original"


class ParameterNames:
    """The names a model's parameters go by in each LoRA layout.

    ``resolve(layout, name)`` maps ``name`` (module + leaf, e.g. ``blocks.0.self_attn.q.weight``
    in the original layout, ``blocks_0_self_attn_q.weight`` in musubi's) to the fastdit
    parameter name, or None.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes = dict(shapes)
        self._by_layout: dict[str, dict[str, str]] = {"diffusers": {n: n for n in self.shapes},
                                                      "original": {}, "musubi": {}}
        for name in self.shapes:
            original = diffusers_to_original_key(name)
            if original is None:
                continue
            self._by_layout["original"][original] = name
            module, dot, leaf = original.rpartition(".")
            if module and not _is_leafless(original):
                self._by_layout["musubi"][module.replace(".", "_") + dot + leaf] = name
            else:  # modulation, emb_pos: the whole name is the module
                self._by_layout["musubi"][original.replace(".", "_")] = name

    def resolve(self, layout: str, name: str) -> str | None:
        return self._by_layout[layout].get(name)


def _is_leafless(original_name: str) -> bool:
    """Official tensors without a ``.weight``/``.bias`` leaf (``blocks.N.modulation``,
    ``head.modulation``, ``img_emb.emb_pos``)."""
    return not original_name.endswith((".weight", ".bias"))


def target_names(layout: str, module: str, role: str) -> tuple[str, ...]:
    """The parameter names (in ``layout``) that a tensor of ``role`` on ``module`` may change,
    in the order they are tried: the LoRA factors and ``diff`` change ``module.weight`` (``diff``
    also a leafless parameter such as a modulation), ``diff_b``/``bias`` the bias, ``diff_m``
    the block's modulation."""
    if role in ("down", "up", "alpha"):
        return (module + ".weight",)
    if role == "diff":
        return (module + ".weight", module)
    if role in ("diff_b", "bias"):
        return (module + ".bias",)
    if role == "diff_m":
        sep = "_" if layout == "musubi" else "."
        return (module + sep + "modulation", module + ".scale_shift_table")
    return ()


_BLOCK_INDEX = re.compile(r"(?:^|[._])blocks[._](\d+)(?:[._]|$)")
_SELF_Q = re.compile(r"(self_attn[._]q|attn1\.to_q)$")


def block_index(module: str) -> int | None:
    """N for a module inside ``blocks.N`` (any layout), else None."""
    match = _BLOCK_INDEX.search(module)
    return int(match.group(1)) if match else None


def is_self_attention_query(module: str) -> bool:
    return bool(_SELF_Q.search(module))

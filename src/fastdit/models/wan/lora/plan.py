"""Reading a LoRA file and checking it against a model: the :class:`LoraPlan`.

Everything here reads safetensors headers (and the few scalar ``alpha`` tensors) only; no
weight of the model is touched. A plan lists, per model parameter, the terms to add:

* a low-rank pair: ``W += scale * s * up @ down`` with ``s = alpha / rank`` (1 without alpha;
  PEFT files: their ``lora_alpha / r``, ``alpha_pattern``, ``rank_pattern``, ``use_rslora``);
* a full delta (``.diff``, ``.diff_b``, ``.diff_m``, PEFT ``lora_B.bias``): ``P += scale * D``.

Problems raise :class:`fastdit.errors.LoraError` with one line naming the file and the tensor.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fastdit.errors import LoraError, first_line
from fastdit.models.wan.lora.names import (
    ParameterNames,
    block_index,
    detect_format,
    is_self_attention_query,
    split_key,
    target_names,
)

log = logging.getLogger("fastdit.lora")

#: safetensors metadata key under which diffusers stores the PEFT LoraConfig (JSON)
PEFT_METADATA_KEY = "lora_adapter_metadata"
#: model widths of the released Wan sizes, for messages
_SIZE_NAMES = {1536: "Wan 1.3B", 3072: "Wan2.2 TI2V-5B", 5120: "Wan 14B / A14B"}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a LoRA file, from its header."""

    path: Path
    key: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class PairTerm:
    """``W += scale * up @ down`` (``down [r, K]``, ``up [N, r]``; conv weights flattened)."""

    target: str
    down: TensorInfo
    up: TensorInfo
    scale: float  # user scale * alpha / rank

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class DeltaTerm:
    """``P += scale * delta`` (``delta`` has ``P``'s shape)."""

    target: str
    delta: TensorInfo
    scale: float


@dataclass
class LoraPlan:
    """What one LoRA file does to one model, checked against the model's parameter shapes."""

    path: Path
    format: str
    scale: float
    pairs: list[PairTerm] = field(default_factory=list)
    deltas: list[DeltaTerm] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # keys that map to no parameter (strict off)

    @property
    def targets(self) -> set[str]:
        return {t.target for t in self.pairs} | {t.target for t in self.deltas}

    def tensors(self) -> list[TensorInfo]:
        """The tensors the plan reads (the alphas were read already)."""
        out = []
        for term in self.pairs:
            out += [term.down, term.up]
        return out + [term.delta for term in self.deltas]

    def summary(self) -> str:
        ranks = sorted({t.rank for t in self.pairs})
        rank = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}" if ranks else "no pairs"
        return (f"{self.path.name} ({self.format} format, {rank}, scale {self.scale:g}): "
                f"{len(self.pairs)} low-rank pairs, {len(self.deltas)} deltas, "
                f"{len(self.targets)} parameters" + (f", {len(self.skipped)} keys skipped"
                                                     if self.skipped else ""))


# ---------------------------------------------------------------------------------------
# reading the file
# ---------------------------------------------------------------------------------------
def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """``({key: TensorInfo}, metadata)``: the header only."""
    from safetensors import safe_open

    if not path.is_file():
        raise LoraError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            infos = {}
            for key in handle.keys():
                part = handle.get_slice(key)
                infos[key] = TensorInfo(path, key, tuple(part.get_shape()), str(part.get_dtype()))
    except LoraError:
        raise
    except Exception as exc:  # safetensors raises its own types for bad or truncated files
        raise LoraError(f"cannot read LoRA file {path}: {first_line(exc)} (damaged, truncated "
                        "or not a safetensors file)") from None
    if not infos:
        raise LoraError(f"LoRA file {path} holds no tensors")
    return infos, metadata


def read_scalars(path: Path, keys: list[str]) -> dict[str, float]:
    """The values of the one-element tensors ``keys`` (the alphas)."""
    from safetensors import safe_open

    out = {}
    if not keys:
        return out
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in keys:
                out[key] = float(handle.get_tensor(key).float().reshape(()))
    except Exception as exc:
        raise LoraError(f"cannot read tensor {keys[0]!r} of LoRA file {path}: "
                        f"{first_line(exc)}") from None
    return out


def _peft_config(path: Path, metadata: Mapping[str, str]) -> dict[str, Any] | None:
    """The PEFT LoraConfig of a diffusers/PEFT file: diffusers' ``lora_adapter_metadata``
    (keys prefixed ``transformer.``), or PEFT's ``adapter_config.json`` beside the file."""
    raw = metadata.get(PEFT_METADATA_KEY)
    config = None
    if raw:
        try:
            config = json.loads(raw)
        except ValueError:
            raise LoraError(f"LoRA file {path}: its {PEFT_METADATA_KEY} metadata is not JSON") from None
        if isinstance(config, dict) and any(k.startswith("transformer.") for k in config):
            config = {k[len("transformer."):]: v for k, v in config.items()
                      if k.startswith("transformer.")}
    else:
        sidecar = path.parent / "adapter_config.json"
        if sidecar.is_file() and path.name.startswith("adapter_model"):
            try:
                config = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise LoraError(f"cannot read {sidecar}: {exc}") from None
    if config is not None and not isinstance(config, dict):
        raise LoraError(f"LoRA file {path}: the PEFT config is not a JSON object")
    if config and config.get("use_dora"):
        raise LoraError(f"LoRA file {path} is a DoRA adapter (use_dora), which fastdit does not apply")
    return config


def _pattern_value(patterns: Mapping[str, Any] | None, module: str):
    """PEFT's per-module override: the value of the first pattern that matches the module name
    as ``(.*\\.)?PATTERN$``."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def _pair_scale(module: str, rank: int, alpha: float | None, peft: Mapping[str, Any] | None,
                path: Path, key: str) -> float:
    """``alpha / rank`` (an ``.alpha`` tensor), else PEFT's ``lora_alpha / r`` (or
    ``/ sqrt(r)`` with ``use_rslora``), else 1."""
    if alpha is not None:
        return alpha / rank
    if not peft:
        return 1.0
    r = _pattern_value(peft.get("rank_pattern"), module) or peft.get("r", rank)
    if int(r) != rank:
        raise LoraError(f"LoRA file {path}: tensor {key!r} has rank {rank}, its PEFT config says "
                        f"{int(r)}")
    lora_alpha = _pattern_value(peft.get("alpha_pattern"), module)
    if lora_alpha is None:
        lora_alpha = peft.get("lora_alpha", rank)
    return float(lora_alpha) / (math.sqrt(rank) if peft.get("use_rslora") else rank)


# ---------------------------------------------------------------------------------------
# checking against a model
# ---------------------------------------------------------------------------------------
def plan_lora(path: str | Path, names: ParameterNames, *, scale: float = 1.0, strict: bool = True,
              config=None, model_name: str | None = None) -> LoraPlan:
    """Read ``path``'s header and check every tensor against the model's parameters.

    ``names`` holds the model's parameter shapes; ``config`` (a ``WanConfig``) is used for the
    model-size check and messages. Raises :class:`LoraError` for: a missing, damaged or empty
    file; a LoRA variant fastdit does not apply (DoRA, LoHa, LoKr, LoCon mid); a file made for
    another model size; a down factor without its up factor (or the reverse); mismatched ranks;
    a factor or delta whose shape does not fit its parameter; and, with ``strict``, any key
    that maps to no parameter (without ``strict`` those are skipped, counted and logged).
    """
    path = Path(path)
    infos, metadata = read_header(path)
    parsed = []
    layouts = []
    for key in infos:
        try:
            layout, lora_key = split_key(key)
        except ValueError as exc:
            raise LoraError(f"LoRA file {path}: {exc}") from None
        layouts.append(layout)
        parsed.append(lora_key)
    fmt = detect_format(layouts, (k.module for k in parsed))
    if fmt is None:
        raise LoraError(f"LoRA file {path}: cannot tell its format from keys such as "
                        f"{parsed[0].key!r} (expected Wan LoRA keys: original/ComfyUI, "
                        "diffusers/PEFT or musubi-tuner names)")
    _check_model_size(path, parsed, infos, config, model_name)
    peft = _peft_config(path, metadata) if fmt == "diffusers" else None

    plan = LoraPlan(path=path, format=fmt, scale=float(scale))
    unknown: list[str] = []
    # module -> role -> key
    by_module: dict[str, dict[str, str]] = defaultdict(dict)
    for lora_key in parsed:
        if lora_key.role == "unknown":
            unknown.append(lora_key.key)
            continue
        roles = by_module[lora_key.module]
        if lora_key.role in roles:
            raise LoraError(f"LoRA file {path}: tensors {roles[lora_key.role]!r} and "
                            f"{lora_key.key!r} both give the {lora_key.role} of {lora_key.module!r}")
        roles[lora_key.role] = lora_key.key

    alpha_keys = [roles["alpha"] for roles in by_module.values() if "alpha" in roles]
    for key in alpha_keys:
        if infos[key].shape not in ((), (1,)):
            raise LoraError(f"LoRA file {path}: alpha tensor {key!r} has shape "
                            f"{list(infos[key].shape)}, expected one value")
    alphas = read_scalars(path, alpha_keys)
    for key, value in alphas.items():
        if not math.isfinite(value):
            raise LoraError(f"LoRA file {path}: alpha tensor {key!r} is {value}")

    for module, roles in by_module.items():
        _plan_module(plan, path, fmt, module, roles, infos, alphas, peft, names, unknown)

    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:3]) + (f" and {len(unknown) - 3} more"
                                                             if len(unknown) > 3 else "")
        hint = _unknown_hint(unknown, config)
        if strict:
            raise LoraError(f"LoRA file {path}: {len(unknown)} tensor(s) map to no parameter of "
                            f"the model: {shown}{hint} (strict mode; turn it off to skip them)")
        log.warning("LoRA %s: skipping %d tensor(s) that map to no parameter of the model: %s%s",
                    path, len(unknown), shown, hint)
        plan.skipped = unknown
    if not plan.pairs and not plan.deltas:
        raise LoraError(f"LoRA file {path}: none of its {len(infos)} tensors applies to this model")
    return plan


def _plan_module(plan: LoraPlan, path: Path, fmt: str, module: str, roles: dict[str, str],
                 infos: Mapping[str, TensorInfo], alphas: Mapping[str, float],
                 peft: Mapping[str, Any] | None, names: ParameterNames, unknown: list[str]) -> None:
    """Add the terms of one module's tensors to ``plan`` (or their keys to ``unknown``)."""
    has_down, has_up = "down" in roles, "up" in roles
    if has_down != has_up:
        have, lack = ("down", "up") if has_down else ("up", "down")
        raise LoraError(f"LoRA file {path}: tensor {roles[have]!r} has no matching {lack} factor "
                        f"for {module!r}")
    if "alpha" in roles and not has_down:
        raise LoraError(f"LoRA file {path}: alpha tensor {roles['alpha']!r} has no LoRA factors")

    if has_down:
        target = _resolve(names, fmt, module, "down")
        if target is None:
            unknown.extend(roles[r] for r in ("down", "up", "alpha") if r in roles)
        else:
            down, up = infos[roles["down"]], infos[roles["up"]]
            _check_pair(path, down, up, target, names.shapes[target])
            alpha = alphas.get(roles.get("alpha", ""))
            lora_scale = _pair_scale(module, down.shape[0], alpha, peft, path, down.key)
            plan.pairs.append(PairTerm(target, down, up, plan.scale * lora_scale))

    for role in ("diff", "diff_b", "diff_m", "bias"):
        if role not in roles:
            continue
        info = infos[roles[role]]
        target = _resolve(names, fmt, module, role)
        if target is None:
            unknown.append(info.key)
            continue
        expected = names.shapes[target]
        if tuple(info.shape) != tuple(expected):
            raise LoraError(f"LoRA file {path}: tensor {info.key!r} has shape {list(info.shape)}, "
                            f"the parameter {target!r} it changes is {list(expected)}")
        plan.deltas.append(DeltaTerm(target, info, plan.scale))


def _resolve(names: ParameterNames, fmt: str, module: str, role: str) -> str | None:
    for candidate in target_names(fmt, module, role):
        name = names.resolve(fmt, candidate)
        if name is not None:
            return name
    return None


def _check_pair(path: Path, down: TensorInfo, up: TensorInfo, target: str,
                weight_shape: tuple[int, ...]) -> None:
    """``down [r, K...]``, ``up [N, r, 1...]`` against the weight ``[N, K...]``."""
    if len(down.shape) < 2 or len(up.shape) < 2:
        raise LoraError(f"LoRA file {path}: tensors {down.key!r} {list(down.shape)} and {up.key!r} "
                        f"{list(up.shape)} must be matrices")
    rank = down.shape[0]
    if up.shape[1] != rank:
        raise LoraError(f"LoRA file {path}: rank mismatch: {down.key!r} has rank {rank} "
                        f"{list(down.shape)}, {up.key!r} has {up.shape[1]} {list(up.shape)}")
    if any(s != 1 for s in up.shape[2:]):
        raise LoraError(f"LoRA file {path}: tensor {up.key!r} has shape {list(up.shape)}; an up "
                        "factor must be [out, rank] (1s after)")
    in_numel = math.prod(weight_shape[1:])
    if up.shape[0] != weight_shape[0] or math.prod(down.shape[1:]) != in_numel:
        raise LoraError(f"LoRA file {path}: tensors {down.key!r} {list(down.shape)} and {up.key!r} "
                        f"{list(up.shape)} do not fit the parameter {target!r} "
                        f"{list(weight_shape)}")


def _check_model_size(path: Path, parsed, infos: Mapping[str, TensorInfo], config,
                      model_name: str | None) -> None:
    """A LoRA made for another model size fails with one clear line, before the per-key checks."""
    if config is None:
        return
    blocks = [i for i in (block_index(k.module) for k in parsed) if i is not None]
    width = None
    for k in parsed:
        if is_self_attention_query(k.module) and k.role in ("down", "diff"):
            width = infos[k.key].shape[-1] if k.role == "down" else infos[k.key].shape[1]
            break
    lora_blocks = max(blocks) + 1 if blocks else 0
    if (width is not None and width != config.dim) or lora_blocks > config.num_layers:
        size = _SIZE_NAMES.get(width, "another model size") if width else "a deeper model"
        what = f"width {width}, " if width else ""
        this = f" ({model_name})" if model_name else ""
        raise LoraError(f"LoRA file {path} is for {size} ({what}at least {lora_blocks} blocks); this "
                        f"model{this} has width {config.dim} and {config.num_layers} blocks")


def _unknown_hint(keys: list[str], config) -> str:
    if config is not None and not config.has_image_input and any(
            re.search(r"k_img|v_img|add_k_proj|add_v_proj|img_emb|image_embedder", k) for k in keys):
        return (" (image cross-attention tensors: the LoRA is for a Wan2.1 image-to-video model "
                "with CLIP input; this model has none)")
    return ""

"""Applying LoRAs to a Wan transformer: merged into the weights, or as runtime adapters.

    result = apply_loras(model, [("distill.safetensors", 1.0), ("style.safetensors", 0.8)])

Every file is read and checked against the model (:func:`~.plan.plan_lora`) and every tensor
is read into host memory BEFORE the first weight changes, so a bad file never leaves a
half-applied LoRA behind.

* ``mode="merge"`` (default): per parameter ``P = round(P + sum_i s_i * up_i @ down_i +
  sum_j s_j * D_j)``, summed in fp32 on the parameter's device and rounded once to its dtype.
  No cost per step. fp8 weights cannot take a merge (use runtime mode).
* ``mode="runtime"``: every ``Linear`` target gets one :class:`~.adapters.LoraAdapter` (all the
  LoRAs on it stacked along the rank, scales folded into ``B``, bias deltas as its bias; full
  ``.diff`` deltas as a :class:`~.adapters.DeltaAdapter`) appended to its ``adapters`` list; the
  weights stay untouched. Parameters outside any ``Linear`` (norm weights, modulation tables,
  the patch embedding) are merged, as they never hold fp8 weights; the result counts them.

:class:`LoraMerger` merges the same way into tensors as a loader reads them (streamed blocks,
whose weights are then stored in bf16 or quantised to fp8 from the merged values).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, Union

import torch
from torch import nn

from fastdit.errors import LoraError, first_line
from fastdit.layers.linear import Linear
from fastdit.models.wan.lora.adapters import DeltaAdapter, LoraAdapter, attach, detach_all
from fastdit.models.wan.lora.names import ParameterNames
from fastdit.models.wan.lora.plan import (
    DeltaTerm,
    LoraPlan,
    PairTerm,
    TensorInfo,
    plan_lora,
)

log = logging.getLogger("fastdit.lora")

MODES = ("merge", "runtime")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: a safetensors file and its scale (strength)."""

    path: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            raise LoraError(f"LoRA scale must be a number, got {self.scale!r} for {self.path}") from None
        if scale != scale or scale in (float("inf"), float("-inf")):
            raise LoraError(f"LoRA scale must be finite, got {self.scale!r} for {self.path}")
        object.__setattr__(self, "scale", scale)


LoraLike = Union[LoraSpec, str, Path, tuple]


def as_spec(item: LoraLike) -> LoraSpec:
    """A :class:`LoraSpec` from itself, a path, or ``(path, scale)``."""
    if isinstance(item, LoraSpec):
        return item
    if isinstance(item, (str, Path)):
        return LoraSpec(str(item))
    if isinstance(item, tuple) and len(item) == 2:
        return LoraSpec(str(item[0]), item[1])
    raise LoraError(f"a LoRA is a path or (path, scale), got {item!r}")


def parse_lora_arg(text: str) -> tuple[int, LoraSpec]:
    """``"[high:|low:]PATH[:SCALE]"`` -> ``(expert, LoraSpec)``: expert 0 is ``transformer``
    (Wan2.2 A14B: the high-noise expert), 1 is ``transformer_2`` (low noise). A trailing
    ``:SCALE`` is taken as the scale only when it parses as a number."""
    expert = 0
    for prefix, index in (("high:", 0), ("low:", 1)):
        if text.startswith(prefix):
            expert, text = index, text[len(prefix):]
            break
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            scale = float(tail)
        except ValueError:  # not a number: part of the path (C:\..., a colon in a name)
            pass
        else:
            return expert, LoraSpec(path, scale)  # a non-finite scale is an error
    if not text:
        raise LoraError("empty LoRA argument")
    return expert, LoraSpec(text)


def loras_by_expert(loras: Iterable[LoraLike | str] = (), loras_2: Iterable[LoraLike] = (), *,
                    two_experts: bool) -> tuple[list[LoraSpec], list[LoraSpec]]:
    """``--lora`` values (strings may carry ``high:``/``low:`` and ``:SCALE``) and ``--lora-2``
    values -> the LoRAs of ``transformer`` and of ``transformer_2``. A LoRA for the second
    expert on a one-transformer model is a :class:`LoraError`."""
    first: list[LoraSpec] = []
    second: list[LoraSpec] = [parse_lora_arg(x)[1] if isinstance(x, str) else as_spec(x) for x in loras_2]
    for item in loras:
        expert, spec = parse_lora_arg(item) if isinstance(item, str) else (0, as_spec(item))
        (second if expert == 1 else first).append(spec)
    if second and not two_experts:
        raise LoraError(f"LoRA {second[0].path} is for the second (low-noise) expert, but this model "
                        "has one transformer")
    return first, second


@dataclass
class LoraResult:
    """What :func:`apply_loras` did."""

    mode: str
    plans: list[LoraPlan]
    merged: int = 0  # parameters changed in place
    adapters: int = 0  # Linear layers that got an adapter
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        files = "; ".join(p.summary() for p in self.plans)
        return (f"LoRA ({self.mode}): {files} -> {self.merged} parameters merged, "
                f"{self.adapters} adapters, {self.seconds.get('total', 0.0):.2f} s")


# ---------------------------------------------------------------------------------------
def check_loras(model: nn.Module, loras: Iterable[LoraLike], *, mode: str = "merge",
                strict: bool = True) -> list[LoraPlan]:
    """Every check :func:`apply_loras` makes, without reading a weight or changing the model:
    the files' headers against the model's parameters, and what the mode needs of the layers.
    ``model`` may live on the meta device (``with torch.device("meta"): WanTransformer(cfg)``),
    so a loader can check LoRAs before it reads any weight. Raises :class:`LoraError`."""
    if mode not in MODES:
        raise LoraError(f"LoRA mode must be one of {', '.join(MODES)}, got {mode!r}")
    params = dict(model.named_parameters())
    plans = _plan_loras(model, params, loras, strict)
    _split_terms(model, params, plans, mode)
    return plans


def _plan_loras(model: nn.Module, params, loras: Iterable[LoraLike], strict: bool) -> list[LoraPlan]:
    """Every LoRA's :class:`LoraPlan` against ``model``'s parameters (``params``)."""
    specs = [as_spec(item) for item in loras]
    config = getattr(model, "config", None)
    names = ParameterNames({n: tuple(p.shape) for n, p in params.items()})
    return [plan_lora(spec.path, names, scale=spec.scale, strict=strict, config=config)
            for spec in specs]


@torch.no_grad()
def apply_loras(model: nn.Module, loras: Iterable[LoraLike], *, mode: str = "merge",
                strict: bool = True, plans: Sequence[LoraPlan] | None = None) -> LoraResult:
    """Apply ``loras`` (stacked, each with its own scale) to ``model``; see the module doc.

    Raises :class:`LoraError` before any change when a file is missing, damaged, made for
    another model, or holds tensors that do not fit (see :func:`~.plan.plan_lora`); with
    ``strict=False`` keys that map to no parameter are skipped with a logged warning.
    ``plans``: the result of :func:`check_loras` for these LoRAs on a model of this
    configuration (the files are then not planned again).
    """
    if mode not in MODES:
        raise LoraError(f"LoRA mode must be one of {', '.join(MODES)}, got {mode!r}")
    start = time.perf_counter()
    params = dict(model.named_parameters())
    plans = _plan_loras(model, params, loras, strict) if plans is None else list(plans)
    result = LoraResult(mode=mode, plans=plans)
    if not plans:
        return result

    adapter_terms, merge_terms = _split_terms(model, params, plans, mode)
    checked = time.perf_counter()
    tensors = _read_tensors(plans)
    read = time.perf_counter()

    for name, terms in merge_terms.items():
        _merge(params[name], terms, tensors)
    result.merged = len(merge_terms)
    for module_name, terms in adapter_terms.items():
        module = model.get_submodule(module_name)
        attach(module, _build_adapter(module, module_name, terms, tensors))
    result.adapters = len(adapter_terms)
    if any(p.device.type != "cpu" for p in params.values()):
        from fastdit.platforms import current_platform

        current_platform().synchronize()  # the timings below are wall clock
    done = time.perf_counter()
    result.seconds = {"check": checked - start, "read": read - checked, "apply": done - read,
                      "total": done - start}
    log.info("%s", result.summary())
    return result


def remove_lora_adapters(model: nn.Module) -> int:
    """Drop every runtime LoRA adapter from the model's ``Linear`` layers; returns how many
    layers had one. (Merged LoRAs stay: reload the weights to undo them.)"""
    return sum(detach_all(module) for module in list(model.modules()) if isinstance(module, Linear))


# ---------------------------------------------------------------------------------------
Term = Union[PairTerm, DeltaTerm]


def _split_terms(model: nn.Module, params, plans: Sequence[LoraPlan], mode: str
                 ) -> tuple[dict[str, list[Term]], dict[str, list[Term]]]:
    """``({linear module: terms}, {parameter: terms})``: what becomes an adapter, what merges,
    both checked (what the mode needs of the layers; raises :class:`LoraError`).

    In runtime mode the weight and bias of every product layer take an adapter; a product
    layer that is not a :class:`fastdit.layers.linear.Linear` (e.g. a plain ``nn.Linear`` in
    a model fastdit did not build) is a :class:`LoraError`. Other parameters merge, and must
    be mergeable (:func:`_check_mergeable`)."""
    adapter_terms: dict[str, list[Term]] = defaultdict(list)
    merge_terms: dict[str, list[Term]] = defaultdict(list)
    for plan in plans:
        for term in [*plan.pairs, *plan.deltas]:
            module_name, _, leaf = term.target.rpartition(".")
            if mode == "runtime" and leaf in ("weight", "bias") and _is_product(model, module_name):
                adapter_terms[module_name].append(term)
            else:
                merge_terms[term.target].append(term)
    for module_name in adapter_terms:
        module = model.get_submodule(module_name)
        if not isinstance(module, Linear):
            raise LoraError(f"runtime LoRA mode needs fastdit Linear layers (fastdit.layers.linear."
                            f"Linear); {module_name!r} is a {type(module).__module__}."
                            f"{type(module).__name__} (use the merge mode)")
    _check_mergeable(model, params, merge_terms)
    return adapter_terms, merge_terms


def _is_product(model: nn.Module, module_name: str) -> bool:
    """A matrix-product layer: a fastdit ``Linear``, an ``nn.Linear``, or any module with an
    ``adapters`` list and a 2-D weight."""
    module = model.get_submodule(module_name) if module_name else model
    weight = getattr(module, "weight", None)
    return isinstance(module, (Linear, nn.Linear)) or (
        hasattr(module, "adapters") and weight is not None and weight.dim() == 2)


def _check_mergeable(model: nn.Module, params, merge_terms) -> None:
    for name in merge_terms:
        param = params[name]
        module_name = name.rpartition(".")[0]
        module = model.get_submodule(module_name) if module_name else model
        quantised = getattr(module, "weight_scale", None) is not None and name.endswith(".weight")
        if quantised or not param.is_floating_point() or param.element_size() < 2:
            raise LoraError(f"cannot merge a LoRA into {name!r}: it holds {str(param.dtype).replace('torch.', '')}"
                            " (quantised) weights; use the runtime LoRA mode")


def _read_tensors(plans: Sequence[LoraPlan]) -> dict[TensorInfo, torch.Tensor]:
    """Every tensor the plans use, read into host memory (memory-mapped files)."""
    from safetensors import safe_open

    out: dict[TensorInfo, torch.Tensor] = {}
    for plan in plans:
        try:
            with safe_open(str(plan.path), framework="pt", device="cpu") as handle:
                for info in plan.tensors():
                    out[info] = handle.get_tensor(info.key)
        except Exception as exc:
            raise LoraError(f"cannot read LoRA file {plan.path}: {first_line(exc)}") from None
    return out


def _on(tensors, info: TensorInfo, device) -> torch.Tensor:
    """A LoRA tensor on ``device`` in fp32 (copied in its file dtype, converted there)."""
    return tensors[info].to(device).float()


def _factors(term: PairTerm, tensors, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up [N, r], down [r, K])`` fp32 on ``device`` (conv factors flattened)."""
    up, down = _on(tensors, term.up, device), _on(tensors, term.down, device)
    return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)


def _merge(param: torch.Tensor, terms: Sequence[Term], tensors) -> None:
    """``param = round(param + sum of terms)``: fp32 sums, one rounding."""
    acc = param.detach().to(torch.float32, copy=True)  # (N, K...) fp32
    _accumulate(acc, terms, tensors)
    param.copy_(acc)


def _accumulate(acc: torch.Tensor, terms: Sequence[Term], tensors) -> None:
    """``acc += sum of terms`` in place (fp32, on ``acc``'s device), in the terms' order."""
    device = acc.device
    acc2d = acc.view(acc.shape[0], -1) if acc.dim() >= 2 else acc
    for term in terms:
        if isinstance(term, PairTerm):
            up, down = _factors(term, tensors, device)
            acc2d.addmm_(up, down, alpha=term.scale)  # (N, K) += s * up @ down
        else:
            acc.add_(_on(tensors, term.delta, device).reshape(acc.shape), alpha=term.scale)


class LoraMerger:
    """LoRAs merged into tensors as a loader reads them, for a loader that never holds the
    whole model (the streamed path's lazy host loading, :func:`fastdit.runtime.lazy.load_streamed`).

    ``merger(name, tensor, dtype)`` returns, for a parameter the LoRAs change,
    ``round(round(tensor, dtype) + sum of terms)`` summed in fp32 on ``device`` (what
    :func:`apply_loras`' merge makes of a parameter loaded in ``dtype``: the same numbers), and
    ``tensor`` itself for any other. Built like :func:`apply_loras` in merge mode: every check
    and every LoRA tensor read before the first weight, so a bad file fails before loading.
    :meth:`finish` checks that every merged parameter was met and logs the summary.
    """

    def __init__(self, model: nn.Module, loras: Iterable[LoraLike], *, strict: bool = True,
                 plans: Sequence[LoraPlan] | None = None, device: torch.device | str = "cpu") -> None:
        self.start = time.perf_counter()
        params = dict(model.named_parameters())  # a meta model is enough: names and shapes
        plans = _plan_loras(model, params, loras, strict) if plans is None else list(plans)
        _, self.terms = _split_terms(model, params, plans, "merge")
        self.tensors = _read_tensors(plans)
        self.device = torch.device(device)
        self.result = LoraResult(mode="merge", plans=plans)
        self.met: set[str] = set()

    @torch.no_grad()
    def __call__(self, name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        terms = self.terms.get(name)
        if not terms:
            return tensor
        acc = tensor.to(dtype).to(self.device, torch.float32, copy=True)  # the loaded value, fp32
        _accumulate(acc, terms, self.tensors)
        self.met.add(name)
        return acc.to(dtype)

    def finish(self) -> LoraResult:
        missed = sorted(set(self.terms) - self.met)
        if missed:  # a loader that skipped a parameter: an engine bug, not the user's
            raise RuntimeError(f"LoRA merge while loading: {len(missed)} parameter(s) never read, "
                               f"e.g. {missed[0]!r}")
        self.tensors.clear()  # the LoRA factors (host memory) are no longer needed
        self.result.merged = len(self.met)
        self.result.seconds = {"total": time.perf_counter() - self.start}
        log.info("%s (merged while loading)", self.result.summary())
        return self.result


def _adapter_dtype(module: nn.Module) -> torch.dtype:
    """The dtype the layer computes in: its bias's, else a dense weight's, else bf16."""
    bias, weight = getattr(module, "bias", None), module.weight
    if bias is not None and bias.is_floating_point():
        return bias.dtype
    if weight.is_floating_point() and weight.element_size() >= 2:
        return weight.dtype
    return torch.bfloat16


def _build_adapter(module: nn.Module, name: str, terms: Sequence[Term], tensors):
    """One adapter for all the terms on one ``Linear``: the pairs stacked along the rank
    (scales folded into the up factors), bias deltas summed; a full ``.diff`` delta makes it a
    :class:`DeltaAdapter` that the pairs fold into."""
    device, dtype = module.weight.device, _adapter_dtype(module)
    downs, ups, bias, full = [], [], None, None
    for term in terms:
        if isinstance(term, PairTerm):
            up, down = _factors(term, tensors, device)
            downs.append(down)
            ups.append(up * term.scale)  # (N, r) with the scale folded in
            continue
        delta = _on(tensors, term.delta, device) * term.scale
        if term.target.endswith(".bias"):
            bias = delta if bias is None else bias + delta
        else:
            full = delta if full is None else full + delta
    bias = None if bias is None else bias.to(dtype)
    if full is not None:
        for up, down in zip(ups, downs):
            full = full.addmm(up, down)  # (N, K)
        log.warning("LoRA runtime mode: %r gets a full weight delta (.diff) as an adapter, which "
                    "costs as much as the layer's own product", name)
        return DeltaAdapter(full.to(dtype), bias, name)
    if not downs:
        return LoraAdapter(torch.empty(0, module.weight.shape[1], device=device, dtype=dtype),
                           None, bias, name)
    down = torch.cat(downs).to(dtype)  # (r1 + r2 + ..., K)
    up = torch.cat(ups, dim=1).to(dtype)  # (N, r1 + r2 + ...)
    return LoraAdapter(down, up, bias, name)

"""Applying a precision setting to a loaded transformer, once, through its seams.

    report = apply_precision(model, parse_quantize("fp8"))

* **Linear layers** (``precision.linear == "fp8"``): the blocks' ``Linear`` weights become
  e4m3 with per-output-channel scales and their products run in fp8
  (:func:`~fastdit.quant.weights.quantize_linear_weights_`, ``Linear.compute = "fp8"``); the
  small layers (embedders, modulation, head) stay dense. The blocks then feed those products
  from the fp8-emitting norms (``WanBlock``).
* **Self-attention** (``precision.attention != "exact"``): the model's ``attend`` (the
  function ``WanContext.self_attention`` starts as) becomes a :class:`PrecisionAttention`:
  ``ops.attention`` with the setting's 8-bit providers named first for that call, inside a
  ``contextvars`` configuration scope (:func:`fastdit.config.use_config`). Nothing global
  changes: other models, the cross-attention of the same model and other threads keep the
  exact providers. Which providers: the first of the setting's list that runs here, resolved
  once (:func:`attention_providers`); where none does, self-attention stays exact with a
  WARNING (a :class:`~fastdit.errors.ProviderError` in strict mode).

The report (weight memory before and after, the attention providers) is logged once and kept
on the model as ``model.precision_report``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastdit import ops
from fastdit.config import EngineConfig, get_config, use_config
from fastdit.errors import ProviderError
from fastdit.quant.config import ATTENTION_PROVIDERS, PrecisionConfig, parse_quantize
from fastdit.quant.weights import WeightReport, format_bytes, quantize_linear_weights_

log = logging.getLogger("fastdit.quant")

#: attention providers that are a plain-torch specification: a CPU path, not a GPU one
CPU_ONLY_PROVIDERS = frozenset({"int8_native"})


@dataclass(frozen=True)
class PrecisionReport:
    """What :func:`apply_precision` did to one model."""

    precision: PrecisionConfig
    attention_providers: tuple[str, ...]  # named for the self-attention (empty: exact)
    weights: WeightReport | None  # None when the linear layers stay exact
    weight_bytes: int  # all parameters and buffers of the model after the conversion

    def describe(self) -> str:
        parts = [self.precision.describe()]
        if self.attention_providers:
            parts.append(f"self-attention provider: {' > '.join(self.attention_providers)}")
        if self.weights is not None:
            parts.append(self.weights.describe())
        parts.append(f"transformer weights {format_bytes(self.weight_bytes)}")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """For ``GenerationResult.settings`` and benchmark JSON."""
        return {"quantize": self.precision.spec(), "attention": self.precision.attention,
                "linear": self.precision.linear,
                "attention_providers": list(self.attention_providers),
                "fp8_linear_layers": 0 if self.weights is None else len(self.weights.layers),
                "weight_bytes": self.weight_bytes}


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def attention_providers(precision: PrecisionConfig, device: torch.device | str) -> tuple[str, ...]:
    """The attention providers the setting names on ``device``: those of its list that are
    available here (the plain-torch specification only on the CPU); empty for exact attention.

    Raises :class:`ProviderError` in strict mode when none is available, else logs a WARNING
    and returns ``()`` (self-attention stays exact)."""
    if precision.attention == "exact":
        return ()
    from fastdit.ops.registry import availability, providers

    device = torch.device(device)
    registered = providers("attention")
    usable, reasons = [], []
    for name in ATTENTION_PROVIDERS[precision.attention]:
        ok, reason = availability(registered[name])
        if ok and (device.type == "cpu" or name not in CPU_ONLY_PROVIDERS):
            usable.append(name)
        elif not ok:
            reasons.append(f"{name}: {reason}")
        else:
            reasons.append(f"{name}: a CPU specification, not run on {device.type}")
    if usable:
        return tuple(usable)
    message = (f"quantize={precision.spec()}: no {precision.attention} attention provider runs on "
               f"{device} ({'; '.join(reasons)})")
    if get_config().kernel.strict:
        raise ProviderError(message + " (strict mode)")
    log.warning("%s; self-attention stays exact", message)
    return ()


class PrecisionAttention:
    """``ops.attention`` with ``providers`` named first for the attention op, in a
    configuration scope around the call (the configuration in effect otherwise: strictness,
    the other ops' providers). The derived configuration is built once per base configuration,
    so every call of a forward sees the same object (the registry's fast path)."""

    def __init__(self, providers: tuple[str, ...]) -> None:
        self.providers = tuple(providers)
        self._cached: tuple[EngineConfig | None, EngineConfig | None] = (None, None)

    def config_for(self, base: EngineConfig) -> EngineConfig:
        cached_base, derived = self._cached
        if cached_base is base and derived is not None:
            return derived
        kernel = base.kernel
        op_providers = dict(kernel.op_providers)
        op_providers["attention"] = self.providers
        derived = dataclasses.replace(base, kernel=dataclasses.replace(kernel,
                                                                       op_providers=op_providers))
        self._cached = (base, derived)
        return derived

    def __call__(self, q, k, v, **kwargs):
        with use_config(self.config_for(get_config())):
            return ops.attention(q, k, v, **kwargs)

    def __repr__(self) -> str:
        return f"PrecisionAttention({' > '.join(self.providers)})"


def apply_precision(model: nn.Module, precision: "PrecisionConfig | str | None",
                    device: torch.device | str | None = None, *,
                    log_report: bool = True) -> PrecisionReport:
    """Apply ``precision`` (a :class:`PrecisionConfig` or its text form) to a Wan transformer in
    place, once: see the module docstring. ``device``: where the model runs (default: where its
    parameters are). Applying a second setting to the same model is an error (its weights are
    already converted). Returns (and, with ``log_report``, logs) a :class:`PrecisionReport`."""
    precision = parse_quantize(precision)
    current = getattr(model, "precision", None)
    if isinstance(current, PrecisionConfig) and not current.exact:
        if current == precision:
            return model.precision_report
        from fastdit.errors import UserError

        raise UserError(f"this model already runs with quantize={current.spec()}; load it again "
                        f"for quantize={precision.spec()}")
    if device is None:
        device = next(model.parameters()).device
    names = attention_providers(precision, device)
    weights = None
    if precision.linear == "fp8":
        weights = quantize_linear_weights_(model, precision, log_report=False)
    if names:
        model.attend = PrecisionAttention(names)
    model.precision = precision
    report = PrecisionReport(precision, names, weights, weight_bytes(model))
    model.precision_report = report
    if log_report and not precision.exact:
        log.info("%s", report.describe())
    return report

"""Op providers and per-call dispatch.

A *provider* is one implementation of one op (``native``, ``triton``, ``compiled``, ``aiter``,
``sdpa``, ...). It declares two predicates:

* ``supported()``: can it run on this machine at all (platform, library importable)? Asked
  once per configuration and cached.
* ``supports_args(*args, **kwargs)``: can it take this call (dtype, shape, device)?

:func:`dispatch` walks the priority list (configuration override first, then the platform's
default list) and runs the first provider for which both hold. Implementations are named by
``"module:function"`` strings and imported on first use, so registering a provider imports
nothing heavy; optional libraries are imported only inside ``supported()``.

A provider may also *defer* a call it can take (``prefers(...)`` is False) when a later
provider is measured faster for that shape; a provider named in the configuration never
defers. Every choice is logged once per (op, provider, providers passed over); falling back past a provider
that cannot take a call is a warning. In strict mode (``FASTDIT_STRICT_OPS=1``) a provider
asked for by configuration must take the call: otherwise dispatch raises
:class:`ProviderError` instead of falling back.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from fastdit.config import config_generation, get_config
from fastdit.errors import ProviderError  # re-exported

log = logging.getLogger("fastdit.ops")

# Modules whose import registers providers (declaratively: no kernel is built on import).
PROVIDER_MODULES = (
    "fastdit.ops.native",
    "fastdit.kernels.triton",
    "fastdit.kernels.compiled",
    "fastdit.kernels.aiter",
    "fastdit.kernels.attention",
    "fastdit.kernels.cublaslt",
)


def _always(*_args: Any, **_kwargs: Any) -> bool:
    return True


@dataclass
class Provider:
    op: str
    name: str
    impl: str | Callable[..., Any]
    supported: Callable[[], bool] = _always
    supports_args: Callable[..., bool] = _always
    description: str = ""
    # Can take the call but a later provider in the list is measured faster for it: dispatch
    # then moves on (logged), unless this provider was asked for by configuration.
    prefers: Callable[..., bool] = _always
    _fn: Callable[..., Any] | None = field(default=None, repr=False)

    @property
    def fn(self) -> Callable[..., Any]:
        """The implementation, imported on first use."""
        if self._fn is None:
            if callable(self.impl):
                self._fn = self.impl
            else:
                module_name, _, attr = self.impl.partition(":")
                self._fn = getattr(importlib.import_module(module_name), attr)
        return self._fn


_providers: dict[str, dict[str, Provider]] = {}
_loaded = False
_supported_cache: dict[tuple[int, str, str], bool] = {}
# per (config generation, op): the providers in priority order, the requested names, strict
_priority_cache: dict[tuple[int, str], tuple[tuple[Provider, ...], frozenset[str], bool]] = {}
_logged: set[tuple] = set()


def register(op: str, name: str, impl: str | Callable[..., Any], *,
             supported: Callable[[], bool] = _always,
             supports_args: Callable[..., bool] = _always, description: str = "",
             prefers: Callable[..., bool] = _always) -> None:
    """Register provider ``name`` of ``op``; ``impl`` is a callable or ``"module:function"``."""
    _providers.setdefault(op, {})[name] = Provider(op, name, impl, supported, supports_args,
                                                    description, prefers)
    _priority_cache.clear()


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module_name in PROVIDER_MODULES:
            importlib.import_module(module_name)


def providers(op: str) -> dict[str, Provider]:
    """All providers registered for ``op``, by name."""
    _ensure_loaded()
    if op not in _providers:
        raise KeyError(f"unknown op {op!r}; known ops: {', '.join(sorted(_providers))}")
    return _providers[op]


def op_names() -> list[str]:
    _ensure_loaded()
    return list(_providers)


def is_supported(provider: Provider) -> bool:
    """``provider.supported()``, cached per configuration; an exception counts as no."""
    key = (config_generation(), provider.op, provider.name)
    if key not in _supported_cache:
        try:
            _supported_cache[key] = bool(provider.supported())
        except Exception as exc:  # a broken optional library must not break dispatch
            log.info("provider %s/%s unavailable: %s", provider.op, provider.name, exc)
            _supported_cache[key] = False
    return _supported_cache[key]


def requested_providers(op: str) -> tuple[str, ...]:
    """Provider names the configuration asks for, for ``op`` (may be empty)."""
    kernel = get_config().kernel
    return kernel.op_providers.get(op, kernel.default_providers)


def priority(op: str) -> tuple[Provider, ...]:
    """The providers of ``op`` in the order dispatch tries them (configured first)."""
    return _plan(op)[0]


def _plan(op: str) -> tuple[tuple[Provider, ...], frozenset[str], bool]:
    """``(priority, requested names, strict)`` for ``op``, computed once per configuration."""
    key = (config_generation(), op)
    cached = _priority_cache.get(key)
    if cached is not None:
        return cached
    from fastdit.platforms import current_platform

    registered = providers(op)
    requested = requested_providers(op)
    unknown = [name for name in requested if name not in registered]
    if unknown and op in get_config().kernel.op_providers:
        raise ProviderError(f"{op}: unknown provider(s) {unknown}; registered: {list(registered)}")
    names = [n for n in requested if n in registered]
    names += [n for n in current_platform().provider_priority(op) if n in registered and n not in names]
    fallback = "sdpa" if op == "attention" else "native"
    if fallback in registered and fallback not in names:
        names.append(fallback)
    plan = (tuple(registered[n] for n in names), frozenset(requested), get_config().kernel.strict)
    _priority_cache[key] = plan
    return plan


def resolve(op: str, *args: Any, **kwargs: Any) -> Provider:
    """The provider that :func:`dispatch` would run for this call."""
    ordered, requested, strict = _plan(op)
    skipped: list[str] = []  # providers that cannot take the call
    deferred: list[str] = []  # providers that can, but leave it to a faster one
    for provider in ordered:
        if not is_supported(provider):
            if strict and provider.name in requested:
                raise ProviderError(f"{op}: provider {provider.name!r} was requested but is not "
                                    f"available on this machine (strict mode)")
            continue
        if provider.supports_args(*args, **kwargs):
            if provider.name not in requested and not provider.prefers(*args, **kwargs):
                deferred.append(provider.name)
                continue
            _log_choice(op, provider.name, skipped, deferred, args, kwargs)
            return provider
        if strict and provider.name in requested:
            raise ProviderError(
                f"{op}: provider {provider.name!r} cannot take this call ({describe_args(args, kwargs)})"
                " and strict mode forbids falling back")
        skipped.append(provider.name)
    if deferred:
        _log_choice(op, deferred[0], skipped, [], args, kwargs)
        return providers(op)[deferred[0]]
    raise ProviderError(f"{op}: no provider can take this call ({describe_args(args, kwargs)})")


def _log_choice(op: str, name: str, skipped: list[str], deferred: list[str], args: tuple,
                kwargs: dict) -> None:
    """Log the choice once per (op, provider, providers passed over); the arguments are only
    formatted then, so a repeated call costs a set lookup."""
    key = (op, name, tuple(skipped), tuple(deferred))
    if key in _logged:
        return
    _logged.add(key)
    reasons = [f"fell back past {', '.join(skipped)}: cannot take {describe_args(args, kwargs)}"
               ] if skipped else []
    reasons += [f"{d} defers this shape to a faster provider" for d in deferred]
    log.log(logging.WARNING if skipped else logging.INFO, "op %s -> provider %s%s", op, name,
            f" ({'; '.join(reasons)})" if reasons else "")


def dispatch(op: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``op`` with the first provider that is supported here and accepts the arguments."""
    return resolve(op, *args, **kwargs).fn(*args, **kwargs)


def call_provider(op: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Run one named provider directly (tests and benchmarks); raises if it cannot."""
    provider = providers(op)[name]
    if not is_supported(provider):
        raise ProviderError(f"{op}: provider {name!r} is not available on this machine")
    if not provider.supports_args(*args, **kwargs):
        raise ProviderError(f"{op}: provider {name!r} cannot take {describe_args(args, kwargs)}")
    return provider.fn(*args, **kwargs)


def describe_args(args: tuple, kwargs: dict) -> str:
    """Short text for a call's arguments: tensor shapes and dtypes, other values as repr."""
    def one(value: Any) -> str:
        shape = getattr(value, "shape", None)
        if shape is not None and hasattr(value, "dtype"):
            return f"{tuple(shape)} {str(value.dtype).replace('torch.', '')}"
        return repr(value) if not callable(value) else getattr(value, "__name__", "fn")
    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items() if v is not None]
    return ", ".join(parts)


def provider_table() -> list[dict[str, Any]]:
    """Per op: registered providers, which are available here, which one is tried first."""
    rows = []
    for op in op_names():
        ordered = priority(op)
        rows.append({
            "op": op,
            "providers": list(providers(op)),
            "priority": [p.name for p in ordered],
            "available": [name for name, p in providers(op).items() if is_supported(p)],
            "chosen": next((p.name for p in ordered if is_supported(p)), None),
        })
    return rows

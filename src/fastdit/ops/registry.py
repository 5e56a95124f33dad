"""Op providers, dispatch plans and per-call dispatch.

A *provider* is one implementation of one op (``native``, ``triton``, ``compiled``, ``aiter``,
``sdpa``, ...). It declares:

* ``supported()``: can it run on this machine at all (platform, library importable)? Asked
  once per configuration and cached; an exception counts as no, its text is the reason.
* ``supports_args(*args, **kwargs)``: can it take this call (dtype, shape, device)?
* ``prefers(*args, **kwargs)``: it can, but a later provider is measured faster for this
  shape (dispatch moves on unless this provider was asked for by configuration).
* ``exact``: False for lossy providers (quantised attention): never chosen by a default
  priority list, only when named in the configuration.
* ``specialize(config, *args, **kwargs)`` (optional): the function to run for calls like this
  one under ``config`` (the SDPA backend bound in, a compiled function, a packed layout);
  default: the implementation itself.

Implementations are named by ``"module:function"`` strings and imported on first use, so
registering a provider imports nothing heavy; optional libraries are imported only inside
``supported()``.

**Plans.** The provider for a call is chosen once per *argument signature* (every tensor's
shape, strides, dtype and device; the type of each number; the value of each setting such as
``eps`` or ``norm``) and per configuration, and kept in a :class:`Plan` (the provider and the
function to call). A public op builds the signature, looks its plan up and calls
``plan.fn``: the op's checks, the providers' predicates and the choice all run on the first
call of a signature only. Plans live in a per-configuration state keyed by the
configuration's value (equal :func:`fastdit.config.override_config` scopes share one), with
bounds: :data:`MAX_CONFIGS` configurations, :data:`MAX_PLANS` signatures per op.

**Choice.** The priority list is: the providers named in the configuration for the op
(``FASTDIT_OP_PROVIDERS``), then the platform's defaults (exact providers only), then
``native`` (``sdpa`` for attention). The first provider that is supported and takes the call
runs; the choice is logged once. A named provider that is unavailable or declines a call is
named in a WARNING with the reason, once. In strict mode (``FASTDIT_STRICT_OPS=1``) those
cases raise :class:`ProviderError`, and so does a call that the first available provider
cannot take when the configuration names no provider for the op. Unknown provider names are an
error; unknown op names in the configuration are an error in strict mode, a warning otherwise.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from fastdit import config as _cfg
from fastdit.config import EngineConfig, get_config
from fastdit.errors import ProviderError  # re-exported
from fastdit.ops._checks import describe_args  # re-exported

log = logging.getLogger("fastdit.ops")

# Modules whose import registers providers (declaratively: no kernel is built on import).
PROVIDER_MODULES = (
    "fastdit.ops.native",
    "fastdit.kernels.triton",
    "fastdit.kernels.compiled",
    "fastdit.kernels.aiter",
    "fastdit.kernels.attention",
    "fastdit.kernels.cublaslt",
    "fastdit.kernels.scaled_mm",
)
#: configurations whose provider choices are kept (least recently used first out)
MAX_CONFIGS = 32
#: argument signatures kept per op and configuration (oldest first out)
MAX_PLANS = 512
#: the provider that always runs, per op (the platform-independent fallback)
FALLBACK = {"attention": "sdpa"}


def _always(*_args: Any, **_kwargs: Any) -> bool:
    return True


@dataclass(eq=False)
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
    # False for lossy providers: chosen only when the configuration names them.
    exact: bool = True
    # (config, *args, **kwargs) -> the function to run for calls with this signature
    specialize: Callable[..., Callable[..., Any]] | None = None
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

    def function_for(self, config: EngineConfig, args: tuple, kwargs: dict) -> Callable[..., Any]:
        """What a plan calls for this signature under ``config``."""
        if self.specialize is None:
            return self.fn
        return self.specialize(config, *args, **kwargs)


class Plan:
    """The dispatch decision for one argument signature: the provider and the function to call."""

    __slots__ = ("op", "provider", "fn")

    def __init__(self, op: str, provider: Provider, fn: Callable[..., Any]) -> None:
        self.op, self.provider, self.fn = op, provider, fn

    def __repr__(self) -> str:
        return f"Plan({self.op} -> {self.provider.name})"


@dataclass
class _Priority:
    providers: tuple[Provider, ...]
    requested: frozenset[str]  # names the configuration gives for this op
    strict: bool


class _State:
    """Everything cached for one configuration: priorities, availability, plans."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.priorities: dict[str, _Priority] = {}
        self.available: dict[tuple[str, str], tuple[bool, str]] = {}
        self.plans: defaultdict[str, dict[Any, Plan]] = defaultdict(dict)


_providers: dict[str, dict[str, Provider]] = {}
_planners: dict[str, Callable[..., Plan]] = {}  # op -> its public op's plan function
_signatures: dict[str, inspect.Signature] = {}  # op -> its public op's signature
_loaded = False
_lock = threading.RLock()
_states: OrderedDict[EngineConfig, _State] = OrderedDict()  # by value, least recent first
_by_id: dict[int, tuple[EngineConfig, int, _State]] = {}  # id(config) -> (config, generation, state)
_states_generation = -1  # the config generation the cached states belong to
_logged: set[tuple] = set()


# ---------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------
def register(op: str, name: str, impl: str | Callable[..., Any], *,
             supported: Callable[[], bool] = _always,
             supports_args: Callable[..., bool] = _always, description: str = "",
             prefers: Callable[..., bool] = _always, exact: bool = True,
             specialize: Callable[..., Callable[..., Any]] | None = None) -> None:
    """Register provider ``name`` of ``op``; ``impl`` is a callable or ``"module:function"``."""
    with _lock:
        _providers.setdefault(op, {})[name] = Provider(op, name, impl, supported, supports_args,
                                                        description, prefers, exact, specialize)
        clear_caches()


def unregister(op: str) -> None:
    """Remove an op and its providers (tests)."""
    with _lock:
        _providers.pop(op, None)
        _planners.pop(op, None)
        _signatures.pop(op, None)
        clear_caches()


def define_op(op: str, public: Callable[..., Any], planner: Callable[..., Plan]) -> None:
    """Declare a public op: ``planner`` takes the op's arguments in signature order
    (positionally) and returns the call's :class:`Plan` (used by :func:`plan_for`)."""
    _signatures[op] = inspect.signature(public)  # once: plan_for binds arguments with it
    _planners[op] = planner


def clear_caches() -> None:
    """Forget every provider choice (new providers, or the machine's state changed)."""
    with _lock:
        _states.clear()
        _by_id.clear()


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        with _lock:
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


# ---------------------------------------------------------------------------------------
# per-configuration state
# ---------------------------------------------------------------------------------------
def _state() -> _State:
    """The cached state of the configuration in effect (a context-variable read and a dict
    lookup by identity on the hot path; by value when the configuration object is new)."""
    config = _cfg._scoped.get() or get_config()
    entry = _by_id.get(id(config))
    if entry is not None and entry[0] is config and entry[1] == _cfg._generation:
        return entry[2]
    return _state_slow(config)


def _state_slow(config: EngineConfig) -> _State:
    global _states_generation
    _ensure_loaded()
    with _lock:
        generation = _cfg._generation
        if generation != _states_generation:
            clear_caches()  # set_config was called: every cached choice is dropped
            _states_generation = generation
        state = _states.get(config)
        if state is None:
            state = _State(config)
            _check_names(state)  # raises for bad names: such a configuration is never cached
            _states[config] = state
            while len(_states) > MAX_CONFIGS:
                _states.popitem(last=False)
        else:
            _states.move_to_end(config)
        while len(_by_id) >= 2 * MAX_CONFIGS:
            _by_id.pop(next(iter(_by_id)))
        _by_id[id(config)] = (config, generation, state)
    return state


def _check_names(state: _State) -> None:
    """Op names in the configuration that no op has: an error in strict mode, else a warning;
    default provider names that no op has: an error."""
    kernel = state.config.kernel
    unknown = sorted(set(kernel.op_providers) - set(_providers))
    if unknown:
        message = (f"FASTDIT_OP_PROVIDERS names unknown op(s) {', '.join(unknown)}; known ops: "
                   f"{', '.join(sorted(_providers))}")
        if kernel.strict:
            raise ProviderError(message + " (strict mode)")
        _warn_once(("unknown-ops", tuple(unknown)), message + " (ignored)")
    every = {name for named in _providers.values() for name in named}
    typos = [name for name in kernel.default_providers if name not in every]
    if typos:
        raise ProviderError(f"FASTDIT_OP_PROVIDERS names unknown provider(s) {typos}; "
                            f"registered: {sorted(every)}")


def plans(op: str) -> dict[Any, Plan]:
    """The plans of ``op`` under the configuration in effect, by argument signature."""
    return _state().plans[op]


def availability(provider: Provider, state: _State | None = None) -> tuple[bool, str]:
    """``(available, reason)`` for ``provider`` here, cached per configuration."""
    state = state or _state()
    key = (provider.op, provider.name)
    found = state.available.get(key)
    if found is None:
        try:
            ok = bool(provider.supported())
            reason = "" if ok else _unsupported_reason(provider)
        except Exception as exc:  # a broken optional library must not break dispatch
            ok, reason = False, f"{type(exc).__name__}: {exc}"
            log.info("provider %s/%s unavailable: %s", provider.op, provider.name, reason)
        found = state.available[key] = (ok, reason)
    return found


def _unsupported_reason(provider: Provider) -> str:
    from fastdit.platforms import current_platform

    what = f" (it is: {provider.description})" if provider.description else ""
    return f"it does not run on platform {current_platform().name!r}{what}"


def is_supported(provider: Provider) -> bool:
    """``provider.supported()``, cached per configuration; an exception counts as no."""
    return availability(provider)[0]


def _priority(op: str, state: _State) -> _Priority:
    found = state.priorities.get(op)
    if found is not None:
        return found
    from fastdit.platforms import current_platform

    registered = providers(op)
    kernel = state.config.kernel
    if op in kernel.op_providers:
        requested = kernel.op_providers[op]
        unknown = [name for name in requested if name not in registered]
        if unknown:
            raise ProviderError(f"{op}: unknown provider(s) {unknown}; registered: {list(registered)}")
    else:  # the default list: names this op has no provider of do not apply to it
        requested = tuple(name for name in kernel.default_providers if name in registered)
    names = list(requested)
    for name in current_platform().provider_priority(op):
        if name in registered and name not in names and registered[name].exact:
            names.append(name)
    fallback = FALLBACK.get(op, "native")
    if fallback in registered and fallback not in names:
        names.append(fallback)
    found = _Priority(tuple(registered[n] for n in names), frozenset(requested), kernel.strict)
    state.priorities[op] = found
    return found


def priority(op: str) -> tuple[Provider, ...]:
    """The providers of ``op`` in the order dispatch tries them (configured first)."""
    return _priority(op, _state()).providers


# ---------------------------------------------------------------------------------------
# choosing a provider, plans
# ---------------------------------------------------------------------------------------
def choose(op: str, args: tuple, kwargs: dict, state: _State | None = None) -> Provider:
    """The provider that runs this call (predicates asked now; nothing cached here)."""
    state = state or _state()
    prio = _priority(op, state)
    skipped: list[str] = []  # providers that cannot take the call
    deferred: list[str] = []  # providers that can, but leave it to a faster one
    first_available = True
    for provider in prio.providers:
        named = provider.name in prio.requested
        ok, reason = availability(provider, state)
        if not ok:
            if named:
                message = (f"{op}: provider {provider.name!r} was requested but is not available "
                           f"on this machine: {reason}")
                if prio.strict:
                    raise ProviderError(message + " (strict mode)")
                _warn_once(("unavailable", op, provider.name), message + "; using the next provider")
            continue
        first, first_available = first_available, False
        if provider.supports_args(*args, **kwargs):
            if not named and not provider.prefers(*args, **kwargs):
                deferred.append(provider.name)
                continue
            _log_choice(op, provider.name, skipped, deferred, args, kwargs)
            return provider
        if named:
            message = (f"{op}: provider {provider.name!r} was requested but cannot take this call "
                       f"({describe_args(args, kwargs)})")
            if prio.strict:
                raise ProviderError(message + " and strict mode forbids falling back")
            _warn_once(("declined", op, provider.name), message + "; using the next provider")
            continue
        if prio.strict and not prio.requested and first:
            raise ProviderError(
                f"{op}: provider {provider.name!r}, the first available one, cannot take this call "
                f"({describe_args(args, kwargs)}) and strict mode forbids falling back")
        skipped.append(provider.name)
    if deferred:
        _log_choice(op, deferred[0], skipped, [], args, kwargs)
        return providers(op)[deferred[0]]
    raise ProviderError(f"{op}: no provider can take this call ({describe_args(args, kwargs)})")


def new_plan(op: str, key: Any, args: tuple, kwargs: dict) -> Plan:
    """Choose the provider for a call whose signature ``key`` has no plan yet (the op has
    checked the arguments) and keep the plan."""
    state = _state()
    provider = choose(op, args, kwargs, state)
    plan = Plan(op, provider, provider.function_for(state.config, args, kwargs))
    with _lock:
        table = state.plans[op]
        while len(table) >= MAX_PLANS:
            table.pop(next(iter(table)))
        try:
            table[key] = plan
        except TypeError:  # an unhashable setting the checks accepted: not cached
            pass
    return plan


def plan_for(op: str, *args: Any, **kwargs: Any) -> Plan:
    """The plan a call of the public op ``op`` with these arguments runs (tools, benchmarks)."""
    _ensure_loaded()
    planner = _planners.get(op)
    if planner is None:  # an op without a public function (tests): not cached
        provider = choose(op, args, kwargs)
        return Plan(op, provider, provider.function_for(_state().config, args, kwargs))
    bound = _signatures[op].bind(*args, **kwargs)
    bound.apply_defaults()
    return planner(*bound.arguments.values())


def resolve(op: str, *args: Any, **kwargs: Any) -> Provider:
    """The provider that a call of ``op`` with these arguments runs."""
    return plan_for(op, *args, **kwargs).provider


def dispatch(op: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``op`` (by name) with the provider its plan names."""
    return plan_for(op, *args, **kwargs).fn(*args, **kwargs)


def call_provider(op: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Run one named provider directly (tests and benchmarks); raises if it cannot."""
    provider = providers(op)[name]
    ok, reason = availability(provider)
    if not ok:
        raise ProviderError(f"{op}: provider {name!r} is not available on this machine: {reason}")
    if not provider.supports_args(*args, **kwargs):
        raise ProviderError(f"{op}: provider {name!r} cannot take {describe_args(args, kwargs)}")
    return provider.function_for(get_config(), args, kwargs)(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------------------
def _warn_once(key: tuple, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        log.warning("%s", message)


def _log_choice(op: str, name: str, skipped: list[str], deferred: list[str], args: tuple,
                kwargs: dict) -> None:
    """Log the choice once per (op, provider, providers passed over); the arguments are only
    formatted then."""
    key = (op, name, tuple(skipped), tuple(deferred))
    if key in _logged:
        return
    _logged.add(key)
    reasons = [f"fell back past {', '.join(skipped)}: cannot take {describe_args(args, kwargs)}"
               ] if skipped else []
    reasons += [f"{d} defers this shape to a faster provider" for d in deferred]
    log.log(logging.WARNING if skipped else logging.INFO, "op %s -> provider %s%s", op, name,
            f" ({'; '.join(reasons)})" if reasons else "")


# ---------------------------------------------------------------------------------------
# the table `fastdit ops` prints
# ---------------------------------------------------------------------------------------
def provider_table() -> list[dict[str, Any]]:
    """Per op: registered providers, the priority order, which are available here (and why
    not), which lossy ones exist, and the first available one: what runs for a call that
    provider can take (``fastdit ops --shape`` asks what runs for a given call)."""
    rows = []
    for op in op_names():
        ordered = priority(op)
        registered = providers(op)
        status = {name: availability(p) for name, p in registered.items()}
        rows.append({
            "op": op,
            "providers": list(registered),
            "priority": [p.name for p in ordered],
            "available": [name for name, (ok, _) in status.items() if ok],
            "unavailable": {name: reason for name, (ok, reason) in status.items() if not ok},
            "lossy": [name for name, p in registered.items() if not p.exact],
            "first_available": next((p.name for p in ordered if status[p.name][0]), None),
        })
    return rows


def signature(value: Any) -> Any:
    """One argument's part of a plan key: a tensor's shape, strides, dtype and device; the type
    of anything else (a number's value does not change the choice)."""
    if isinstance(value, torch.Tensor):
        return (value.shape, value.stride(), value.dtype, value.device)
    return type(value)

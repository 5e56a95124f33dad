"""The native ops under ``torch.compile``, built per dispatch plan, safe over shape changes.

A long-lived process (a server, a multi-resolution script) calls each op with many shapes.
Three things keep that from ever failing:

* **Dynamic shapes.** Compilation follows :class:`fastdit.config.CompileConfig`: by default
  (``dynamic=None``) a shape is compiled as seen and, on the first size change, once more with
  symbolic sizes for the dimensions that changed, which then serves every later size.
* **A compiled function per call structure.** Calls that differ in more than sizes (dtypes,
  ranks, a modulation given as a number instead of a tensor, ``norm="rms"``, ...) each get
  their own compiled copy of the spec (a copy of its code object), so their recompilations
  never count against one another's recompile limit.
* **A logged fall-back.** Should torch.compile still refuse a call (its recompile limit hit),
  the plan for that shape logs a WARNING once and runs the native op from then on: never an
  exception.
"""

from __future__ import annotations

import logging
import threading
import types
from typing import Any, Callable

import torch

from fastdit.config import CompileConfig, EngineConfig, get_config
from fastdit.ops._checks import describe_args
from fastdit.ops.native import NATIVE_SPEC
from fastdit.ops.registry import providers
from fastdit.platforms import current_platform

log = logging.getLogger("fastdit.ops")

#: Every op with a native spec except the attention ops (fused kernels) and the
#: matrix products (cuBLAS, not the compiler, is what runs them fast).
COMPILED_OPS = tuple(op for op in NATIVE_SPEC
                     if op not in ("attention", "attention_fp8_out", "linear", "linear_gelu_tanh",
                                   "linear_fp8"))
#: compiled functions kept per op (one per call structure; oldest first out)
MAX_STRUCTURES = 64

_compiled: dict[tuple, Callable[..., Any]] = {}
_lock = threading.Lock()


def compiled_supported() -> bool:
    return current_platform().compile_dependable and get_config().compile.enabled


def recompile_errors() -> tuple[type[BaseException], ...]:
    """The exceptions torch.compile raises when it will not compile a call again (names vary
    across torch releases)."""
    exc = getattr(torch, "_dynamo").exc
    names = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit", "RecompileLimitExceeded",
             "CacheLimitExceeded")
    return tuple(getattr(exc, name) for name in names if hasattr(exc, name))


def structure(value: Any) -> Any:
    """What separates one compiled function from another: everything about an argument but
    its sizes and strides (dtype, rank and device of a tensor; a number's type; other values)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, value.dim(), value.device.type)
    if isinstance(value, (bool, str)) or value is None:
        return value
    return type(value)


def _code_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its own code object: torch.compile keeps its caches (and counts its
    recompilations) per code object."""
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__kwdefaults__ = dict(fn.__kwdefaults__ or {})
    copy.__qualname__, copy.__doc__ = fn.__qualname__, fn.__doc__
    return copy


def compiled_function(op: str, settings: CompileConfig, key: tuple) -> Callable[..., Any]:
    """The compiled native spec of ``op`` for calls of structure ``key`` (built once)."""
    full_key = (op, settings, key)
    found = _compiled.get(full_key)
    if found is None:
        with _lock:
            found = _compiled.get(full_key)
            if found is None:
                native = providers(op)["native"].fn
                found = torch.compile(_code_copy(native), fullgraph=settings.fullgraph,
                                      dynamic=settings.dynamic, mode=settings.mode,
                                      backend=settings.backend)
                same_op = [k for k in _compiled if k[0] == op]
                if len(same_op) >= MAX_STRUCTURES:
                    del _compiled[same_op[0]]
                _compiled[full_key] = found
    return found


def make_specialize(op: str) -> Callable[..., Callable[..., Any]]:
    """The ``specialize`` hook of ``op``'s compiled provider: the function a plan runs."""

    def specialize(config: EngineConfig, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        key = tuple(map(structure, args)) + tuple((k, structure(v)) for k, v in kwargs.items())
        return guarded(op, compiled_function(op, config.compile, key))

    return specialize


def guarded(op: str, compiled: Callable[..., Any]) -> Callable[..., Any]:
    """``compiled``, falling back to the native op (logged once) if torch.compile refuses."""
    native = providers(op)["native"].fn
    errors = recompile_errors()
    refused: list[bool] = []

    def run(*args: Any, **kwargs: Any) -> Any:
        if refused:
            return native(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except errors as exc:
            refused.append(True)
            log.warning("op %s: the compiled provider cannot compile %s again (%s: %s); this "
                        "shape runs the native op from now on", op, describe_args(args, kwargs),
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return native(*args, **kwargs)

    run.__name__ = f"{op}_compiled"
    return run


def make_compiled(op: str) -> Callable[..., Any]:
    """The provider's plain function (``call_provider`` without a plan): the spec compiled
    for the configuration in effect, per call structure."""
    specialize = make_specialize(op)

    def run(*args: Any, **kwargs: Any) -> Any:
        return specialize(get_config(), *args, **kwargs)(*args, **kwargs)

    run.__name__ = f"{op}_compiled"
    return run

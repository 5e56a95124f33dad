"""Lazily compiled native ops (compiled on first call, once per op)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from fastdit.config import get_config
from fastdit.ops.native import NATIVE_SPEC
from fastdit.ops.registry import providers
from fastdit.platforms import current_platform

#: Every op with a native spec except attention (SDPA is already a fused kernel) and the
#: matrix products (cuBLAS, not the compiler, is what runs them fast).
COMPILED_OPS = tuple(op for op in NATIVE_SPEC if op not in ("attention", "linear", "linear_gelu_tanh"))


def compiled_supported() -> bool:
    return current_platform().compile_dependable and get_config().compile.enabled


def make_compiled(op: str) -> Callable[..., Any]:
    """A function that compiles ``op``'s native spec on its first call and then reuses it."""
    compiled: list[Callable[..., Any]] = []

    def run(*args: Any, **kwargs: Any) -> Any:
        if not compiled:
            native = providers(op)["native"].fn
            settings = get_config().compile
            compiled.append(torch.compile(native, fullgraph=settings.fullgraph,
                                          dynamic=settings.dynamic, mode=settings.mode))
        return compiled[0](*args, **kwargs)

    run.__name__ = f"{op}_compiled"
    return run

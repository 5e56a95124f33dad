"""Lazily compiled native ops (compiled on first call, once per op)."""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from fastdit.config import get_config
from fastdit.platforms import current_platform

COMPILED_OPS = {
    "rms_norm": "fastdit.ops.norm:rms_norm_native",
    "layer_norm_scale_shift": "fastdit.ops.norm:layer_norm_scale_shift_native",
    "scale_residual_norm_scale_shift": "fastdit.ops.norm:scale_residual_norm_scale_shift_native",
    "norm_tanh_mul_add": "fastdit.ops.norm:norm_tanh_mul_add_native",
    "mul_add": "fastdit.ops.elementwise:mul_add_native",
    "scale_shift": "fastdit.ops.elementwise:scale_shift_native",
    "rope_qk_": "fastdit.ops.rope:rope_qk_native",
    "rope_qk_cache_store": "fastdit.ops.rope:rope_qk_cache_store_native",
    "rms_norm_rope_": "fastdit.ops.rope:rms_norm_rope_native",
}


def compiled_supported() -> bool:
    return current_platform().compile_dependable and get_config().compile.enabled


def make_compiled(op: str) -> Callable[..., Any]:
    """A function that compiles ``op``'s native spec on its first call and then reuses it."""
    compiled: list[Callable[..., Any]] = []

    def run(*args: Any, **kwargs: Any) -> Any:
        if not compiled:
            module_name, _, attr = COMPILED_OPS[op].partition(":")
            native = getattr(importlib.import_module(module_name), attr)
            settings = get_config().compile
            compiled.append(torch.compile(native, fullgraph=settings.fullgraph,
                                          dynamic=settings.dynamic, mode=settings.mode))
        return compiled[0](*args, **kwargs)

    run.__name__ = f"{op}_compiled"
    return run

"""The ``compiled`` provider: each op's native specification under ``torch.compile``.

Registered for every op but attention and linear_gelu_tanh, and supported only where the platform's compiler is
dependable (not on NPU) and compilation is enabled in :class:`fastdit.config.CompileConfig`.
"""

from __future__ import annotations

from fastdit.kernels.compiled.ops import COMPILED_OPS, compiled_supported, make_compiled
from fastdit.ops.registry import register

for _op in COMPILED_OPS:
    register(_op, "compiled", make_compiled(_op), supported=compiled_supported,
             description="native op under torch.compile")

"""The ``compiled`` provider: each op's native specification under ``torch.compile``.

Registered for every op but attention and the matrix products, and supported only where the
platform's compiler is dependable (not on NPU) and compilation is enabled in
:class:`fastdit.config.CompileConfig`. Each dispatch plan gets the compiled function for its
call structure (``specialize``); shapes change freely (dynamic shapes, a logged fall-back to
the native op should torch.compile ever refuse a call): see :mod:`.ops`.
"""

from __future__ import annotations

from fastdit.kernels.compiled.ops import COMPILED_OPS, compiled_supported, make_compiled, make_specialize
from fastdit.ops.registry import register

for _op in COMPILED_OPS:
    register(_op, "compiled", make_compiled(_op), supported=compiled_supported,
             specialize=make_specialize(_op), description="native op under torch.compile")

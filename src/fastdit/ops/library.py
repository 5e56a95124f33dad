"""The ops as ``torch.library`` custom ops (namespace ``fastdit``): what compiled code calls.

Under ``torch.compile`` (and ``torch.export``) each public op calls its custom op, so that a
model region traces into a graph in which every fastdit op is one opaque node, with no graph
break and no need for an eager call first (Dynamo never looks inside the registry). The
custom op's

* **kernel** (run when the compiled graph runs) is the public op's eager path: the dispatch
  plan for the call's signature, then the provider;
* **fake implementation** (run on fake tensors while tracing) checks the arguments as the
  public op does and runs the native specification, so the graph gets the spec's output
  shapes and dtypes; ops that write in place return nothing, and ops whose spec cannot run on
  fake tensors (data-dependent indexing) build empty outputs of the right shape instead.

Outputs are contiguous (the kernel makes them so when a provider returns a strided view), so
the layout the fake implementation promises holds for every provider.

Schemas cannot take "a number or a tensor", so each modulation argument (``shift``, ``scale``,
``gate``, a scale of an fp8 cache) becomes two: ``Tensor? name`` and ``float name_number``
(the tensor, or None and the number). In eager mode the public ops do not go through these
custom ops (the dispatcher round trip costs about 9 us per call): they call their plan
directly.
"""

from __future__ import annotations

import inspect
import string
from typing import Any, Callable, Sequence

import torch

LIB = torch.library.Library("fastdit", "FRAGMENT")  # kept alive for the process

# parameter kinds -> schema text ({n}: the name; {a}: an alias letter for written tensors)
_KINDS = {
    "Tensor": "Tensor {n}",
    "Tensor?": "Tensor? {n}",
    "Tensor!": "Tensor({a}!) {n}",
    "mod": "Tensor? {n}, float {n}_number",  # a modulation: a tensor, or a number
    "mod?": "Tensor? {n}, float? {n}_number",  # the same, or None
    "float": "float {n}",
    "float?": "float? {n}",
    "int?": "SymInt? {n}",
    "bool": "bool {n}",
    "str": "str {n}",
    "dtype?": "ScalarType? {n}",
}


def _contiguous(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.contiguous()
    if isinstance(value, tuple):
        return tuple(v.contiguous() for v in value)
    return value


class LibraryOp:
    """One public op as the custom op ``torch.ops.fastdit.<name>``.

    ``params``: ``(name, kind)`` for every parameter of ``public``, in its signature's order
    (kinds: the keys of ``_KINDS``); ``returns``: the schema's return type (``"()"`` for ops
    that only write in place). ``check`` and ``spec`` take the public op's arguments;
    ``fake`` (optional) replaces ``spec`` while tracing when the spec cannot run on fake tensors.
    """

    def __init__(self, name: str, public: Callable[..., Any], params: Sequence[tuple[str, str]],
                 returns: str, check: Callable[..., None], spec: Callable[..., Any] | None = None,
                 fake: Callable[..., Any] | None = None) -> None:
        self.name, self.public, self.params = name, public, tuple(params)
        self.check, self.spec, self.fake_outputs = check, spec, fake
        signature = inspect.signature(public)
        unknown = [n for n, _ in self.params if n not in signature.parameters]
        if unknown:
            raise TypeError(f"{name}: {public.__name__}{signature} has no parameter(s) {unknown}")
        self.writes = returns == "()"
        letters = iter(string.ascii_lowercase)
        schema = ", ".join(_KINDS[kind].format(n=n, a=next(letters) if kind == "Tensor!" else "")
                           for n, kind in self.params)
        LIB.define(f"{name}({schema}) -> {returns}")
        LIB.impl(name, self._kernel, "CompositeExplicitAutograd")
        torch.library.register_fake(f"fastdit::{name}", self._fake, lib=LIB)
        self.op = getattr(torch.ops.fastdit, name).default

    # ---- the public op's side: Python values -> schema values ---------------------------
    def __call__(self, *values: Any) -> Any:
        """Call the custom op with the public op's arguments, all given in ``params`` order."""
        packed: list[Any] = []
        for (_, kind), value in zip(self.params, values):
            if kind in ("mod", "mod?"):
                if isinstance(value, torch.Tensor):
                    packed += [value, 0.0 if kind == "mod" else None]
                else:
                    packed += [None, None if value is None else float(value)]
            elif kind == "float":
                packed.append(float(value))
            else:
                packed.append(value)
        return self.op(*packed)

    # ---- the custom op's side: schema values -> the public op's arguments ---------------
    def _unpack(self, packed: Sequence[Any]) -> dict[str, Any]:
        """The public op's arguments, by name (every parameter can be given by keyword)."""
        values, i = {}, 0
        for name, kind in self.params:
            if kind in ("mod", "mod?"):
                tensor, number = packed[i], packed[i + 1]
                values[name] = number if tensor is None else tensor
                i += 2
            else:
                values[name] = packed[i]
                i += 1
        return values

    def _kernel(self, *packed: Any) -> Any:
        out = self.public(**self._unpack(packed))
        return None if self.writes else _contiguous(out)

    def _fake(self, *packed: Any) -> Any:
        kwargs = self._unpack(packed)
        self.check(**kwargs)
        if self.writes:
            return None
        if self.fake_outputs is not None:
            return self.fake_outputs(**kwargs)
        return _contiguous(self.spec(**kwargs))


def compiling() -> bool:
    """True while torch.compile / torch.export traces (the public ops then call custom ops)."""
    return torch.compiler.is_compiling()

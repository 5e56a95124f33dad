"""``fastdit ops``: the op / provider table of this machine.

Columns: the priority order dispatch tries (configured providers first, lossy ones marked
``*`` and only ever there when named), the providers available here, and the *first available*
one: what runs for a call that provider can take. A provider can still decline a call (dtype,
layout) or defer a shape to a faster one, so with ``--shape B,L,D`` the table also asks the
dispatcher what runs for a Wan-like call of that size (``fastdit.ops.examples``) on this
machine's device.
"""

from __future__ import annotations

import argparse
import json

from fastdit.config import get_config
from fastdit.errors import UserError

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _parse_shape(text: str, heads: int) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise UserError(f"--shape: expected B,L,D (three positive integers), got {text!r}")
    if heads < 1 or sizes[2] % heads or (sizes[2] // heads) % 2:
        raise UserError(f"--shape/--heads: D={sizes[2]} must split into {heads} heads of an even "
                        "size")
    return sizes  # type: ignore[return-value]


def probe(rows: list[dict], shape: tuple[int, int, int], heads: int, dtype_name: str) -> None:
    """Add ``runs`` to every row: the provider dispatch picks for an example call of ``shape``."""
    import torch

    from fastdit.errors import ProviderError
    from fastdit.ops.examples import example_call
    from fastdit.ops.registry import plan_for
    from fastdit.platforms import current_platform

    batch, tokens, dim = shape
    dtype = getattr(torch, DTYPES[dtype_name])
    device = current_platform().device()
    for row in rows:
        try:
            args, kwargs = example_call(row["op"], batch, tokens, dim, heads, dtype, device)
        except RuntimeError as exc:  # the platform's device is absent
            raise UserError(f"--shape: cannot make tensors on {device}: {exc}") from None
        try:
            row["runs"] = plan_for(row["op"], *args, **kwargs).provider.name
        except ProviderError as exc:  # strict mode: what would have raised
            row["runs"] = f"error: {exc}"


def _precision_scope(text: str | None):
    """``(PrecisionConfig, providers, scope)`` for ``--quantize``: the scope names the
    setting's self-attention providers first, as a model loaded with it does."""
    import contextlib

    from fastdit.config import get_config, use_config
    from fastdit.errors import InputError
    from fastdit.quant.config import parse_quantize

    try:
        precision = parse_quantize(text)
    except InputError as exc:
        raise UserError(f"--quantize: {exc}".replace("quantize: quantize", "quantize")) from None
    if precision.exact:
        return precision, (), contextlib.nullcontext()
    from fastdit.platforms import current_platform
    from fastdit.quant.apply import PrecisionAttention, attention_providers

    names = attention_providers(precision, current_platform().device())
    if not names:
        return precision, (), contextlib.nullcontext()
    return precision, names, use_config(PrecisionAttention(names).config_for(get_config()))


def _cmd_ops(args: argparse.Namespace) -> int:
    shape = _parse_shape(args.shape, args.heads) if args.shape else None  # before importing torch
    from fastdit.ops.registry import provider_table
    from fastdit.platforms import current_platform

    platform = current_platform()
    precision, attention_names, scope = _precision_scope(args.quantize)
    with scope:  # the attention row as the quantised model's self-attention sees it
        rows = provider_table()
        if shape is not None:
            probe(rows, shape, args.heads, args.dtype)
    probed = f"runs at {args.shape} {args.dtype}" if shape else None
    precision_info = {"quantize": precision.spec(), "exact": precision.exact,
                      "attention": precision.attention, "linear": precision.linear,
                      "self_attention_providers": list(attention_names)}
    if args.json:
        print(json.dumps({"platform": platform.describe(), "probe": probed,
                          "precision": precision_info, "ops": rows}, indent=2))
        return 0
    info = platform.describe()
    print(f"platform: {info['platform']}  device: {info['device']}  "
          f"compute capability: {info['compute_capability']}  hopper: {info['hopper']}  "
          f"torch.compile dependable: {info['compile_dependable']}  "
          f"distributed: {info['dist_backend']}")
    print(f"strict mode: {get_config().kernel.strict}  "
          f"attention backend: {get_config().kernel.attention_backend}")
    print(precision.describe() + (f"; the attention row is the blocks' self-attention "
                                  f"(cross-attention stays exact)" if attention_names else ""))
    header = ["op", "priority (tried in order)", "available here", "first available"]
    if probed:
        header.append(probed)
    table = [header]
    for r in rows:
        cells = [r["op"], " > ".join(_mark(r, n) for n in r["priority"]) + _others(r),
                 ", ".join(_mark(r, n) for n in r["available"]), r["first_available"] or "-"]
        if probed:
            cells.append(r["runs"])
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print("first available: what runs for a call that provider can take; it may decline a call "
          "(dtype, layout) or defer a shape to a faster provider"
          + (f"; '{probed}': what dispatch picks for a Wan-like call of that size" if probed
             else " (--shape B,L,D asks what runs for a given size)"))
    if any(r["lossy"] for r in rows):
        print("*: lossy (not exact): runs only when named in FASTDIT_OP_PROVIDERS")
    reasons = sorted({(name, reason) for r in rows for name, reason in r["unavailable"].items()})
    if reasons:
        print("not available here:")
        for name, reason in _first_reason_per_provider(reasons):
            print(f"  {name}: {reason}")
    return 0


def _mark(row: dict, name: str) -> str:
    return f"{name}*" if name in row["lossy"] else name


def _others(row: dict) -> str:
    rest = [_mark(row, p) for p in row["providers"] if p not in row["priority"]]
    return f" (also: {', '.join(rest)})" if rest else ""


def _first_reason_per_provider(reasons: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for name, reason in reasons:
        seen.setdefault(name, reason)
    return list(seen.items())


def add_ops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ops", help="print the op/provider table for this machine")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--shape", metavar="B,L,D",
                   help="also show which provider runs a Wan-like call of this size")
    p.add_argument("--heads", type=int, default=12, help="attention heads for --shape (default 12)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                   help="activation dtype for --shape (default bf16)")
    p.add_argument("--quantize", default="none", metavar="PRESET",
                   help="show the providers a model loaded with this precision setting uses "
                        "(none, fp8, fp8:attention=exact, ...)")
    p.set_defaults(func=_cmd_ops)

"""Dispatch cost per op call on the CPU: the public op vs the provider's own function.

    PYTHONPATH=src python benchmarks/dispatch.py --out benchmarks/results/cpu-dispatch.json

For every op, on small tensors, it times

* ``op_us``: ``ops.<op>(...)`` with the provider this machine picks, and ``provider_us``: that
  provider's function called directly with the same arguments (for reference: on a shared
  CPU their difference is noisier than the dispatch cost itself);
* ``dispatch_us``: the dispatch cost alone, every op given a provider that does nothing
  (named in the configuration), the op timed against that function called directly:
  validation, provider choice and the call's overhead, what the op adds to any provider;
* ``resolve_triton_first_us`` (before dispatch plans only): the provider choice with CUDA's
  order (triton > compiled > native), the Triton predicates run as on a GPU (interpreter);
* ``custom_op_dispatch_us`` (``--custom-op``): the same for the ``torch.ops.fastdit`` custom op
  called eagerly (the path compiled graphs take), to show why eager code calls its plan
  directly (``custom_op_us``: the custom op with the real provider).

Each figure is the minimum over ``--repeats`` loops of ``--calls`` calls (the least
disturbed run on a shared machine), the timed loops interleaved.

It runs against the op signatures before and after the keyword-only modulation change, so
that the same script measures both (``--label`` names the run; ``--merge`` adds the run to an
existing JSON file under ``runs``).
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import platform as _platform
import sys
import time
from typing import Callable

import torch

import fastdit.ops as ops
from fastdit.ops import registry


def _rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=torch.float32).to(dtype)


def _takes_keyword(fn: Callable, name: str) -> bool:
    param = inspect.signature(fn).parameters.get(name)
    return param is not None and param.kind is inspect.Parameter.KEYWORD_ONLY


def cases(batch: int = 1, tokens: int = 16, dim: int = 64, heads: int = 2
          ) -> dict[str, tuple[tuple, dict]]:
    """name -> (args, kwargs) of a small call of each op (Wan-like: fp32 modulations [B, 1, D])."""
    head_dim = dim // heads
    x, res = _rand(batch, tokens, dim), _rand(batch, tokens, dim)
    shift, scale, gate = (_rand(batch, 1, dim) * 0.1 for _ in range(3))
    weight, bias = _rand(dim), _rand(dim)
    theta = torch.rand(tokens, head_dim // 2) * 6
    cos, sin = theta.cos(), theta.sin()
    q, k, v = (_rand(batch, tokens, heads, head_dim) for _ in range(3))
    w_lin, b_lin = _rand(2 * dim, dim) * 0.1, _rand(2 * dim)
    keyword = _takes_keyword(ops.layer_norm_scale_shift, "shift")  # after the signature change
    out = {
        "rms_norm": ((x, weight, 1e-6), {}),
        "rms_norm+residual": ((x, weight, 1e-6), {"residual": res}),
    }
    if keyword:
        out.update({
            "layer_norm_scale_shift": ((x,), {"shift": shift, "scale": scale}),
            "layer_norm_scale_shift(numbers)": ((x,), {"shift": 0.0, "scale": 0.0,
                                                       "weight": weight, "bias": bias}),
            "scale_residual_norm_scale_shift": ((res, x), {"shift": shift, "scale": scale,
                                                           "gate": gate}),
            "norm_tanh_mul_add": ((x,), {"shift": shift, "scale": scale}),
            "mul_add": ((x, res), {"gate": gate}),
            "scale_shift": ((x,), {"shift": shift, "scale": scale}),
        })
    else:
        out.update({
            "layer_norm_scale_shift": ((x, shift, scale), {}),
            "layer_norm_scale_shift(numbers)": ((x, 0.0, 0.0), {"weight": weight, "bias": bias}),
            "scale_residual_norm_scale_shift": ((res, x, gate, shift, scale), {}),
            "norm_tanh_mul_add": ((x, scale, shift), {}),
            "mul_add": ((x, gate, res), {}),
            "scale_shift": ((x, scale, shift), {}),
        })
    out.update({
        "rope_qk_": ((q[0], k[0], cos, sin), {}),
        "rms_norm_rope_": ((q, _rand(dim), cos, sin), {}),
        "attention": ((q, k, v), {}),
        "linear": ((x, w_lin, b_lin), {}),
        "linear_gelu_tanh": ((x, w_lin, b_lin), {}),
    })
    slots = torch.arange(tokens)
    cache = torch.zeros(4, tokens, heads, head_dim)
    out["rope_qk_cache_store"] = ((q[0], k[0], v[0], cache, cache.clone(), slots, slots,
                                   torch.cat([cos, sin], 1)), {})
    return out


def _op_name(case: str) -> str:
    return case.split("+")[0].split("(")[0]


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1e3


def _best(timers: dict[str, Callable[[], object]], calls: int, repeats: int) -> dict[str, float]:
    """Minimum per-call time of each timer over ``repeats`` interleaved loops."""
    for fn in timers.values():  # warm-up: plans built, lazy imports done
        for _ in range(20):
            fn()
    best = {key: float("inf") for key in timers}
    for _ in range(repeats):
        for key, fn in timers.items():
            best[key] = min(best[key], _per_call_us(fn, calls))
    return best


def _provider_fn(op: str, args: tuple, kwargs: dict) -> tuple[str, Callable]:
    """The provider dispatch picks for this call, and the function it runs."""
    plan_for = getattr(registry, "plan_for", None)
    if plan_for is not None:  # dispatch plans: the function the plan calls
        plan = plan_for(op, *args, **kwargs)
        return plan.provider.name, plan.fn
    provider = registry.resolve(op, *args, **kwargs)
    return provider.name, provider.fn


def measure(case: str, args: tuple, kwargs: dict, calls: int, repeats: int,
            custom_op: bool) -> dict:
    """The op with the provider this machine picks, that provider's function alone, and
    (``custom_op``) the torch.ops.fastdit custom op called eagerly."""
    op = _op_name(case)
    public = getattr(ops, op)
    name, direct = _provider_fn(op, args, kwargs)
    timers = {"op_us": lambda: public(*args, **kwargs), "provider_us": lambda: direct(*args, **kwargs)}
    if custom_op:
        lib = _library_op(op, kwargs)
        ordered = _in_order(lib, args, kwargs)
        timers["custom_op_us"] = lambda: lib(*ordered)
    best = _best(timers, calls, repeats)
    row = {"case": case, "op": op, "provider": name, **{k: round(v, 2) for k, v in best.items()}}
    if custom_op:
        row["custom_op_over_provider_us"] = round(best["custom_op_us"] - best["provider_us"], 2)
    return row


def _library_op(op: str, kwargs: dict):
    import importlib

    module = importlib.import_module(ops.__dict__[op].__module__)
    suffix = "_RESIDUAL" if kwargs.get("residual") is not None else ""
    names = {"scale_residual_norm_scale_shift": "SCALE_RESIDUAL", "rope_qk_": "ROPE_QK",
             "rms_norm_rope_": "RMS_NORM_ROPE", "rope_qk_cache_store": "CACHE_STORE"}
    return getattr(module, f"_LIB_{names.get(op, op.upper())}{suffix}")


def _in_order(lib, args: tuple, kwargs: dict) -> list:
    """The public op's arguments in the custom op's parameter order."""
    public = inspect.signature(lib.public).bind(*args, **kwargs)
    public.apply_defaults()
    return [public.arguments[name] for name, _ in lib.params]


def null_dispatch(calls: int, repeats: int, wanted: set, custom_op: bool) -> dict[str, dict]:
    """Dispatch cost alone: every op given a provider that does nothing (named in the
    configuration, so it runs), the op timed against that function called directly (and,
    with ``custom_op``, the custom op called eagerly against it)."""
    from fastdit.config import EngineConfig, KernelConfig, set_config

    empty = torch.empty(0)

    def null_for(op):
        pair = op in ("scale_residual_norm_scale_shift", "rope_qk_cache_store")

        def null(*_args, residual=None, **_kwargs):
            return (empty, empty) if pair or residual is not None else empty

        return null

    all_cases = cases()
    names = sorted({_op_name(c) for c in all_cases})
    nulls = {op: null_for(op) for op in names}
    for op in names:
        registry.register(op, "null", nulls[op])
    set_config(EngineConfig(kernel=KernelConfig(op_providers={op: ("null",) for op in names})))
    rows = {}
    for case, (call_args, call_kwargs) in all_cases.items():
        if wanted and case not in wanted:
            continue
        op = _op_name(case)
        public, null = getattr(ops, op), nulls[op]
        timers = {"op_null_us": lambda: public(*call_args, **call_kwargs),
                  "null_us": lambda: null(*call_args, **call_kwargs)}
        if custom_op:
            lib = _library_op(op, call_kwargs)
            ordered = _in_order(lib, call_args, call_kwargs)
            timers["custom_op_null_us"] = lambda: lib(*ordered)
        best = _best(timers, calls, repeats)
        rows[case] = {k: round(v, 2) for k, v in best.items()}
        rows[case]["dispatch_us"] = round(best["op_null_us"] - best["null_us"], 2)
        if custom_op:
            rows[case]["custom_op_dispatch_us"] = round(best["custom_op_null_us"] - best["null_us"], 2)
    return rows


def triton_first_resolve(calls: int, repeats: int, wanted: set) -> dict[str, float]:
    """Before dispatch plans: the provider choice alone with CUDA's order (triton > compiled >
    native), the Triton provider made available by its interpreter, so that its predicates
    run as on a GPU. (With plans the choice is made once per signature: nothing to time.)"""
    from fastdit.config import EngineConfig, KernelConfig, get_config, set_config

    if hasattr(registry, "plan_for"):
        return {}
    try:
        import triton  # noqa: F401
    except ImportError:
        return {}
    saved = get_config()
    set_config(EngineConfig(kernel=KernelConfig(default_providers=("triton", "compiled", "native"),
                                                triton_interpret=True)))
    out = {}
    try:
        for case, (call_args, call_kwargs) in cases().items():
            op = _op_name(case)
            if (wanted and case not in wanted) or op in ("attention", "linear", "linear_gelu_tanh"):
                continue
            out[case] = round(_best({"r": lambda: registry.resolve(op, *call_args, **call_kwargs)},
                                    calls, repeats)["r"], 2)
    finally:
        set_config(saved)
    return out


def environment() -> dict:
    return {"torch": torch.__version__, "python": sys.version.split()[0],
            "cpu": _platform.processor() or _platform.machine(), "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON output path")
    parser.add_argument("--label", default="run", help="name of this run in the JSON")
    parser.add_argument("--merge", action="store_true", help="add this run to an existing --out file")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--custom-op", action="store_true",
                        help="also time the torch.ops.fastdit custom op called eagerly")
    parser.add_argument("--tiny", action="store_true", help="a few calls only (a smoke test)")
    parser.add_argument("--cases", default="", help="comma-separated subset")
    args = parser.parse_args(argv)
    if args.tiny:
        args.calls, args.repeats = 5, 2
    torch.set_num_threads(1)  # dispatch is host work; keep the providers' own time steady
    wanted = set(filter(None, args.cases.split(",")))
    rows = []
    with torch.no_grad():
        for case, (call_args, call_kwargs) in cases().items():
            if wanted and case not in wanted:
                continue
            rows.append(measure(case, call_args, call_kwargs, args.calls, args.repeats,
                                args.custom_op))
        triton_first = triton_first_resolve(args.calls, args.repeats, wanted)
        null = null_dispatch(args.calls, args.repeats, wanted, args.custom_op)  # last: new config
    for row in rows:
        row.update(null[row["case"]])
        if row["case"] in triton_first:
            row["resolve_triton_first_us"] = triton_first[row["case"]]
        print(f"{row['case']:34s} {row['provider']:6s} op {row['op_us']:7.2f} us  provider "
              f"{row['provider_us']:7.2f} us  | dispatch alone {row['dispatch_us']:5.2f} us"
              + (f"  | custom op dispatch {row['custom_op_dispatch_us']:6.2f} us"
                 if args.custom_op else "")
              + (f"  | triton-first choice {row['resolve_triton_first_us']:5.2f} us"
                 if "resolve_triton_first_us" in row else ""), flush=True)
    run = {"env": environment(), "calls": args.calls, "repeats": args.repeats, "rows": rows}
    result = {"runs": {}}
    if args.merge:
        try:
            with open(args.out) as f:
                result = json.load(f)
        except FileNotFoundError:
            pass
    result.setdefault("runs", {})[args.label] = run
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

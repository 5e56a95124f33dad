"""Time every provider of every op at Wan shapes on a GPU; write JSON.

    python benchmarks/ops.py --out benchmarks/results/ops-h100.json

Each case is timed with ``triton.testing.do_bench`` (median) for every available provider,
plus torch eager (the native spec, i.e. plain torch), torch.compile of it (the ``compiled``
provider), and for ``rope_qk_cache_store`` the two-step baseline (rotate with the chosen
``rope_qk_`` provider, then scatter into the cache with torch indexing). Bandwidth counts
each input read once and each output written once, and is reported next to the measured
device-to-device copy bandwidth.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from fastdit.ops.registry import call_provider, is_supported, priority, providers, resolve

ROPE_HEADS = (12, 40)  # Wan2.1-1.3B and 14B
DIMS = (1536, 5120)
TOKENS = 32760  # 480x832, 81 frames


@dataclass
class Case:
    op: str
    name: str
    make: Callable[[], tuple[tuple, dict]]
    nbytes: int
    flops: int = 0  # matrix products: reported as TFLOP/s too


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _rand(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device="cuda", dtype=torch.float32).to(dtype)


def norm_cases() -> list[Case]:
    cases = []
    for dim in DIMS:
        x = _rand(1, TOKENS, dim)
        res = _rand(1, TOKENS, dim)
        mod = [_rand(1, 1, dim, dtype=torch.float32) * 0.1 for _ in range(3)]
        w, b = _rand(dim, dtype=torch.float32), _rand(dim, dtype=torch.float32)
        wb = _rand(dim)
        tag = f"[1, {TOKENS}, {dim}]"
        cases += [
            Case("rms_norm", tag, lambda x=x, wb=wb: ((x[0], wb, 1e-6), {}), 2 * nbytes(x[0]) + nbytes(wb)),
            Case("rms_norm", tag + " +residual", lambda x=x, r=res, wb=wb: ((x[0], wb, 1e-6), {"residual": r[0]}),
                 4 * nbytes(x[0]) + nbytes(wb)),
            Case("layer_norm_scale_shift", tag, lambda x=x, m=mod: ((x,), {"shift": m[0], "scale": m[1],
                                                                          "eps": 1e-6}),
                 2 * nbytes(x) + nbytes(*mod[:2])),
            Case("scale_residual_norm_scale_shift", tag,
                 lambda x=x, r=res, m=mod, w=w, b=b: ((r, x), {"shift": m[0], "scale": m[1], "gate": m[2],
                                                               "weight": w, "bias": b}),
                 4 * nbytes(x) + nbytes(*mod, w, b)),
            Case("norm_tanh_mul_add", tag, lambda x=x, m=mod: ((x,), {"shift": m[1], "scale": m[0],
                                                                     "norm": "rms"}),
                 2 * nbytes(x) + nbytes(*mod[:2])),
            Case("mul_add", tag, lambda x=x, r=res, m=mod: ((x, r), {"gate": m[0]}),
                 3 * nbytes(x) + nbytes(mod[0])),
            Case("scale_shift", tag, lambda x=x, m=mod: ((x,), {"shift": m[1], "scale": m[0]}),
                 2 * nbytes(x) + nbytes(*mod[:2])),
        ]
    return cases


def rope_cases() -> list[Case]:
    cases = []
    theta = torch.rand(TOKENS, 64, device="cuda") * 6
    cos, sin = theta.cos(), theta.sin()
    for heads in ROPE_HEADS:
        q, k = _rand(TOKENS, heads, 128), _rand(TOKENS, heads, 128)
        cases.append(Case("rope_qk_", f"q,k [{TOKENS}, {heads}, 128]",
                          lambda q=q, k=k: ((q, k, cos, sin), {}), 4 * nbytes(q) + nbytes(cos, sin)))
        w = _rand(heads * 128)
        cases.append(Case("rms_norm_rope_", f"q [1, {TOKENS}, {heads}, 128]",
                          lambda q=q, w=w: ((q[None], w, cos, sin), {}), 2 * nbytes(q) + nbytes(w, cos, sin)))
    return cases


def cache_cases() -> list[Case]:
    tokens, hq, hk, dim, block = 4096, 32, 8, 128, 16
    q, k, v = _rand(tokens, hq, dim), _rand(tokens, hk, dim), _rand(tokens, hk, dim)
    blocks = 2 * tokens // block
    kc = torch.zeros(blocks, block, hk, dim, device="cuda", dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)
    slots = torch.randperm(blocks * block, device="cuda")[:tokens]
    positions = torch.arange(tokens, device="cuda")
    theta = torch.rand(8192, dim // 2, device="cuda") * 6
    cos_sin = torch.cat([theta.cos(), theta.sin()], 1)
    moved = 2 * nbytes(q) + 4 * nbytes(k) + nbytes(slots, positions) + tokens * dim * 4
    return [Case("rope_qk_cache_store", f"{tokens} tok, q {hq}x{dim}, kv {hk}x{dim}, bf16 cache",
                 lambda: ((q, k, v, kc, vc, slots, positions, cos_sin), {}), moved)]


def linear_cases() -> list[Case]:
    """The Wan FFN's first product + GELU (1.3B and 14B widths)."""
    cases = []
    for dim, ffn in ((1536, 8960), (5120, 13824)):
        x, w, b = _rand(TOKENS, dim), _rand(ffn, dim) * 0.02, _rand(ffn)
        cases.append(Case("linear_gelu_tanh", f"[{TOKENS}, {dim}] x [{ffn}, {dim}]",
                          lambda x=x, w=w, b=b: ((x, w, b), {}), nbytes(x, w, b) + TOKENS * ffn * 2,
                          flops=2 * TOKENS * dim * ffn))
    return cases


def two_op_norm_rope(q, k, weight, cos, sin):
    """Baseline: the unfused form, ``rms_norm`` on q and on k, then ``rope_qk_`` on both."""
    import fastdit.ops as ops

    q_normed = ops.rms_norm(q.flatten(-2), weight).view_as(q)
    k_normed = ops.rms_norm(k.flatten(-2), weight).view_as(k)
    return ops.rope_qk_(q_normed, k_normed, cos, sin)


def two_step_cache_store(q, k, v, kc, vc, slots, positions, cos_sin):
    """Baseline: rotate q and k with rope_qk_ (its chosen provider), then scatter with torch."""
    import fastdit.ops as ops

    half = q.shape[-1] // 2
    rows = cos_sin[positions]
    q_rot, k_rot = q.clone(), k.clone()
    ops.rope_qk_(q_rot, k_rot, rows[:, :half].contiguous(), rows[:, half:].contiguous())
    kc.view(-1, *kc.shape[2:])[slots] = k_rot
    vc.view(-1, *vc.shape[2:])[slots] = v
    return q_rot, k_rot


def _diffusers_adaln(x, shift, scale, eps=1e-6):
    """diffusers' Wan formulation: ``(FP32LayerNorm(x.float()) * (1 + scale) + shift).type_as(x)``."""
    y = torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return (y * (1 + scale) + shift).type_as(x)


def _diffusers_residual_adaln(residual, x, gate, shift, scale, weight=None, bias=None, eps=1e-6):
    """diffusers' Wan formulation of the gated residual followed by norm2 and modulation."""
    r = (residual.float() + x.float() * gate).type_as(residual)
    y = torch.nn.functional.layer_norm(r.float(), (r.shape[-1],), weight, bias, eps)
    return (y * (1 + scale) + shift).type_as(x), r


_DIFFUSERS_STYLE = {"layer_norm_scale_shift": _diffusers_adaln,
                    "scale_residual_norm_scale_shift": _diffusers_residual_adaln}
_compiled_baselines: dict = {}


def diffusers_style_compiled(op: str):
    if op not in _compiled_baselines:
        _compiled_baselines[op] = torch.compile(_DIFFUSERS_STYLE[op], fullgraph=True)
    return _compiled_baselines[op]


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (TB/s)."""
    import triton.testing

    src = torch.randn(256 * 1024 * 1024, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * nbytes(src) / (ms * 1e-3) / 1e12


def bench_case(case: Case) -> list[dict]:
    import triton.testing

    args, kwargs = case.make()
    rows = []
    timers = {name: (lambda n=name: call_provider(case.op, n, *args, **kwargs))
              for name, p in providers(case.op).items() if is_supported(p)
              and p.supports_args(*args, **kwargs)}
    if case.op == "rope_qk_cache_store":
        timers["two-step (rope_qk_ + torch scatter)"] = lambda: two_step_cache_store(*args)
    if case.op == "rms_norm_rope_":  # q and k of one attention layer, fused vs the two ops
        import fastdit.ops as ops

        x, w, cos, sin = args
        k = x.clone()
        timers["q and k: rms_norm_rope_ x2"] = lambda: (ops.rms_norm_rope_(x, w, cos, sin),
                                                        ops.rms_norm_rope_(k, w, cos, sin))
        timers["q and k: rms_norm x2 + rope_qk_"] = lambda: two_op_norm_rope(x, k, w, cos, sin)
    if case.op == "rms_norm" and "residual" not in kwargs:
        timers["torch F.rms_norm"] = lambda: torch.nn.functional.rms_norm(
            args[0], (args[0].shape[-1],), args[1], args[2])
    if case.op in _DIFFUSERS_STYLE:
        fn = diffusers_style_compiled(case.op)
        kw = {k: v for k, v in kwargs.items() if k != "norm"}
        timers["torch.compile (diffusers formulation)"] = lambda fn=fn, kw=kw: fn(*args, **kw)
    chosen = resolve(case.op, *args, **kwargs).name
    for label, fn in timers.items():
        ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        rows.append({"op": case.op, "case": case.name, "provider": label, "ms": ms,
                     "tb_s": case.nbytes / (ms * 1e-3) / 1e12, "chosen": label == chosen,
                     "bytes": case.nbytes, "tflops": case.flops / (ms * 1e-3) / 1e12})
    return rows


def check_correct(case: Case) -> dict:
    """Chosen provider vs native on the benchmark inputs (max abs difference per output)."""
    args, kwargs = case.make()
    chosen = resolve(case.op, *args, **kwargs).name
    clone = lambda a: a.clone() if isinstance(a, torch.Tensor) else a  # noqa: E731
    out = call_provider(case.op, chosen, *map(clone, args), **kwargs)
    ref = call_provider(case.op, "native", *map(clone, args), **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    err = max(float((a.float() - b.float()).abs().max()) for a, b in zip(outs, refs))
    return {"op": case.op, "case": case.name, "provider": chosen, "max_abs_err": err}


def environment() -> dict:
    import triton

    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON output path")
    parser.add_argument("--ops", default="", help="comma-separated subset of ops")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/ops.py needs a GPU", file=sys.stderr)
        return 2
    wanted = set(filter(None, args.ops.split(",")))
    cases = [c for c in norm_cases() + rope_cases() + cache_cases() + linear_cases() if not wanted or c.op in wanted]
    result = {"env": environment(), "copy_tb_s": copy_bandwidth(), "rows": [], "checks": [],
              "priority": {c.op: [p.name for p in priority(c.op)] for c in cases}}
    for case in cases:
        result["checks"].append(check_correct(case))
        result["rows"] += bench_case(case)
        for row in result["rows"]:
            row["frac_copy"] = row["tb_s"] / result["copy_tb_s"]
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        best = [r for r in result["rows"] if r["case"] == case.name and r["op"] == case.op]
        print(f"{case.op:34s} {case.name:38s} " + "  ".join(
            f"{r['provider']}={r['ms']:.3f}ms/{r['tb_s']:.2f}TB/s" for r in best), flush=True)
    print(f"copy bandwidth {result['copy_tb_s']:.2f} TB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

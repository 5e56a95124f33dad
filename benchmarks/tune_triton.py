"""Sweep the Triton launch parameters at Wan shapes on a GPU and print the best per table.

    python benchmarks/tune_triton.py --out tune.json

Sets ``fastdit.kernels.triton._support.TUNED`` entries one candidate at a time (the tuning
hook), times the ops with ``triton.testing.do_bench`` (median) and reports TB/s; the winners
are then written into ``TUNED`` by hand.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

sys.path.insert(0, __file__.rsplit('/', 1)[0])  # benchmarks/ (for ops.py's cases)

from fastdit.kernels.triton import _support as S
from fastdit.ops.registry import call_provider

TOKENS = 32760


def _rand(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device="cuda").to(dtype)


def bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def norm_sweep(dim: int) -> list[dict]:
    x, res = _rand(1, TOKENS, dim), _rand(1, TOKENS, dim)
    mods = [_rand(1, 1, dim, dtype=torch.float32) * 0.1 for _ in range(3)]
    w, b = _rand(dim, dtype=torch.float32), _rand(dim, dtype=torch.float32)
    gb = x.numel() * 2
    calls = {
        "layer_norm_scale_shift": (lambda: call_provider("layer_norm_scale_shift", "triton", x, shift=mods[0], scale=mods[1]), 2 * gb),
        "scale_residual_norm_scale_shift": (lambda: call_provider(
            "scale_residual_norm_scale_shift", "triton", res, x, shift=mods[0], scale=mods[1], gate=mods[2],
            weight=w, bias=b), 4 * gb),
        "rms_norm": (lambda: call_provider("rms_norm", "triton", x[0], w.bfloat16(), 1e-6), 2 * gb),
    }
    block = S.next_pow2(dim)
    candidates = []
    for rows in (1, 2, 4, 8):
        for warps in (4, 8, 16, 32):
            if rows * block <= 16384 and rows * block // (warps * 32) >= 2:
                candidates.append((block, warps, rows))
    out = []
    for cand in candidates:
        S.TUNED[("norm", dim)] = cand
        row = {"dim": dim, "cand": cand}
        try:
            for name, (fn, nbytes) in calls.items():
                row[name] = nbytes / (bench(fn) * 1e-3) / 1e12
        except Exception as exc:  # a candidate that does not compile (resources)
            row["error"] = str(exc)[:200]
        out.append(row)
        print(row, flush=True)
    S.TUNED.pop(("norm", dim), None)
    return out


def quant_sweep(dim: int) -> list[dict]:
    """The per-token e4m3 quantiser (``quantize_fp8``) and GELU + quantiser (``gelu_tanh_fp8``)
    at ``[TOKENS, dim]``: whole rows (BLOCK_D = next_pow2(D); rows, warps) and the chunked
    two-pass kernel (BLOCK_D < D). TB/s counts one read of x and one write of the e4m3 values."""
    x = _rand(TOKENS, dim)
    nbytes = x.numel() * 3
    block = S.next_pow2(dim)
    candidates = [(block, warps, rows) for rows in (1, 2, 4) for warps in (4, 8, 16, 32)
                  if rows * block <= 16384 and rows * block // (warps * 32) >= 2]
    candidates += [(chunk, warps, rows) for chunk in (1024, 2048, 4096) if chunk < dim
                   for rows in (1, 2, 4) for warps in (4, 8, 16)
                   if rows * chunk // (warps * 32) >= 4]
    out = []
    for cand in candidates:
        row = {"dim": dim, "cand": cand}
        for kind, op in (("quant", "quantize_fp8"), ("quant_gelu", "gelu_tanh_fp8")):
            S.TUNED[(kind, dim)] = cand
            try:
                row[op] = nbytes / (bench(lambda op=op: call_provider(op, "triton", x)) * 1e-3) / 1e12
            except Exception as exc:  # a candidate that does not compile (resources)
                row["error"] = str(exc)[:200]
            S.TUNED.pop((kind, dim), None)
        out.append(row)
        print(row, flush=True)
    return out


def elementwise_sweep(dim: int) -> list[dict]:
    x, c = _rand(1, TOKENS, dim), _rand(1, TOKENS, dim)
    g = _rand(1, 1, dim, dtype=torch.float32)
    out = []
    for block in (256, 512, 1024):
        if dim % block:
            continue
        for rows in (2, 4, 8, 16):
            for warps in (4, 8):
                S.TUNED[("elementwise", dim)] = (block, rows, warps)
                ms = bench(lambda: call_provider("mul_add", "triton", x, c, gate=g))
                row = {"dim": dim, "cand": (block, rows, warps), "mul_add": 3 * x.numel() * 2 / (ms * 1e-3) / 1e12}
                out.append(row)
                print(row, flush=True)
    S.TUNED.pop(("elementwise", dim), None)
    return out


# the Wan2.1 VAE decoder's channel norms, channels-last, one 4-frame chunk: (C, H, W) per level
CHANNEL_LEVELS = ((96, 480, 832), (192, 240, 416), (384, 120, 208))


def channel_rows_sweep(channels: int, height: int, width: int) -> list[dict]:
    """``channel_rms_norm`` + SiLU on a channels-last ``[1, C, 4, H, W]`` (the VAE decode's
    ``fastdit-channels-last`` norms; h200-run15 measured them at 0.7 TB/s over 135 GB a decode)."""
    x = _rand(1, channels, 4, height, width).contiguous(memory_format=torch.channels_last_3d)
    gamma = _rand(channels, 1, 1, 1)
    block_c = S.next_pow2(channels)
    out = []
    for rows in (4, 8, 16, 32, 64, 128):
        for warps in (1, 2, 4, 8):
            if rows * block_c // (warps * 32) < 1:
                continue
            S.TUNED[("channel_rows", channels)] = (block_c, rows, warps)
            ms = bench(lambda: call_provider("channel_rms_norm", "triton", x, gamma, None,
                                             scale=channels ** 0.5, silu=True))
            row = {"dim": channels, "cand": (block_c, rows, warps),
                   "channel_rms_norm": 2 * x.numel() * 2 / (ms * 1e-3) / 1e12}
            out.append(row)
            print(row, flush=True)
    S.TUNED.pop(("channel_rows", channels), None)
    return out


def rope_sweep(heads: int) -> list[dict]:
    q, k = _rand(TOKENS, heads, 128), _rand(TOKENS, heads, 128)
    theta = torch.rand(TOKENS, 64, device="cuda") * 6
    cos, sin = theta.cos(), theta.sin()
    nbytes = 4 * q.numel() * 2 + 2 * cos.numel() * 4
    out = []
    for bt in (1, 2, 4, 8):
        for bh in (2, 4, 8):
            if heads % bh:
                continue
            for warps in (2, 4, 8):
                S.TUNED[("rope", heads, heads, 128)] = (bt, bh, bh, warps)
                ms = bench(lambda: call_provider("rope_qk_", "triton", q, k, cos, sin))
                row = {"heads": heads, "cand": (bt, bh, bh, warps), "rope_qk_": nbytes / (ms * 1e-3) / 1e12}
                out.append(row)
                print(row, flush=True)
    S.TUNED.pop(("rope", heads, heads, 128), None)
    return out


def cache_sweep() -> list[dict]:
    from ops import cache_cases  # the benchmark's own paged-cache case

    case = cache_cases()[0]
    args, _ = case.make()
    hq, hk, dim = args[0].shape[1], args[1].shape[1], args[0].shape[2]
    out = []
    for bt in (1, 2, 4, 8):
        for bh in (2, 4, 8):
            for warps in (2, 4, 8):
                S.TUNED[("rope", hq, hk, dim)] = (bt, bh, min(bh, hk), warps)
                ms = bench(lambda: call_provider("rope_qk_cache_store", "triton", *args))
                row = {"cand": (bt, bh, min(bh, hk), warps),
                       "rope_qk_cache_store": case.nbytes / (ms * 1e-3) / 1e12}
                out.append(row)
                print(row, flush=True)
    S.TUNED.pop(("rope", hq, hk, dim), None)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", choices=("channel", "quant"), default=None,
                        help="channel: only the VAE's channel-norm sweep; quant: only the fp8 "
                             "row quantisers at D = 1536, 5120, 8960, 13824")
    args = parser.parse_args(argv)
    result = {"gpu": torch.cuda.get_device_name()}
    for dim in (1536, 5120, 8960, 13824) if args.only in (None, "quant") else ():
        result[f"quant_{dim}"] = quant_sweep(dim)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    for channels, height, width in CHANNEL_LEVELS if args.only in (None, "channel") else ():
        result[f"channel_rows_{channels}"] = channel_rows_sweep(channels, height, width)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    for dim in (1536, 5120) if args.only is None else ():
        result[f"norm_{dim}"] = norm_sweep(dim)
        result[f"elementwise_{dim}"] = elementwise_sweep(dim)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    for heads in (12, 40) if args.only is None else ():
        result[f"rope_{heads}"] = rope_sweep(heads)
    if args.only is None:
        result["cache"] = cache_sweep()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for key, rows in result.items():
        if isinstance(rows, list):
            metric = [m for m in rows[0] if m not in ("dim", "cand", "heads", "error")]
            for m in metric:
                best = max((r for r in rows if m in r), key=lambda r: r[m])
                print(f"BEST {key} {m}: {best['cand']} {best[m]:.2f} TB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

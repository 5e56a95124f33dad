"""Does compiling the block region with fastdit's custom ops gain anything? One Wan forward,
eager fastdit vs fastdit with every block under ``torch.compile`` (fullgraph).

    python benchmarks/compile_block.py --out benchmarks/results/compile-block-h200.json
    python benchmarks/compile_block.py --tiny --out /tmp/compile-block.json   # CPU smoke run

Under torch.compile every fastdit op is one opaque ``torch.ops.fastdit`` custom op (its kernel
is the op's eager dispatch plan: the same Triton / cuBLAS / SDPA providers), so what the
compiler can add is the code *between* the ops (the modulation table sums and splits, views,
residual adds it fuses) and fewer Python launches per block. Each block is compiled with
``nn.Module.compile(fullgraph=True)``; the blocks share one graph (parameters are inputs).
Random bf16 weights, 480x832, 81 frames (32,760 tokens), 512 text tokens, batch 1 (and 2).
Reports median seconds per forward (CUDA events), TFLOP/s, the compiled run's first call
(compilation), peak activation memory, and the compiled output's cosine and max difference
against the eager one (the custom ops run the same providers; only the glue is generated).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fastdit.models.wan import WanTransformer
from fastdit.models.wan.configs import WAN_CONFIGS, WanConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling transformer.py
from transformer import cosine, forward_flops, inputs, peak_during, time_forward  # noqa: E402

TINY = WanConfig(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2,
                 text_dim=32, freq_dim=16)


def compile_blocks(model: WanTransformer, backend: str, mode: str | None) -> None:
    """Every block compiled in place (fullgraph: a graph break is an error)."""
    for block in model.blocks:
        block.compile(fullgraph=True, backend=backend, mode=mode)


def run_model(name: str, args, device, dtype) -> dict:
    cfg = TINY if args.tiny else WAN_CONFIGS[name]
    warmup, repeat = (1, 2) if args.tiny else ((2, 5) if cfg.dim <= 2048 else (1, 3))
    result = {"model": name, "config": cfg.to_diffusers_config(), "runs": []}
    model = WanTransformer.from_config(cfg, dtype=dtype, device=device, seed=0)
    eager_out = {}
    for impl in ("fastdit-eager", "fastdit-compiled-blocks"):
        if impl == "fastdit-compiled-blocks":
            torch._dynamo.reset()
            compile_blocks(model, args.backend, args.mode)
        for batch in args.batches:
            x = inputs(cfg, batch, args.frames, args.height, args.width, device, dtype)
            tokens = x[0].shape[2] * x[0].shape[3] * x[0].shape[4] // 4
            flops = forward_flops(cfg, batch, tokens, text_len=x[2].shape[1])
            with torch.no_grad():
                t0 = time.perf_counter()
                out = model(*x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                first = time.perf_counter() - t0
                times = time_forward(lambda: model(*x), warmup, repeat, device)
                peak = peak_during(lambda: model(*x), device)
            s = statistics.median(times)
            run = {"impl": impl, "batch": batch, "tokens": tokens, "s": s, "all_s": times,
                   "tflops": flops / s / 1e12, "first_call_s": first,
                   "peak_activation_gb": None if peak is None else peak / 1e9}
            out = out.float().cpu()
            if impl == "fastdit-eager":
                eager_out[batch] = out
            else:
                run["cosine_vs_eager"] = cosine(out, eager_out[batch])
                run["max_abs_diff_vs_eager"] = float((out - eager_out[batch]).abs().max())
            result["runs"].append(run)
            print(f"{name} B={batch} {impl} {s:.4f}s {run['tflops']:.0f} TFLOP/s first call "
                  f"{first:.1f}s" + (f" cos={run['cosine_vs_eager']:.6f}" if "cosine_vs_eager" in run
                                     else ""), flush=True)
    by = {(r["impl"], r["batch"]): r["s"] for r in result["runs"]}
    result["compiled_over_eager"] = {f"B{b}": by[("fastdit-compiled-blocks", b)] / by[("fastdit-eager", b)]
                                     for b in args.batches}
    model = None  # free the weights before the next model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def environment(device) -> dict:
    env = {"torch": torch.__version__, "device": str(device),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="Wan2.1-T2V-1.3B,Wan2.1-T2V-14B")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--mode", default=None, help="torch.compile mode (default: none)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny config on the CPU, eager backend (a smoke test, seconds)")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.tiny:
        args.height, args.width, args.frames = 32, 32, 5
        args.models, args.backend = "tiny", "eager"
        device, dtype = torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            print("benchmarks/compile_block.py needs a GPU (or --tiny)", file=sys.stderr)
            return 2
        device, dtype = torch.device("cuda"), torch.bfloat16
    result = {"env": environment(device), "args": {k: v for k, v in vars(args).items()},
              "models": []}
    for name in args.models.split(","):
        result["models"].append(run_model(name, args, device, dtype))
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LoRA cost: load + merge time of a random rank-64 LoRA on a 14B-sized random model, and what
runtime mode costs per step.

    python benchmarks/lora.py --out out/lora.json                       # H200: 14B, rank 64
    python benchmarks/lora.py --tiny --out /tmp/lora.json               # CPU smoke run

* ``merge``: a random LoRA in the original (LightX2V/ComfyUI) layout with alphas, on every
  block product (q, k, v, o of both attentions, both FFN layers: 400 pairs for 14B), written
  to a temporary file; ``apply_loras(model, [file])`` timed end to end (header check, reading
  the tensors, fp32 merge on the device), first call and the median of repeats.
* ``runtime_products``: each distinct product of a block at 480x832x81 (32,760 tokens, 512
  text tokens), timed alone and with its rank-r adapter (``y += (x A^T) B^T``), summed over
  one forward: the per-step cost of runtime mode measured on the products themselves.
* ``runtime_forward``: the whole forward with and without runtime adapters. Needs Linear
  layers with an ``adapters`` list (``fastdit.layers.linear.Linear``, seams.md section 2);
  reported as not available until then.
* ``e2e`` (phase 2, ``--e2e-model PATH``): a 4-step video with ``fastdit.load(PATH,
  loras=[...], preset="lightx2v-4step")``; reported as not wired until the loader takes them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastdit.models.wan import WanTransformer
from fastdit.models.wan.checkpoint import diffusers_to_original_key
from fastdit.models.wan.configs import WAN_CONFIGS, WanConfig
from fastdit.models.wan.lora import LoraAdapter, apply_loras

TINY = WanConfig(num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
                 text_dim=64, freq_dim=32, ffn_dim=160, num_layers=3)
BLOCK_PRODUCTS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                  "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_random_lora(path: Path, config: WanConfig, rank: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """Original-layout LoRA (``diffusion_model.blocks.N.self_attn.q.lora_down.weight``, alpha =
    rank) on every block product; returns its size and tensor count."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    shapes = {"attn1": (config.dim, config.dim), "attn2": (config.dim, config.dim),
              "ffn.net.0.proj": (config.ffn_dim, config.dim), "ffn.net.2": (config.dim, config.ffn_dim)}
    tensors = {}
    for i in range(config.num_layers):
        for product in BLOCK_PRODUCTS:
            out, inp = shapes[product if product.startswith("ffn") else product.split(".")[0]]
            key = "diffusion_model." + diffusers_to_original_key(f"blocks.{i}.{product}.weight")[: -len(".weight")]
            tensors[key + ".lora_down.weight"] = (torch.randn(rank, inp, generator=g) / inp**0.5).to(dtype)
            tensors[key + ".lora_up.weight"] = (torch.randn(out, rank, generator=g) * 1e-3).to(dtype)
            tensors[key + ".alpha"] = torch.tensor(float(rank))
    t0 = time.perf_counter()
    save_file(tensors, str(path))
    return {"pairs": len(tensors) // 3, "bytes": path.stat().st_size, "write_s": time.perf_counter() - t0}


def bench_merge(model, path: Path, device, repeat: int) -> dict:
    results = []
    for _ in range(1 + repeat):
        sync(device)
        t0 = time.perf_counter()
        result = apply_loras(model, [path])
        sync(device)
        wall = time.perf_counter() - t0
        results.append({"wall_s": wall, **{f"{k}_s": v for k, v in result.seconds.items()}})
    first, rest = results[0], results[1:]
    median = {k: statistics.median(r[k] for r in rest) for k in rest[0]} if rest else {}
    return {"first": first, "median_of_repeats": median, "repeats": repeat, "summary": result.summary()}


def bench_runtime_products(config: WanConfig, tokens: int, text_len: int, rank: int, device, dtype,
                           warmup: int, repeat: int) -> dict:
    """Each block product alone and with its adapter; per-forward sums."""
    d, f = config.dim, config.ffn_dim
    # (name, rows, in, out) for one block, batch 1
    products = [("self q/k/v/o", tokens, d, d, 4), ("cross q/o", tokens, d, d, 2),
                ("cross k/v", text_len, d, d, 2), ("ffn up", tokens, d, f, 1), ("ffn down", tokens, f, d, 1)]
    g = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    base_total = lora_total = 0.0
    for name, n, k_in, n_out, count in products:
        plain, with_lora = _product_times(n, k_in, n_out, rank, g, device, dtype, warmup, repeat)
        rows.append({"product": name, "rows": n, "in": k_in, "out": n_out, "per_block": count,
                     "plain_ms": plain * 1e3, "with_adapter_ms": with_lora * 1e3,
                     "overhead": with_lora / plain - 1})
        base_total += count * plain
        lora_total += count * with_lora
    layers = config.num_layers
    return {"tokens": tokens, "text_len": text_len, "rank": rank, "products": rows,
            "products_per_forward_s": base_total * layers,
            "with_adapters_per_forward_s": lora_total * layers,
            "adapter_cost_per_forward_s": (lora_total - base_total) * layers,
            "overhead_of_products": lora_total / base_total - 1}


def _product_times(rows: int, k_in: int, n_out: int, rank: int, g, device, dtype, warmup: int,
                   repeat: int) -> tuple[float, float]:
    """Median seconds of ``x W^T + b`` alone and followed by a rank-``rank`` adapter."""
    x = torch.randn(rows, k_in, generator=g).to(device, dtype)
    w = (torch.randn(n_out, k_in, generator=g) / k_in**0.5).to(device, dtype)
    b = torch.zeros(n_out, device=device, dtype=dtype)
    adapter = LoraAdapter((torch.randn(rank, k_in, generator=g) / k_in**0.5).to(device, dtype),
                          (torch.randn(n_out, rank, generator=g) * 1e-3).to(device, dtype))
    plain = median_seconds(lambda: F.linear(x, w, b), device, warmup, repeat)
    with_lora = median_seconds(lambda: adapter(x, F.linear(x, w, b)), device, warmup, repeat)
    return plain, with_lora


def bench_runtime_forward(model, path: Path, config: WanConfig, latent_shape, text_len: int, device,
                          dtype, warmup: int, repeat: int) -> dict:
    if not hasattr(model.blocks[0].attn1.to_q, "adapters"):
        return {"available": False, "why": "the model's Linear layers have no adapters list yet "
                                           "(fastdit.layers.linear.Linear lands with seams.md section 2)"}
    from fastdit.models.wan.lora import remove_lora_adapters

    g = torch.Generator(device="cpu").manual_seed(1)
    latents = torch.randn(1, config.in_channels, *latent_shape, generator=g).to(device, dtype)
    t = torch.tensor([937.5], device=device)
    text = torch.randn(1, text_len, config.text_dim, generator=g).to(device, dtype)
    with torch.no_grad():
        plain = median_seconds(lambda: model(latents, t, text), device, warmup, repeat)
        apply_loras(model, [path], mode="runtime")
        with_lora = median_seconds(lambda: model(latents, t, text), device, warmup, repeat)
        remove_lora_adapters(model)
    return {"available": True, "forward_s": plain, "forward_with_runtime_lora_s": with_lora,
            "overhead": with_lora / plain - 1}


def bench_e2e(model_path: str | None, lora: Path, device, dtype) -> dict:
    """Phase 2: the whole 4-step video through the public API."""
    if not model_path:
        return {"available": False, "why": "pass --e2e-model PATH (a base model folder)"}
    import fastdit

    try:
        t0 = time.perf_counter()
        pipe = fastdit.load(model_path, device=device, dtype=dtype, loras=[(str(lora), 1.0)],
                            preset="lightx2v-4step")
    except TypeError as exc:
        return {"available": False, "why": f"fastdit.load does not take loras/preset yet ({exc})"}
    load_s = time.perf_counter() - t0
    result = pipe.generate("a red fox running through snow", height=480, width=832, num_frames=81,
                           seed=0)
    return {"available": True, "load_s": load_s, "timings": result.timings,
            "peak_memory": result.peak_memory}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--model", default="Wan2.1-T2V-14B", choices=sorted(WAN_CONFIGS))
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--e2e-model", default=None, help="phase 2: base model folder for the video")
    parser.add_argument("--tmp", default=None, help="folder for the temporary LoRA file")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16
    if args.tiny:
        config, rank, tokens, text_len, latent_shape = TINY, 4, 96, 16, (2, 4, 6)
        warmup, repeat = 1, 2
    else:
        config, rank, tokens, text_len, latent_shape = WAN_CONFIGS[args.model], args.rank, 32760, 512, (21, 60, 104)
        warmup, repeat = 3, 10
    env = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    result = {"env": env, "model": "tiny" if args.tiny else args.model, "rank": rank, "dtype": "bf16"}

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / f"random_rank{rank}.safetensors"
        result["lora_file"] = write_random_lora(path, config, rank, dtype)
        t0 = time.perf_counter()
        model = WanTransformer.from_config(config, dtype=dtype, device=device, seed=0)
        sync(device)
        result["model_build_s"] = time.perf_counter() - t0
        result["merge"] = bench_merge(model, path, device, args.repeat)
        print("merge:", json.dumps(result["merge"]["first"]), flush=True)
        result["runtime_forward"] = bench_runtime_forward(model, path, config, latent_shape, text_len,
                                                          device, dtype, warmup, repeat)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result["runtime_products"] = bench_runtime_products(config, tokens, text_len, rank, device, dtype,
                                                            warmup, repeat)
        print("runtime products: overhead {:.1%}, {:.3f} s per forward".format(
            result["runtime_products"]["overhead_of_products"],
            result["runtime_products"]["adapter_cost_per_forward_s"]), flush=True)
        result["e2e"] = bench_e2e(args.e2e_model, path, device, dtype)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

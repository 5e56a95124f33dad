"""One Wan transformer forward: fastdit (exact and fp8) vs diffusers (eager and
compile_repeated_blocks).

    python benchmarks/transformer.py --out benchmarks/results/transformer-h100.json
    python benchmarks/transformer.py --tiny --out /tmp/t.json      # CPU smoke run
    python benchmarks/transformer.py --models Wan2.2-TI2V-5B --height 704 --width 1280 \
        --frames 121 --out ti2v.json                                # TI2V-5B, per-frame timesteps

Random weights (one seed) in bf16, loaded identically into fastdit's WanTransformer and
diffusers' WanTransformer3DModel; inputs 480x832, 81 frames (latents [B, 16, 21, 60, 104]
= 32,760 tokens), 512 text tokens, batch 1 and batch 2 (cond + uncond in one call). Reports
median seconds per forward (CUDA events), TFLOP/s (FLOPs by formula, checked against the
DESIGN figure of 283 TFLOP for 1.3B), peak memory above the weights, cosine similarity of
fastdit's output with diffusers', and time to first forward (load from safetensors + first
call) for fastdit.

``fastdit-fp8`` is the same model (same weights, converted in place after the exact runs)
under ``quantize="fp8"`` (:func:`fastdit.quant.apply.apply_precision`): 8-bit self-attention
and fp8 block linear layers; reported with its cosine against fastdit's exact output and the
transformer's weight memory before and after. TI2V-5B (48 latent channels, VAE stride 16)
gets per-frame timesteps ``[B, F]`` with the first frame at t=0, as its pipeline passes them
(diffusers gets the same values per token, ``[B, L]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import statistics
import sys
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastdit.config import get_config, override_config
from fastdit.models.wan import WanTransformer
from fastdit.models.wan.configs import WAN_CONFIGS, WanConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling gpu_telemetry.py
from gpu_telemetry import GpuTelemetry  # noqa: E402
from kernel_profile import group_of, grouped, kernel_seconds, profiled  # noqa: E402

TEXT_LEN = 512


def forward_flops(cfg: WanConfig, batch: int, tokens: int, text_len: int = TEXT_LEN) -> float:
    """Matrix-product FLOPs of one forward (2 per multiply-add), attention included."""
    d, f = cfg.dim, cfg.ffn_dim
    per_layer = (
        8 * tokens * d * d  # self-attention q, k, v, o
        + 4 * tokens * tokens * d  # self-attention scores and values
        + 4 * tokens * d * d + 4 * text_len * d * d  # cross-attention q, o and k, v
        + 4 * tokens * text_len * d  # cross-attention scores and values
        + 4 * tokens * d * f  # feed-forward
    )
    return batch * cfg.num_layers * per_layer


def is_ti2v(cfg: WanConfig) -> bool:
    """Wan2.2 TI2V-5B: 48 latent channels (VAE stride 16), a timestep per latent frame."""
    return cfg.in_channels == 48


def inputs(cfg: WanConfig, batch: int, frames: int, height: int, width: int, device, dtype, seed=0,
           per_token: bool = False):
    """``(latents, timestep, text)``; TI2V gets per-frame timesteps ``[B, F]`` with frame 0 at
    t=0 (``per_token``: the same values repeated over each frame's tokens, ``[B, L]``, the form
    diffusers takes)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    latent_frames = (frames - 1) // 4 + 1
    stride = 16 if is_ti2v(cfg) else 8
    latents = torch.randn(batch, cfg.in_channels, latent_frames, height // stride, width // stride,
                          generator=g)
    timestep = torch.tensor([999.0, 500.0][:batch] + [999.0] * max(0, batch - 2))
    if is_ti2v(cfg):
        timestep = timestep[:, None].repeat(1, latent_frames)  # (B, F)
        timestep[:, 0] = 0.0  # the conditioning frame
        if per_token:
            per_frame = (height // stride // 2) * (width // stride // 2)
            timestep = timestep.repeat_interleave(per_frame, dim=1)  # (B, L)
    text = torch.randn(batch, TEXT_LEN, cfg.text_dim, generator=g)
    return latents.to(device, dtype), timestep.to(device), text.to(device, dtype)


def time_forward(fn, warmup: int, repeat: int, device) -> list[float]:
    """Seconds per call: CUDA events around each call after warm-up (wall clock on CPU)."""
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
    return times


def timed(fn, warmup: int, repeat: int, device, telemetry) -> tuple[list[float], dict | None]:
    """:func:`time_forward` plus the GPU clock/power summary of the timed loop."""
    start = time.time()
    times = time_forward(fn, warmup, repeat, device)
    return times, telemetry.window(start, time.time()) if telemetry else None


def peak_during(fn, device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def variant_config(variant: str):
    """``ffn_chunk_tokens=N`` or ``<op>=<provider>``, applied with :func:`override_config`."""
    key, _, value = variant.partition("=")
    if key == "ffn_chunk_tokens":
        return override_config(memory={"ffn_chunk_tokens": int(value)})
    providers = dict(get_config().kernel.op_providers, **{key: (value,)})
    return override_config(kernel={"op_providers": providers})


def _gb(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 1e9:.3f} GB"


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def run_model(name: str, args, device, dtype, telemetry=None) -> dict:
    named = WAN_CONFIGS[name]
    cfg = named if not args.tiny else WanConfig(
        num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2, text_dim=32,
        freq_dim=16, in_channels=named.in_channels, out_channels=named.out_channels)
    result = {"model": name, "config": cfg.to_diffusers_config(), "runs": []}
    warmup, repeat = (1, 3) if cfg.num_layers * cfg.dim > 30 * 1536 else (2, 5)
    if args.tiny:
        warmup, repeat = 1, 2

    # ---- fastdit: time to first forward (load from disk + first call) ------------------
    # The checkpoint folder is also what diffusers loads, with its own from_pretrained.
    folder = tempfile.mkdtemp(dir=args.tmp)
    model = WanTransformer.from_config(cfg, dtype=dtype, device=device, seed=0)
    model.save_pretrained(folder)
    del model
    gc.collect()
    torch.cuda.empty_cache() if device.type == "cuda" else None
    x = inputs(cfg, 1, args.frames, args.height, args.width, device, dtype)
    t0 = time.perf_counter()
    model = WanTransformer.from_pretrained(folder, dtype=dtype, device=device)
    result["load_s"] = time.perf_counter() - t0
    with torch.no_grad():
        model(*x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    result["time_to_first_forward_s"] = time.perf_counter() - t0
    outputs = {}
    for batch in args.batches:
        x = inputs(cfg, batch, args.frames, args.height, args.width, device, dtype)
        tokens = x[0].shape[2] * x[0].shape[3] * x[0].shape[4] // 4
        flops = forward_flops(cfg, batch, tokens)
        with torch.no_grad():
            times, gpu = timed(lambda: model(*x), warmup, repeat, device, telemetry)
            peak = peak_during(lambda: model(*x), device)
            outputs[batch] = model(*x).float().cpu()
        s = statistics.median(times)
        result["runs"].append({"impl": "fastdit", "batch": batch, "tokens": tokens, "s": s,
                               "all_s": times, "tflops": flops / s / 1e12, "tflop": flops / 1e12,
                               "peak_activation_gb": None if peak is None else peak / 1e9,
                               "ffn_chunk_tokens": get_config().memory.ffn_chunk_tokens, "gpu": gpu})
        print(f"{name} B={batch} fastdit {s:.4f}s {flops / s / 1e12:.0f} TFLOP/s "
              f"peak {_gb(peak)} gpu {gpu}", flush=True)
    # variants of fastdit at B=1: other FFN chunk sizes, other providers for one op
    x = inputs(cfg, 1, args.frames, args.height, args.width, device, dtype)
    for variant in args.variants:
        with variant_config(variant), torch.no_grad():
            times, gpu = timed(lambda: model(*x), warmup, repeat, device, telemetry)
            peak = peak_during(lambda: model(*x), device)
        s = statistics.median(times)
        result["runs"].append({"impl": f"fastdit[{variant}]", "batch": 1, "s": s, "all_s": times,
                               "peak_activation_gb": None if peak is None else peak / 1e9, "gpu": gpu})
        print(f"{name} B=1 fastdit[{variant}] {s:.4f}s peak {_gb(peak)}", flush=True)
    if args.profile and device.type == "cuda":
        result["profile"] = profile(model, inputs(cfg, 1, args.frames, args.height, args.width, device, dtype),
                                    top=25, groups=True)
    if "fastdit-fp8" in args.impls:
        run_fp8(name, model, cfg, args, device, dtype, outputs, result, warmup, repeat, telemetry)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # ---- diffusers eager and compiled: loaded as a user loads it --------------------------
    if not args.impls & {"diffusers-eager", "diffusers-compiled"}:
        shutil.rmtree(folder, ignore_errors=True)
        result["ratios"] = ratios(result["runs"])
        return result
    from diffusers import WanTransformer3DModel

    ref = WanTransformer3DModel.from_pretrained(folder, torch_dtype=dtype).to(device)
    ref = ref.eval().requires_grad_(False)
    shutil.rmtree(folder, ignore_errors=True)
    if args.profile and device.type == "cuda":
        x = inputs(cfg, 1, args.frames, args.height, args.width, device, dtype, per_token=True)
        result["profile_diffusers"] = profile(lambda *a: ref(*a, return_dict=False)[0], x, top=6)
    for impl in ("diffusers-eager", "diffusers-compiled"):
        if impl not in args.impls:
            continue
        if impl == "diffusers-compiled":
            if args.no_compile:
                break
            ref.compile_repeated_blocks(fullgraph=True)
        for batch in args.batches:
            x = inputs(cfg, batch, args.frames, args.height, args.width, device, dtype,
                       per_token=True)
            call = lambda: ref(x[0], x[1], x[2], return_dict=False)[0]  # noqa: E731
            with torch.no_grad():
                t0 = time.perf_counter()
                call()  # first call (compilation for the compiled variant)
                first = time.perf_counter() - t0
                times, gpu = timed(call, max(0, warmup - 1), repeat, device, telemetry)
                peak = peak_during(call, device)
                out = call().float().cpu()
            s = statistics.median(times)
            flops = forward_flops(cfg, batch, result["runs"][0]["tokens"])
            run = {"impl": impl, "batch": batch, "s": s, "all_s": times, "tflops": flops / s / 1e12,
                   "first_call_s": first, "peak_activation_gb": None if peak is None else peak / 1e9,
                   "gpu": gpu}
            if batch in outputs:
                run["cosine_vs_fastdit"] = cosine(out, outputs[batch])
                run["max_abs_diff_vs_fastdit"] = float((out - outputs[batch]).abs().max())
            result["runs"].append(run)
            print(f"{name} B={batch} {impl} {s:.4f}s {flops / s / 1e12:.0f} TFLOP/s"
                  + (f" cos={run['cosine_vs_fastdit']:.6f}" if "cosine_vs_fastdit" in run else "")
                  + f" peak {_gb(peak)} gpu {gpu}", flush=True)
        if impl == "diffusers-compiled" and args.profile and device.type == "cuda":
            x = inputs(cfg, 1, args.frames, args.height, args.width, device, dtype, per_token=True)
            result["profile_diffusers_compiled"] = profile(
                lambda *a: ref(*a, return_dict=False)[0], x, top=8)
    del ref
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["ratios"] = ratios(result["runs"])
    return result


def run_fp8(name, model, cfg, args, device, dtype, outputs, result, warmup, repeat, telemetry):
    """``fastdit-fp8``: ``model`` converted in place to the fp8 preset, then timed per batch
    (``--fp8-batches``); cosine against the exact outputs, weight memory before and after.
    Each ``--fp8-attention`` setting is then timed on the same converted weights with only the
    self-attention's providers swapped (``fastdit-fp8[attention=NAME]``)."""
    from fastdit.quant.apply import PrecisionAttention, apply_precision, attention_providers, weight_bytes

    before = weight_bytes(model)
    t0 = time.perf_counter()
    report = apply_precision(model, args.quantize, device)
    convert_s = time.perf_counter() - t0
    common = {"quantize": report.precision.spec(), "weight_gb_before": before / 1e9,
              "weight_gb_after": report.weight_bytes / 1e9, "convert_s": convert_s}
    attend = model.attend
    settings = [("fastdit-fp8", attend, report.attention_providers, "profile_fp8")]
    for setting in args.fp8_attention:
        names = attention_providers(dataclasses.replace(report.precision, attention=setting), device)
        if not names:
            print(f"{name} fastdit-fp8[attention={setting}]: no 8-bit provider runs here, skipped", flush=True)
            continue
        settings.append((f"fastdit-fp8[attention={setting}]", PrecisionAttention(names), names,
                         f"profile_fp8_{setting}"))
    for impl, attention, names, profile_key in settings:
        model.attend = attention
        time_fp8(name, impl, model, cfg, args, device, dtype, outputs, result, warmup, repeat,
                 telemetry, dict(common, attention_providers=list(names)))
        if args.profile and device.type == "cuda":  # where the fp8 forward's time goes (issue 10)
            result[profile_key] = profile(
                model, inputs(cfg, 1, args.frames, args.height, args.width, device, dtype),
                top=25, groups=True)
    model.attend = attend


def time_fp8(name, impl, model, cfg, args, device, dtype, outputs, result, warmup, repeat,
             telemetry, extra: dict) -> None:
    """Time the converted ``model`` at each of ``--fp8-batches`` and append ``impl``'s runs."""
    for batch in args.fp8_batches:
        x = inputs(cfg, batch, args.frames, args.height, args.width, device, dtype)
        tokens = x[0].shape[2] * x[0].shape[3] * x[0].shape[4] // 4
        flops = forward_flops(cfg, batch, tokens)
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model(*x).float().cpu()  # first call: Triton compiles its kernels
            first = time.perf_counter() - t0
            times, gpu = timed(lambda: model(*x), warmup, repeat, device, telemetry)
            peak = peak_during(lambda: model(*x), device)
        s = statistics.median(times)
        run = {"impl": impl, "batch": batch, "tokens": tokens, "s": s, "all_s": times,
               "tflops_equivalent": flops / s / 1e12, "first_call_s": first,
               "peak_activation_gb": None if peak is None else peak / 1e9, "gpu": gpu, **extra}
        if batch in outputs:
            run["cosine_vs_fastdit"] = cosine(out, outputs[batch])
        result["runs"].append(run)
        print(f"{name} B={batch} {impl} {s:.4f}s {flops / s / 1e12:.0f} TFLOP/s-equiv "
              f"cos={run.get('cosine_vs_fastdit', float('nan')):.5f} weights "
              f"{extra['weight_gb_before']:.2f} -> {extra['weight_gb_after']:.2f} GB peak {_gb(peak)}",
              flush=True)


def ratios(runs: list[dict]) -> dict:
    """fastdit (and fastdit-fp8) seconds / peer seconds, per batch size."""
    by = {(r["impl"], r["batch"]): r["s"] for r in runs}
    ours_impls = sorted({impl for impl, _ in by if impl.startswith("fastdit-fp8[")})
    out = {}
    for (impl, batch), s in by.items():
        if not impl.startswith("diffusers"):
            continue
        for ours in ("fastdit", "fastdit-fp8", *ours_impls):
            if (ours, batch) in by:
                key = {"fastdit": f"B{batch}_vs_{impl}",
                       "fastdit-fp8": f"fp8_B{batch}_vs_{impl}"}.get(ours, f"{ours}_B{batch}_vs_{impl}")
                out[key] = by[(ours, batch)] / s
    if all(("fastdit", b) in by and ("fastdit-fp8", b) in by for b in {b for _, b in by}):
        for batch in sorted({b for _, b in by}):
            out[f"fp8_B{batch}_vs_fastdit"] = by[("fastdit-fp8", batch)] / by[("fastdit", batch)]
    return out


# kernel-name fragments -> group (lower case, first match wins): where a forward's time goes
KERNEL_GROUPS = (
    ("attention", ("attention", "attn", "fmha", "flash", "sdpa", "_fwd_kernel")),
    ("products (GEMM)", ("gemm", "cutlass", "xmma", "scaled_mm", "matmul", "sm90_", "cublas", "nvjet")),
    ("norms and fp8 quantisation", ("norm", "quant", "fp8", "rope")),
    ("element-wise and copies", ("elementwise", "vectorized", "copy", "cat", "fill", "mul", "add", "gelu")),
)


def kernel_group(name: str) -> str:
    return group_of(name, KERNEL_GROUPS)


def profile(model, x, top: int = 15, groups: bool = False):
    """Top CUDA kernels of one forward by total time (with ``groups``: ``{"top": rows,
    "groups_ms": {group: ms}, "total_ms": ...}`` over every kernel, from the same run)."""
    prof = profiled(lambda: model(*x), x[0].device)
    events = [e for e in prof.key_averages() if "CUDA" in str(getattr(e, "device_type", ""))]
    events.sort(key=lambda e: -getattr(e, "device_time_total", 0))
    rows = []
    for evt in events[:top]:
        rows.append({"kernel": evt.key[:120], "calls": evt.count,
                     "ms": getattr(evt, "device_time_total", 0) / 1e3})
    for row in rows:
        print(f"  {row['ms']:9.2f} ms  {row['calls']:5d}x  {row['kernel']}")
    if not groups:
        return rows
    totals = {k: v * 1e3 for k, v in grouped(kernel_seconds(prof, x[0].device), KERNEL_GROUPS).items()}
    print("  by group: " + ", ".join(f"{k} {v:.1f} ms" for k, v in totals.items()))
    return {"top": rows, "groups_ms": totals, "total_ms": sum(totals.values())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="Wan2.1-T2V-1.3B,Wan2.1-T2V-14B")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (smoke test)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--impls", default="fastdit,fastdit-fp8,diffusers-eager,diffusers-compiled",
                        help="which to run (fastdit always runs: it is the reference of the others)")
    parser.add_argument("--quantize", default="fp8", help="the setting of the fastdit-fp8 runs")
    parser.add_argument("--fp8-batches", default=None,
                        help="batch sizes of the fastdit-fp8 runs (default: --batches)")
    parser.add_argument("--fp8-attention", default="",
                        help="other self-attention settings timed on the fp8 weights, e.g. sage")
    parser.add_argument("--variants", default="ffn_chunk_tokens=0,ffn_chunk_tokens=16384",
                        help="fastdit variants also timed at B=1: ffn_chunk_tokens=N or op=provider")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--profile", dest="profile", action="store_true",
                        help="profile (the default; after a --no-profile it turns profiles back on)")
    parser.add_argument("--tmp", default=None, help="folder for the time-to-first-forward checkpoint")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.fp8_batches = ([int(b) for b in args.fp8_batches.split(",")] if args.fp8_batches
                        else args.batches)
    args.fp8_attention = [v.strip() for v in args.fp8_attention.split(",") if v.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.impls = {v.strip() for v in args.impls.split(",") if v.strip()}
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        args.height, args.width, args.frames = 32, 32, 5
    env = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    result = {"env": env, "shape": {"height": args.height, "width": args.width, "frames": args.frames,
                                    "text_len": TEXT_LEN}, "models": []}
    telemetry = GpuTelemetry() if device.type == "cuda" else None
    try:
        for name in args.models.split(","):
            result["models"].append(run_model(name, args, device, dtype, telemetry))
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        if telemetry is not None:
            telemetry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

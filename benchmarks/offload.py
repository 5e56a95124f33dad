"""Low-memory runs of the Wan 14B transformer: resident vs streamed blocks vs fp8 weights vs
diffusers' group offload, at emulated memory budgets.

    python benchmarks/offload.py --out benchmarks/results/offload-h200.json
    python benchmarks/offload.py --variants a14b-24gb,a14b-fp8-24gb,vae --out /tmp/b.json
    python benchmarks/offload.py --tiny --out /tmp/offload.json        # CPU smoke run, seconds

Wan2.1-14B shapes (random weights, one seed, bf16), 480x832x81 (32,760 tokens), 512 text
tokens, guidance: both branches as one batch of 2, so one forward is one denoising step.
A budget is emulated with ``torch.cuda.set_per_process_memory_fraction(budget / total)``
(the allocator's limit inside this process; no GPU setting changes). Each variant runs in its
own process (clean peaks and RSS):

* ``resident``: every weight on the GPU (the reference step time and output);
* ``stream-24gb``: the memory planner's plan for a 24 GB budget (the whole pipeline's: the
  text encoder's visits bound the resident blocks), blocks streamed from pinned host memory;
* ``fp8-16gb``: fp8 block weights (e4m3, per-channel scales) at 16 GB;
* ``diffusers-group-24gb``: diffusers' WanTransformer3DModel with
  ``enable_group_offload(offload_type="block_level", num_blocks_per_group=1, use_stream=True)``
  at the same budget (the same weights); ``diffusers-group-nb-24gb`` (not run by default) adds
  ``non_blocking=True, record_stream=True``;
* ``a14b-24gb`` / ``a14b-fp8-24gb``: two 14B experts (Wan2.2-A14B) sharing one device pool,
  three steps each and the switch between them;
* ``resident-quant-fp8`` / ``quant-fp8-16gb`` (not run by default): the ``quantize="fp8"``
  precision (fp8 products, 8-bit self-attention) resident, and with its e4m3 block weights
  streamed at 16 GB straight into the fp8 products (cosine against the exact resident forward);
* ``vae``: the Wan2.1 VAE decode peak at 480p and 720p, untiled and tiled (the planner's
  estimate beside it).

Reported per variant: seconds per step (median of ``--steps`` after one warm-up), peak GPU
memory (allocated and reserved), peak host RSS (VmHWM) and pinned bytes, bytes copied host ->
device per step, and the output's cosine (and max |diff|) against the resident forward.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from fastdit.models.wan import WanConfig, WanTransformer
from fastdit.models.wan.configs import WAN_CONFIGS
from fastdit.pipelines import memory
from fastdit.quant.apply import apply_precision
from fastdit.runtime import StreamPlan, stream_model

VARIANTS = ("resident", "stream-24gb", "fp8-16gb", "diffusers-group-24gb", "a14b-24gb", "a14b-fp8-24gb", "vae")
# the plan for the transformer alone (no text encoder visits); diffusers' group offload with
# non-blocking copies and record_stream (faster than the call the targets name)
EXTRA_VARIANTS = ("stream-24gb-dit", "diffusers-group-nb-24gb", "resident-quant-fp8", "quant-fp8-16gb")
GB = 10**9
TEXT_LEN = 512
TINY = WanConfig(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, text_dim=32,
                 freq_dim=16, ffn_dim=64, num_layers=6)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def host_memory() -> dict[str, float]:
    """This process's RSS figures in GB (VmHWM: the peak RSS so far)."""
    out = {}
    try:
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024 / GB
    except OSError:
        pass
    return out


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def compare(out: torch.Tensor, ref: torch.Tensor | None) -> dict:
    if ref is None:
        return {}
    out, ref = out.float().cpu(), ref.float().cpu()
    return {"cosine_vs_resident": cosine(out, ref), "max_abs_diff_vs_resident": float((out - ref).abs().max()),
            "bitwise_equal_to_resident": bool(torch.equal(out, ref))}


def make_inputs(cfg: WanConfig, args, device, dtype, seed: int = 0):
    g = torch.Generator("cpu").manual_seed(seed)
    frames = (args.frames - 1) // 4 + 1
    latents = torch.randn(args.batch, cfg.in_channels, frames, args.height // 8, args.width // 8, generator=g)
    timestep = torch.full((args.batch,), 999.0)
    text = torch.randn(args.batch, TEXT_LEN if not args.tiny else 16, cfg.text_dim, generator=g)
    return latents.to(device, dtype), timestep.to(device), text.to(device, dtype)


def time_steps(fn, warmup: int, repeat: int, device) -> list[float]:
    """Wall seconds per call (synchronised), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def set_budget(budget: int | None, device) -> dict:
    """Limit this process's allocator to ``budget`` bytes (CUDA only)."""
    if device.type != "cuda" or budget is None:
        return {"budget_gb": None if budget is None else budget / GB, "emulated": False}
    gc.collect()
    torch.cuda.empty_cache()
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), index)
    torch.cuda.reset_peak_memory_stats(device)
    return {"budget_gb": budget / GB, "emulated": True, "fraction": budget / total,
            "allocated_at_start_gb": torch.cuda.memory_allocated(device) / GB}


def gpu_peaks(device) -> dict:
    if device.type != "cuda":
        return {}
    return {"peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GB,
            "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GB}


def config_for(args) -> WanConfig:
    return TINY if args.tiny else WAN_CONFIGS["Wan2.1-T2V-14B"]


def video_of(args) -> memory.VideoSize:
    return memory.VideoSize(args.height, args.width, args.frames)


def plan_for(args, budget: int, weights: str, experts: int = 1, transformer_only: bool = False):
    """The planner's plan for ``budget`` (tiny: a fixed quarter of the blocks resident)."""
    cfg = config_for(args)
    if args.tiny:
        return StreamPlan.spread(cfg.num_layers, cfg.num_layers // 4, 1), "tiny: a quarter resident, prefetch 1"
    name = "Wan2.2-T2V-A14B" if experts == 2 else "Wan2.1-T2V-14B"
    sizes = memory.sizes_for_named(name, torch.bfloat16, weights)
    if transformer_only:
        sizes = dataclasses.replace(sizes, text_encoder_bytes=0, image_encoder_bytes=0)
    plan = memory.plan_memory(sizes, budget, video_of(args), guided=args.batch == 2)
    return plan.stream_plan(), plan.describe()


def build(args, device, seed: int = 0) -> WanTransformer:
    return WanTransformer.from_config(config_for(args), dtype=args.dtype, device=device, seed=seed)


def reference(model, inputs, device):
    """The resident forward (also the warm-up of cuDNN / cuBLAS for what follows)."""
    with torch.no_grad():
        out = model(*inputs)
    sync(device)
    return out.cpu()


# ---------------------------------------------------------------------------------------
# variants
# ---------------------------------------------------------------------------------------
def run_resident(args, device, quantize: str | None = None) -> dict:
    """The resident forward; with ``quantize`` (e.g. "fp8") under that precision setting, its
    cosine against the exact forward reported."""
    model = build(args, device)
    inputs = make_inputs(model.config, args, device, args.dtype)
    extra = {}
    if quantize:
        ref = reference(model, inputs, device)
        apply_precision(model, quantize, device, log_report=False)
        extra = {"quantize": quantize, **compare(reference(model, inputs, device), ref)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        times = time_steps(lambda: model(*inputs), 1, args.steps, device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"step_s": statistics.median(times), "times_s": times, "weights_gb": weights / GB,
            **gpu_peaks(device), **extra}


def run_streamed(args, device, budget: int, weights: str, transformer_only: bool = False,
                 quantize: str | None = None) -> dict:
    """Streamed at ``budget``; with ``quantize`` the precision setting's fp8 products take the
    streamed e4m3 weights directly (``dequantize="linear"``, as ``fastdit.load`` does)."""
    model = build(args, device)
    inputs = make_inputs(model.config, args, device, args.dtype)
    ref = reference(model, inputs, device)
    plan, described = plan_for(args, budget, weights, transformer_only=transformer_only)
    start = time.perf_counter()
    streamed = stream_model(model, plan, device, weights=weights,
                            dequantize="linear" if quantize else "slot")
    if quantize:
        apply_precision(streamed.model, quantize, device, log_report=False)
    setup = time.perf_counter() - start
    del model
    info = set_budget(budget if not args.tiny else None, device)
    result = _timed_streamed(args, device, streamed, inputs, ref)
    if quantize:
        result["quantize"] = quantize
    return {**result, "plan": described, "stream_plan": plan.describe(), "setup_s": setup, **info,
            "pinned": streamed.streamer.store.pinned, "host_store_gb": streamed.streamer.store.nbytes / GB,
            "host_store_allocated_gb": streamed.streamer.store.allocated_bytes / GB,
            "pool_gb": streamed.streamer.region.nbytes / GB}


def _timed_streamed(args, device, streamed, inputs, ref, warmup: int = 1) -> dict:
    out = {}

    def step():
        out["y"] = streamed(*inputs)

    with torch.no_grad():
        for _ in range(warmup):
            step()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        copied = streamed.stats["bytes_copied"]
        times = time_steps(step, 0, args.steps, device)
    per_step = (streamed.stats["bytes_copied"] - copied) / args.steps
    return {"step_s": statistics.median(times), "times_s": times, "bytes_copied_per_step_gb": per_step / GB,
            "pool_buffers": streamed.stats["pool_buffers"], **gpu_peaks(device), **compare(out["y"], ref)}


def run_diffusers_group(args, device, budget: int, fast: bool = False) -> dict:
    model = build(args, device)
    inputs = make_inputs(model.config, args, device, args.dtype)
    ref = reference(model, inputs, device)
    peer = _diffusers_peer(model)
    del model
    start = time.perf_counter()
    streams = device.type == "cuda"
    extra = {"non_blocking": True, "record_stream": streams} if fast else {}
    peer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                              num_blocks_per_group=1, use_stream=streams, **extra)
    setup = time.perf_counter() - start
    info = set_budget(budget if not args.tiny else None, device)
    latents, timestep, text = inputs
    out = {}

    def step():
        out["y"] = peer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]

    with torch.no_grad():
        step()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = time_steps(step, 0, args.steps, device)
    blocks = sum(p.numel() * p.element_size() for p in peer.blocks.parameters())
    return {"step_s": statistics.median(times), "times_s": times, "setup_s": setup, **info, **gpu_peaks(device),
            "bytes_copied_per_step_gb": blocks / GB, "bytes_copied_note": "every block's weights, once per forward",
            "group_offload": {"offload_type": "block_level", "num_blocks_per_group": 1, "use_stream": streams, **extra},
            **compare(out["y"], ref)}


def _diffusers_peer(model: WanTransformer):
    """diffusers' WanTransformer3DModel holding ``model``'s tensors (same names, no copy)."""
    from diffusers import WanTransformer3DModel

    kwargs = {k: v for k, v in model.config.to_diffusers_config().items() if not k.startswith("_")}
    try:
        from accelerate import init_empty_weights
    except ImportError:  # meta parameters AND buffers: rebuild the RoPE tables' module
        with torch.device("meta"):
            peer = WanTransformer3DModel(**kwargs)
        peer.rope = type(peer.rope)(kwargs["attention_head_dim"], kwargs["patch_size"], kwargs["rope_max_seq_len"])
    else:
        with init_empty_weights():  # meta parameters, real buffers
            peer = WanTransformer3DModel(**kwargs)
    peer.load_state_dict(model.state_dict(), assign=True, strict=True)
    return peer.eval().requires_grad_(False)


def run_two_experts(args, device, budget: int, weights: str) -> dict:
    experts = [build(args, device, seed=seed) for seed in (0, 1)]
    inputs = make_inputs(experts[0].config, args, device, args.dtype)
    refs = [reference(m, inputs, device) for m in experts]
    plan, described = plan_for(args, budget, weights, experts=2)
    first = stream_model(experts[0], plan, device, weights=weights)
    second = stream_model(experts[1], plan, device, weights=weights, region=first.streamer.region)
    pair = (first, second)
    del experts
    info = set_budget(budget if not args.tiny else None, device)
    rows, out = [], {}
    with torch.no_grad():
        pair[0](*inputs)  # warm-up
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for index in [0] * args.steps + [1] * args.steps + [0]:
            other = pair[1 - index]
            other.to("cpu")  # as the pipeline's expert switch does
            pair[index].to(device)
            copied = pair[index].stats["bytes_copied"]
            start = time.perf_counter()
            out[index] = pair[index](*inputs)
            sync(device)
            rows.append({"expert": index, "s": time.perf_counter() - start,
                         "bytes_copied_gb": (pair[index].stats["bytes_copied"] - copied) / GB})
    previous = [0] + [r["expert"] for r in rows[:-1]]  # the warm-up ran expert 0
    steady = {}
    for i in (0, 1):  # steps not right after a switch (all of them if there are none)
        same = [r["s"] for r, p in zip(rows, previous) if r["expert"] == i and p == i]
        steady[i] = statistics.median(same or [r["s"] for r in rows if r["expert"] == i])
    first_after_switch = rows[args.steps]["s"]
    checks = {f"expert{i}": compare(out[i], refs[i]) for i in (0, 1)}
    return {"step_s": statistics.median(steady.values()), "step_s_per_expert": steady,
            "first_step_after_switch_s": first_after_switch, "rows": rows, "plan": described,
            "stream_plan": plan.describe(), **info, **gpu_peaks(device), "checks": checks,
            "pinned": first.streamer.store.pinned,
            "host_store_gb": 2 * first.streamer.store.nbytes / GB,
            "host_store_allocated_gb": 2 * first.streamer.store.allocated_bytes / GB,
            "pool_gb": first.streamer.region.nbytes / GB}


def run_vae(args, device) -> dict:
    from diffusers import AutoencoderKLWan

    dtype = args.dtype
    sizes = memory.sizes_for_named("Wan2.1-T2V-14B")
    small = {"base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1} if args.tiny else {}
    vae = AutoencoderKLWan(**small).to(device, dtype).eval()  # the Wan2.1 VAE's default configuration
    videos = [memory.VideoSize(64, 64, 9)] if args.tiny else [memory.VideoSize(480, 832, 81),
                                                               memory.VideoSize(720, 1280, 81)]
    rows = []
    for video in videos:
        z = torch.randn(1, 16, (video.num_frames - 1) // 4 + 1, video.height // 8, video.width // 8,
                        generator=torch.Generator("cpu").manual_seed(0)).to(device, dtype)
        for tiled in (False, True):
            if tiled:
                vae.enable_tiling()
            else:
                vae.disable_tiling()
            sync(device)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            with torch.no_grad():
                frames = vae.decode(z).sample
            sync(device)
            seconds = time.perf_counter() - start
            peak = (torch.cuda.max_memory_allocated(device) - before) if device.type == "cuda" else None
            rows.append({"video": str(video), "tiled": tiled, "s": seconds,
                         "peak_gb": None if peak is None else peak / GB,
                         "planner_estimate_gb": sizes.vae_decode_bytes(video, tiled) / GB,
                         "frames": list(frames.shape)})
            del frames
    return {"rows": rows}


def run_variant(name: str, args, device) -> dict:
    budgets = {"stream-24gb": 24 * GB, "stream-24gb-dit": 24 * GB, "fp8-16gb": 16 * GB,
               "diffusers-group-24gb": 24 * GB, "diffusers-group-nb-24gb": 24 * GB, "a14b-24gb": 24 * GB,
               "a14b-fp8-24gb": 24 * GB}
    if name == "resident":
        return run_resident(args, device)
    if name == "resident-quant-fp8":  # quantize="fp8": fp8 products and 8-bit attention, resident
        return run_resident(args, device, quantize="fp8")
    if name == "quant-fp8-16gb":  # the same precision with its e4m3 weights streamed at 16 GB
        return run_streamed(args, device, 16 * GB, "fp8", quantize="fp8")
    if name in ("stream-24gb", "stream-24gb-dit"):
        return run_streamed(args, device, budgets[name], "dense", transformer_only=name.endswith("dit"))
    if name == "fp8-16gb":
        return run_streamed(args, device, budgets[name], "fp8")
    if name in ("diffusers-group-24gb", "diffusers-group-nb-24gb"):
        return run_diffusers_group(args, device, budgets[name], fast="nb" in name)
    if name in ("a14b-24gb", "a14b-fp8-24gb"):
        return run_two_experts(args, device, budgets[name], "fp8" if "fp8" in name else "dense")
    if name == "vae":
        return run_vae(args, device)
    raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS + EXTRA_VARIANTS)}")


# ---------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------
def child(args) -> None:
    device = torch.device(args.device)
    try:
        result = run_variant(args.variant, args, device)
    except torch.OutOfMemoryError as exc:
        result = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, the other variants still run
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    result["host"] = host_memory()
    print("RESULT " + json.dumps(result), flush=True)


def summarise(variants: dict) -> dict:
    def step(name):
        value = variants.get(name, {}).get("step_s")
        return value if isinstance(value, (int, float)) and math.isfinite(value) else None

    resident, out = step("resident"), {}
    for name, target in (("stream-24gb", 1.10), ("fp8-16gb", 1.15), ("stream-24gb-dit", 1.10)):
        if resident and step(name):
            out[f"{name}_vs_resident"] = step(name) / resident
            out[f"{name}_target_vs_resident"] = target
    if step("stream-24gb") and step("diffusers-group-24gb"):
        out["stream-24gb_vs_diffusers_group"] = step("stream-24gb") / step("diffusers-group-24gb")
        out["stream-24gb_target_vs_diffusers_group"] = 0.80
    if step("stream-24gb") and step("diffusers-group-nb-24gb"):
        out["stream-24gb_vs_diffusers_group_nb"] = step("stream-24gb") / step("diffusers-group-nb-24gb")
    if step("quant-fp8-16gb") and step("resident-quant-fp8"):
        out["quant-fp8-16gb_vs_resident_quant"] = step("quant-fp8-16gb") / step("resident-quant-fp8")
    for name in ("a14b-24gb", "a14b-fp8-24gb"):
        if resident and step(name):
            out[f"{name}_vs_resident"] = step(name) / resident
    if "a14b-fp8-24gb" in variants:
        host = variants["a14b-fp8-24gb"].get("host", {})
        out["a14b-fp8_host_peak_gb"] = host.get("VmHWM")
        out["a14b-fp8_host_target_gb"] = 36
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON results file")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU, in this process (seconds)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: "
                        + ", ".join(VARIANTS + EXTRA_VARIANTS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--batch", type=int, default=2, help="2: guidance (both branches in one batch)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per variant process")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args(argv)
    if args.tiny:
        args.height, args.width, args.frames = 32, 48, 5
        args.steps = min(args.steps, 2)
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.variant:
        child(args)
        return 0

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    device = torch.device(args.device)
    results = {}
    report = {}

    def save() -> None:  # after every variant: a run stopped by a time cap keeps what it measured
        report.update({
            "benchmark": "offload", "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "gpu_total_gb": torch.cuda.get_device_properties(device).total_memory / GB if device.type == "cuda" else None,
            "model": "tiny" if args.tiny else "Wan2.1-T2V-14B (random weights)", "dtype": str(args.dtype),
            "video": f"{args.width}x{args.height}x{args.frames}", "batch": args.batch, "steps": args.steps,
            "variants": results, "summary": summarise(results)})
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2))

    for name in names:
        print(f"[offload] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        if args.tiny:  # in this process: seconds, not a torch import per variant
            try:
                results[name] = run_variant(name, args, device)
            except Exception as exc:  # noqa: BLE001
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["host"] = host_memory()
        else:
            results[name] = _in_child(name, args)
        results[name]["wall_s"] = time.perf_counter() - start
        print(f"[offload] {name}: " + json.dumps({k: v for k, v in results[name].items()
                                                   if k in ("step_s", "error", "peak_allocated_gb")}),
              file=sys.stderr, flush=True)
        save()
    if not names:
        save()
    print(json.dumps(report["summary"], indent=2))
    return 0


def _in_child(name: str, args) -> dict:
    argv = [sys.executable, __file__, "--variant", name, "--steps", str(args.steps), "--height", str(args.height),
            "--width", str(args.width), "--frames", str(args.frames), "--batch", str(args.batch),
            "--device", args.device]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": f"exit code {done.returncode}", "stderr": done.stderr[-4000:]}


if __name__ == "__main__":
    sys.exit(main())

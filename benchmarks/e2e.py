"""End to end: one Wan2.1-1.3B (or TI2V-5B) video, fastdit vs diffusers' WanPipeline (eager and compiled).

    python benchmarks/e2e.py --out benchmarks/results/e2e-h100.json
    python benchmarks/e2e.py --tiny --out /tmp/e2e.json            # CPU smoke run (toy sizes)

Random weights, bf16 on the GPU: the Wan2.1-T2V-1.3B transformer (fastdit's named config,
one seed; diffusers' WanTransformer3DModel shares the very same tensors), a full-size UMT5-XXL
encoder and the full-size Wan2.1 VAE (both shared by the pipelines), UniPC with flow shift 3.0.
Default shape: 480x832, 81 frames, 50 steps, guidance 5.0 (cond + uncond every step).
``--model Wan2.2-TI2V-5B``: the 5B transformer with the Wan2.2 VAE (48 latent channels, 16x
spatial) and per-frame timesteps in both pipelines (diffusers: ``expand_timesteps=True``);
its own shape is 704x1280, 121 frames, flow shift 5 (pass them).

Runs, in one process: fastdit, fastdit-fp8 (``quantize="fp8"``: a copy of the same
transformer converted by :func:`fastdit.quant.apply.apply_precision`), diffusers eager,
diffusers with ``transformer.compile_repeated_blocks(fullgraph=True)``. The fp8 video is
compared with fastdit's exact one by :func:`fastdit.quality.compare` (PSNR, SSIM, LPIPS when
its weights are on the machine). Each gets a short warm-up generation
(``--warmup-steps``; for the compiled run this is where compilation happens, reported as
``warmup_s``), then ``--runs`` timed generations. Reported per run: seconds for text encoding,
denoising, decoding (to float frames) and in total, seconds per step, peak GPU memory, and how
far diffusers' frames are from fastdit's. fastdit's stage times come from its result; diffusers'
from hooks on its text encoder and a step-end callback (one synchronize per step).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import sys
import time

import numpy as np
import torch

from fastdit.platforms import current_platform

PROMPT = ("A cat and a dog baking a cake together in a kitchen. The cat is carefully measuring flour, "
          "while the dog is stirring the batter with a wooden spoon. The kitchen is cozy, with sunlight "
          "streaming through the window.")
NEGATIVE = "Bright tones, overexposed, static, blurred details, subtitles, worst quality, low quality"

# google/umt5-xxl (the Wan text encoder)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", tie_word_embeddings=False)
# the toy UMT5 of --tiny runs, less its vocabulary (the tiny tokenizer's) and width (the toy text_dim)
UMT5_TINY = dict(d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, feed_forward_proj="gated-gelu")


# The platform's synchronize / peak-memory calls, skipped for a CPU run (--tiny on a GPU machine).
def sync(device: torch.device) -> None:
    if device.type != "cpu":
        current_platform().synchronize()


def peak_reset(device: torch.device) -> None:
    if device.type != "cpu":
        current_platform().synchronize()
        current_platform().reset_peak_memory()


def peak_gb(device: torch.device) -> float | None:
    peak = current_platform().memory_allocated_peak() if device.type != "cpu" else None
    return None if peak is None else peak / 1e9


# ---------------------------------------------------------------------------------------
# Components (random weights)
# ---------------------------------------------------------------------------------------
MODELS = ("Wan2.1-T2V-1.3B", "Wan2.2-TI2V-5B")  # --model: the Wan2.1 VAE, or Wan2.2's with per-frame timesteps
# The Wan2.2 VAE (TI2V-5B's vae/config.json; the latents' mean and std left at 0 and 1: random weights)
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                 patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                 latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
WAN22_VAE_TINY = dict(WAN22_VAE, base_dim=16, decoder_base_dim=24, dim_mult=[1, 1, 1, 1], num_res_blocks=1)


def text_encoder_and_vae(tokenizer, tiny: bool, device, dtype: torch.dtype, text_dim: int = 32,
                         wan22: bool = False):
    """Random-weight UMT5 encoder and Wan VAE, made on ``device`` from the global RNG: UMT5-XXL
    and the full VAE (Wan2.1's, or Wan2.2's 48-channel one with ``wan22``), or (``tiny``) a
    2-layer UMT5 of width ``text_dim`` and a toy VAE of the same kind."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    if tiny:
        text_config = UMT5Config(vocab_size=len(tokenizer), d_model=text_dim, **UMT5_TINY)
        vae_kwargs = WAN22_VAE_TINY if wan22 else dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1],
                                                       num_res_blocks=1, temperal_downsample=[False, True, True])
    else:
        text_config = UMT5Config(**UMT5_XXL)
        vae_kwargs = WAN22_VAE if wan22 else {}  # diffusers' defaults are the Wan2.1 VAE
    with torch.device(device):
        text_encoder = UMT5EncoderModel._from_config(text_config, dtype=dtype).eval().requires_grad_(False)
        vae = AutoencoderKLWan(**vae_kwargs).to(dtype).eval().requires_grad_(False)
    return text_encoder, vae


def build_components(args, device: torch.device, dtype: torch.dtype) -> dict:
    from diffusers import UniPCMultistepScheduler

    from fastdit.models.wan import WanTransformer
    from fastdit.models.wan.configs import WanConfig
    from fastdit.models.wan.reference import diffusers_reference
    from fastdit.pipelines import tiny

    model = getattr(args, "model", MODELS[0])
    wan22 = model == "Wan2.2-TI2V-5B"
    torch.manual_seed(args.seed)
    tokenizer = tiny.make_tokenizer()  # in memory; its ids fit any vocabulary
    channels = 48 if wan22 else 16
    transformer_config = WanConfig(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2,
                                   text_dim=32, freq_dim=32, rope_max_seq_len=32, in_channels=channels,
                                   out_channels=channels) if args.tiny else model
    t0 = time.perf_counter()
    text_encoder, vae = text_encoder_and_vae(tokenizer, args.tiny, device, dtype, wan22=wan22)
    transformer = WanTransformer.from_config(transformer_config, dtype=dtype, device=device, seed=args.seed)
    reference = diffusers_reference(transformer, share_weights=True)
    sync(device)
    scheduler_config = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                               num_train_timesteps=1000, flow_shift=args.flow_shift).config
    gb = lambda m: sum(p.numel() * p.element_size() for p in m.parameters()) / 1e9  # noqa: E731
    print(f"components built in {time.perf_counter() - t0:.1f} s: text encoder {gb(text_encoder):.2f} GB, "
          f"transformer {gb(transformer):.2f} GB, VAE {gb(vae):.2f} GB", flush=True)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                reference=reference, scheduler_config=scheduler_config, model=model, expand_timesteps=wan22,
                weights_gb={"text_encoder": gb(text_encoder), "transformer": gb(transformer), "vae": gb(vae)})


def fastdit_pipeline(c: dict, device: torch.device, dtype: torch.dtype, quantize: str | None = None):
    """fastdit's pipeline on the shared components; with ``quantize`` on a converted copy of
    the transformer (as ``fastdit.load(..., quantize=...)`` converts the one it loads)."""
    import copy

    from fastdit.pipelines.loading import apply_precision_to
    from fastdit.pipelines.spec import ModelSpec
    from fastdit.pipelines.wan import WanVideoPipeline, make_scheduler
    from fastdit.quant.config import parse_quantize

    spec = ModelSpec.from_configs(c["transformer"].config.to_diffusers_config(), dict(c["vae"].config),
                                  dict(c["scheduler_config"]), name=c["model"],
                                  expand_timesteps=c["expand_timesteps"])
    vae = current_platform().optimize_vae(c["vae"])
    transformer, precision, reports = c["transformer"], parse_quantize(quantize), []
    if not precision.exact:
        transformer = copy.deepcopy(transformer)
        reports = apply_precision_to(precision, device, transformer)
    pipe = WanVideoPipeline(spec, tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=vae,
                            scheduler=make_scheduler(spec),  # as fastdit.load builds it
                            transformer=transformer, device=device, dtype=dtype)
    pipe.precision, pipe.precision_reports = precision, reports
    return pipe


def diffusers_pipeline(c: dict):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    pipe = WanPipeline(tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"],
                       scheduler=UniPCMultistepScheduler.from_config(c["scheduler_config"]),
                       transformer=c["reference"], expand_timesteps=c["expand_timesteps"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------
# Timed generations
# ---------------------------------------------------------------------------------------
def run_fastdit(pipe, args, steps: int, device) -> tuple[dict, np.ndarray]:
    sync(device)  # generate resets the peak itself and reports it
    t0 = time.perf_counter()
    result = pipe.generate(PROMPT, negative_prompt=NEGATIVE, height=args.height, width=args.width,
                           num_frames=args.frames, num_inference_steps=steps, guidance_scale=args.guidance,
                           seed=args.seed)
    sync(device)
    total = time.perf_counter() - t0
    t = result.timings
    stages = {"text": t["text"], "latents": t.get("latents", 0.0), "denoise": t["denoise"],
              "decode": t["decode"], "total": total, "per_step": t["per_step"]}
    peak = result.peak_memory if device.type != "cpu" else None
    return {"stages": stages, "peak_gb": None if peak is None else peak / 1e9}, result.frames


def run_diffusers(pipe, args, steps: int, device) -> tuple[dict, np.ndarray]:
    text_calls: list[tuple[float, float]] = []
    starts: list[float] = []
    step_ends: list[float] = []

    def pre(module, args_):
        sync(device)
        starts.append(time.perf_counter())

    def post(module, args_, out):
        sync(device)
        text_calls.append((starts[-1], time.perf_counter()))

    def on_step(pipeline, i, t, kwargs):
        sync(device)
        step_ends.append(time.perf_counter())
        return {}

    hooks = [pipe.text_encoder.register_forward_pre_hook(pre), pipe.text_encoder.register_forward_hook(post)]
    peak_reset(device)
    sync(device)
    t0 = time.perf_counter()
    try:
        frames = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=args.height, width=args.width,
                      num_frames=args.frames, num_inference_steps=steps, guidance_scale=args.guidance,
                      generator=torch.Generator("cpu").manual_seed(args.seed), output_type="np",
                      callback_on_step_end=on_step, max_sequence_length=512).frames[0]
        sync(device)
        end = time.perf_counter()
    finally:
        for h in hooks:
            h.remove()
    text = sum(b - a for a, b in text_calls)
    text_end = text_calls[-1][1]
    denoise = step_ends[-1] - text_end  # includes preparing latents (negligible)
    stages = {"text": text, "latents": 0.0, "denoise": denoise, "decode": end - step_ends[-1],
              "total": end - t0, "per_step": denoise / steps}
    return {"stages": stages, "peak_gb": peak_gb(device)}, frames


def quality(frames: np.ndarray, reference: np.ndarray) -> dict:
    """``fastdit.quality.compare`` of two videos (float [F, H, W, 3] in [0, 1])."""
    from fastdit.quality import compare as compare_videos

    report = compare_videos(np.clip(reference, 0, 1), np.clip(frames, 0, 1))
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in report.items()}


def compare(frames: np.ndarray, reference: np.ndarray) -> dict:
    diff = np.abs(frames.astype(np.float64) - reference.astype(np.float64))
    mse = float((diff ** 2).mean())
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "psnr_db": float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)}


def measure(name: str, runner, pipe, args, device) -> tuple[dict, np.ndarray]:
    t0 = time.perf_counter()
    runner(pipe, args, args.warmup_steps, device)  # warm-up (compilation for the compiled run)
    warmup = time.perf_counter() - t0
    runs, frames = [], None
    for _ in range(args.runs):
        run, frames = runner(pipe, args, args.steps, device)
        runs.append(run)
    best = min(runs, key=lambda r: r["stages"]["total"])
    entry = {"impl": name, "warmup_s": warmup, "stages": best["stages"], "peak_gb": best["peak_gb"],
             "all_totals_s": [r["stages"]["total"] for r in runs]}
    s = entry["stages"]
    peak = "-" if entry["peak_gb"] is None else f"{entry['peak_gb']:.1f} GB"
    print(f"{name:20s} total {s['total']:8.2f} s  text {s['text']:6.2f}  denoise {s['denoise']:8.2f} "
          f"({s['per_step']:.3f} s/step)  decode {s['decode']:6.2f}  peak {peak}  (warm-up {warmup:.1f} s)",
          flush=True)
    return entry, frames


def profile_denoise(pipe, args, steps: int, trace_path: str) -> dict:
    """fastdit's denoising loop under torch.profiler (CPU + CUDA): wall time per step, GPU
    kernel time per step, and the host calls that wait for the GPU. Writes a Chrome trace."""
    from torch.profiler import ProfilerActivity, profile

    sync(torch.device("cuda"))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        pipe.generate(PROMPT, negative_prompt=NEGATIVE, height=args.height, width=args.width,
                      num_frames=args.frames, num_inference_steps=steps, guidance_scale=args.guidance,
                      seed=args.seed, output_type="latent")
        sync(torch.device("cuda"))
        wall = time.perf_counter() - t0
    prof.export_chrome_trace(trace_path)
    events = prof.key_averages()
    # device-side events only: a CPU op's device time repeats that of the kernels it launched
    kernel_ms = sum(e.self_device_time_total for e in events
                    if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3
    waits = {e.key: {"calls": e.count, "cpu_ms": e.self_cpu_time_total / 1e3} for e in events
             if any(w in e.key for w in ("Synchronize", "Memcpy", "_local_scalar_dense", "aten::item"))}
    top_cpu = [{"op": e.key[:100], "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3}
               for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]]
    out = {"steps": steps, "wall_s": wall, "gpu_kernel_ms": kernel_ms, "waits": waits, "top_cpu": top_cpu}
    print(f"profiled {steps} steps: wall {wall:.3f} s, GPU kernels {kernel_ms / 1e3:.3f} s, waits {waits}",
          flush=True)
    return out


def ratios(results: list[dict]) -> dict:
    """fastdit's (and fastdit-fp8's) stage times over each peer's."""
    by = {r["impl"]: r["stages"] for r in results}
    out = {}
    for ours, prefix in (("fastdit", ""), ("fastdit-fp8", "fp8_")):
        if ours not in by:
            continue
        for impl, stages in by.items():
            if impl == ours or (ours == "fastdit" and impl == "fastdit-fp8"):
                continue
            for key in ("total", "denoise", "text", "decode"):
                if stages[key] > 0:
                    out[f"{prefix}{key}_vs_{impl}"] = by[ours][key] / stages[key]
    return out


def markdown(result: dict) -> str:
    shape = result["shape"]
    lines = [f"E2E {shape['height']}x{shape['width']}, {shape['frames']} frames, {shape['steps']} steps, "
             f"guidance {shape['guidance']} on {result['env']['gpu']} ({result['env']['date']})", "",
             "| implementation | total s | text s | denoise s | s/step | decode s | peak GB | fastdit total / this |",
             "|---|---|---|---|---|---|---|---|"]
    base = next((r["stages"]["total"] for r in result["runs"] if r["impl"] == "fastdit"), None)
    for r in result["runs"]:
        s = r["stages"]
        rel = f"{base / s['total']:.2f}x" if base else "-"
        lines.append(f"| {r['impl']} | {s['total']:.2f} | {s['text']:.2f} | {s['denoise']:.2f} | "
                     f"{s['per_step']:.3f} | {s['decode']:.2f} | "
                     f"{'-' if r['peak_gb'] is None else round(r['peak_gb'], 1)} | {rel} |")
    for r in result["runs"]:
        q = r.get("quality_vs_fastdit")
        if q:
            psnr = "inf" if q["psnr"] is None else f"{q['psnr']:.2f}"
            lpips = "n/a" if q.get("lpips") is None else f"{q['lpips']:.4f}"
            lines.append(f"\n{r['impl']} video vs fastdit's exact one: PSNR {psnr} dB, "
                         f"SSIM {q['ssim']:.4f}, LPIPS {lpips}")
    return "\n".join(lines)


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """The video and sampler options :func:`build_components` and the timed runs read (also
    ``cache.py``'s): 480x832, 81 frames, 50 steps, guidance 5, flow shift 3, seed 0."""
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--flow-shift", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--model", default=MODELS[0], choices=MODELS,
                        help="the transformer and VAE (Wan2.2-TI2V-5B: its 48-channel VAE, per-frame timesteps; "
                             "its own shape: --height 704 --width 1280 --frames 121 --flow-shift 5)")
    add_video_arguments(parser)
    parser.add_argument("--runs", type=int, default=1, help="timed generations per implementation (best kept)")
    # 3 steps reach UniPC's order-2 corrector, whose torch.linalg.solve initialises cuSOLVER
    # (~0.2 s, once per process): with 2, the first implementation timed paid for it alone
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--impls", default="fastdit,fastdit-fp8,diffusers-eager,diffusers-compiled")
    parser.add_argument("--quantize", default="fp8", help="the setting of the fastdit-fp8 run")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="also profile fastdit's generation with this many steps (CUDA only)")
    parser.add_argument("--tiny", action="store_true",
                        help="toy model and sizes on the CPU (checks the script; numbers mean nothing)")
    args = parser.parse_args(argv)
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        args.height, args.width, args.frames = 32, 32, 5
        args.steps = min(args.steps, 3)
        args.warmup_steps = 1
        torch.set_num_threads(min(4, torch.get_num_threads()))

    import diffusers
    import transformers
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()  # e.g. the fp32-modules note when the random VAE is cast

    env = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "cuda": torch.version.cuda, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "dtype": str(dtype).replace("torch.", ""),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    result = {"env": env, "tiny": args.tiny, "model": args.model,
              "shape": {"height": args.height, "width": args.width, "frames": args.frames, "steps": args.steps,
                        "guidance": args.guidance, "flow_shift": args.flow_shift, "text_len": 512},
              "runs": []}
    c = build_components(args, device, dtype)
    result["weights_gb"] = c["weights_gb"]

    frames = {}
    with torch.no_grad():
        if "fastdit" in impls:
            fastdit = fastdit_pipeline(c, device, dtype)
            entry, frames["fastdit"] = measure("fastdit", run_fastdit, fastdit, args, device)
            result["runs"].append(entry)
            if args.profile_steps and device.type == "cuda":
                result["profile_fastdit"] = profile_denoise(fastdit, args, args.profile_steps,
                                                            args.out.replace(".json", "-trace.json"))
            del fastdit
        if "fastdit-fp8" in impls:
            quantised = fastdit_pipeline(c, device, dtype, quantize=args.quantize)
            entry, frames["fastdit-fp8"] = measure("fastdit-fp8", run_fastdit, quantised, args, device)
            entry["precision"] = quantised.precision_summary()
            if "fastdit" in frames:
                entry["quality_vs_fastdit"] = quality(frames["fastdit-fp8"], frames["fastdit"])
                print(f"{'':20s} fp8 video vs fastdit's: {entry['quality_vs_fastdit']}", flush=True)
            result["runs"].append(entry)
            del quantised
            gc.collect()
        pipe = diffusers_pipeline(c)
        for impl in ("diffusers-eager", "diffusers-compiled"):
            if impl not in impls:
                continue
            if impl == "diffusers-compiled":
                pipe.transformer.compile_repeated_blocks(fullgraph=True)
            entry, frames[impl] = measure(impl, run_diffusers, pipe, args, device)
            if "fastdit" in frames:
                entry["frames_vs_fastdit"] = compare(frames[impl], frames["fastdit"])
                print(f"{'':20s} frames vs fastdit: {entry['frames_vs_fastdit']}", flush=True)
            result["runs"].append(entry)
            gc.collect()
            with open(args.out, "w") as f:  # keep what we have if a later run fails
                json.dump(result | {"ratios": ratios(result["runs"])}, f, indent=1)
    result["ratios"] = ratios(result["runs"])
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    table = markdown(result)
    print(table)
    print("ratios (fastdit / peer):", json.dumps({k: round(v, 3) for k, v in result["ratios"].items()}))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

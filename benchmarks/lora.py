"""LoRA and few-step cost on random-weight Wan models: LoRA load + merge time, what runtime
mode costs per step, and 4-step videos end to end against diffusers doing the same work.

    python benchmarks/lora.py --out out/lora.json                          # H200: everything
    python benchmarks/lora.py --sections merge,runtime --out out/lora.json  # 14B merge + runtime
    python benchmarks/lora.py --sections e2e --out out/lora-e2e.json        # 1.3B, 14B, A14B videos
    python benchmarks/lora.py --tiny --out /tmp/lora.json                  # CPU smoke run

Sections (``--sections``):

* ``merge``: a random LoRA (rank 64) in the original (LightX2V/ComfyUI) layout with alphas, on
  every block product (q, k, v, o of both attentions, both FFN layers: 400 pairs for 14B),
  written to a temporary file; ``apply_loras(model, [file])`` timed end to end (header check,
  reading the tensors, fp32 merge on the device), first call and the median of repeats.
* ``runtime``: the whole 14B forward at 480x832x81 (32,760 tokens, 512 text tokens) with and
  without runtime adapters on every block product (``y += (x A^T) B^T`` on
  ``fastdit.layers.linear.Linear``), and each distinct product timed alone and with its adapter.
* ``e2e``: for each of ``--e2e-models`` (default Wan2.1-T2V-1.3B, Wan2.1-T2V-14B,
  Wan2.2-T2V-A14B with two experts), random weights (one seed per expert) and a random rank-64
  LoRA per expert, 480x832x81, 4 steps without guidance, end to end (UMT5-XXL text encoding,
  4 forwards, Wan2.1 VAE decode: fastdit's by ``--vae-decoder``, default the platform's), in one
  process:
  - fastdit: the options ``fastdit.load`` takes (``loras=``, ``loras_2=``,
    ``preset="lightx2v-4step"``) checked by ``plan_variant``, the LoRAs merged by
    ``apply_loras`` (timed), the pipeline's few-step sampler (timesteps 1000, 750, 500, 250,
    shift 5; A14B experts switch at step 2);
  - diffusers: ``WanPipeline`` with the same random weights (rebuilt from the same seeds after
    fastdit's models are freed), ``load_lora_weights`` + ``fuse_lora`` (timed),
    ``FlowMatchEulerDiscreteScheduler`` on the same sigmas (shift 5), guidance 1.
  - fastdit-fp8 (``--impls``; not in the default): fastdit with ``quantize="fp8"`` applied to
    the merged experts (opt-in, lossy), its frames compared with fastdit's exact video.
  Each side gets a 2-step warm-up generation first. Reported: stage seconds (text, denoise,
  decode, total), seconds per step, peak memory, diffusers' frames against fastdit's (PSNR),
  and fastdit / diffusers ratios.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastdit.errors import first_line
from fastdit.models.wan import WanTransformer
from fastdit.models.wan.checkpoint import diffusers_to_original_key
from fastdit.models.wan.configs import WAN_CONFIGS, WanConfig
from fastdit.models.wan.lora import LoraAdapter, apply_loras
from fastdit.pipelines.loading import VAE_DECODERS

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the siblings e2e.py and transformer.py
import e2e  # noqa: E402
from transformer import time_forward  # noqa: E402

TINY = WanConfig(num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
                 text_dim=64, freq_dim=32, ffn_dim=160, num_layers=3)
BLOCK_PRODUCTS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                  "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device, warmup: int, repeat: int) -> float:
    """The median of ``transformer.py``'s timed calls (CUDA events; wall clock on the CPU)."""
    return statistics.median(time_forward(fn, warmup, repeat, device))


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
    """The whole forward without and with runtime adapters (every block product)."""
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
    return {"forward_s": plain, "forward_with_runtime_lora_s": with_lora, "overhead": with_lora / plain - 1}


# ---------------------------------------------------------------------------------------
# e2e: 4-step videos, fastdit vs diffusers
# ---------------------------------------------------------------------------------------
TIMESTEPS = (1000, 750, 500, 250)
SHIFT = 5.0
WARMUP_TIMESTEPS = (1000, 500)  # two forwards (A14B: one per expert) before the timed run
TINY_E2E = {"tiny": (TINY, False), "tiny-a14b": (TINY, True)}
E2E_CHOICES = ("Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B", "Wan2.2-T2V-A14B")  # text-to-video: no image needed


def shared_components(tiny: bool, device, dtype) -> dict:
    """Tokenizer (in memory), UMT5-XXL text encoder and Wan2.1 VAE with random weights, shared
    by every model and both implementations (toy sizes with ``tiny``): ``e2e.py``'s."""
    from fastdit.pipelines import tiny as tiny_models

    tokenizer = tiny_models.make_tokenizer()
    torch.manual_seed(0)
    text_encoder, vae = e2e.text_encoder_and_vae(tokenizer, tiny, device, dtype, text_dim=TINY.text_dim)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae}


def _experts(config, two: bool, device, dtype, seed: int) -> list:
    return [WanTransformer.from_config(config, dtype=dtype, device=device, seed=seed + i)
            for i in range(2 if two else 1)]


def _fixed_sigmas_euler(timesteps, shift: float):
    """diffusers' FlowMatchEulerDiscreteScheduler on the sigmas ``t / 1000`` of ``timesteps``
    (shifted by ``shift`` inside diffusers), whatever step count the pipeline passes."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sigmas = [t / 1000 for t in timesteps]

    class FixedSigmas(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            super().set_timesteps(device=device, sigmas=sigmas)

    return FixedSigmas(num_train_timesteps=1000, shift=shift)


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def e2e_fastdit(name: str, config, two: bool, loras: list[Path], c: dict, shape: dict, device, dtype,
                seed: int, quantize: str | None = None, vae_decoder: str = "auto") -> tuple[dict, np.ndarray]:
    """fastdit: random experts, the load options checked by plan_variant, LoRAs merged, the
    preset's 4-step sampler; a warm-up generation, then the timed one. ``quantize`` ("fp8",
    the ``fastdit-fp8`` impl): the precision setting applied to the merged experts, as
    ``fastdit.load(..., quantize=)`` does."""
    from fastdit.pipelines.loading import apply_precision_to
    from fastdit.pipelines.loading import LoadOptions
    from fastdit.pipelines.spec import ModelSpec
    from fastdit.pipelines.variants import plan_variant
    from fastdit.pipelines.wan import WanVideoPipeline

    t0 = time.perf_counter()
    experts = _experts(config, two, device, dtype, seed)
    sync(device)
    build_s = time.perf_counter() - t0
    spec = ModelSpec.from_configs(experts[0].config.to_diffusers_config(), dict(c["vae"].config),
                                  {"num_train_timesteps": 1000}, boundary_ratio=0.875 if two else None,
                                  name=None if name.startswith("tiny") else name)
    options = LoadOptions(loras=[(str(loras[0]), 1.0)], loras_2=[(str(loras[1]), 1.0)] if two else (),
                          preset="lightx2v-4step", quantize=quantize, vae_decoder=vae_decoder)
    t0 = time.perf_counter()
    spec, variant = plan_variant(spec, options)
    check_s = time.perf_counter() - t0
    lora_s = []
    for model, expert in zip(experts, variant.experts):
        result = apply_loras(model, expert.loras, mode=expert.mode, plans=expert.plans)
        lora_s.append(result.seconds)
    t0 = time.perf_counter()
    apply_precision_to(options.quantize, device, *experts)  # nothing for the exact setting
    sync(device)
    quantize_s = time.perf_counter() - t0
    pipe = WanVideoPipeline(spec, tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"],
                            scheduler=variant.few_step.scheduler(), transformer=experts[0],
                            transformer_2=experts[1] if two else None, device=device, dtype=dtype,
                            options=options, variant=variant)
    t0 = time.perf_counter()
    pipe.generate(e2e.PROMPT, **shape, seed=seed, timesteps=WARMUP_TIMESTEPS)
    sync(device)
    warmup_s = time.perf_counter() - t0
    sync(device)
    t0 = time.perf_counter()
    result = pipe.generate(e2e.PROMPT, **shape, seed=seed)
    sync(device)
    total = time.perf_counter() - t0
    t = result.timings
    entry = {"impl": "fastdit-fp8" if quantize else "fastdit", "build_s": build_s, "plan_s": check_s,
             "lora_load_merge_s": lora_s, "quantize_s": quantize_s if quantize else None,
             "warmup_s": warmup_s, "sampler": result.settings["sampler"],
             "vae_decoder": result.settings["vae_decoder"],
             "stages": {"text": t["text"], "denoise": t["denoise"], "decode": t["decode"], "total": total,
                        "per_step": t["per_step"]},
             "peak_gb": None if result.peak_memory is None or device.type == "cpu" else result.peak_memory / 1e9}
    frames = result.frames
    del pipe, experts, result
    _free(device)
    return entry, frames


def e2e_diffusers(config, two: bool, loras: list[Path], c: dict, shape: dict, device, dtype,
                  seed: int) -> tuple[dict, np.ndarray]:
    """diffusers: the same random experts, LoRAs loaded and fused, Euler on the same sigmas."""
    from diffusers import WanPipeline

    from fastdit.models.wan.reference import diffusers_reference

    t0 = time.perf_counter()
    references = [diffusers_reference(m, share_weights=True) for m in _experts(config, two, device, dtype, seed)]
    sync(device)
    build_s = time.perf_counter() - t0
    pipe = WanPipeline(tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"],
                       scheduler=_fixed_sigmas_euler(WARMUP_TIMESTEPS, SHIFT), transformer=references[0],
                       transformer_2=references[1] if two else None, boundary_ratio=0.875 if two else None)
    pipe.set_progress_bar_config(disable=True)
    sync(device)
    t0 = time.perf_counter()
    components = ["transformer", "transformer_2"][: len(references)]
    for i, component in enumerate(components):
        pipe.load_lora_weights(str(loras[i]), adapter_name=f"lora_{i}",
                               load_into_transformer_2=component == "transformer_2")
    pipe.fuse_lora(components=components, lora_scale=1.0)
    pipe.unload_lora_weights()  # the fused weights stay; the PEFT layers go
    sync(device)
    lora_s = time.perf_counter() - t0
    args = argparse.Namespace(height=shape["height"], width=shape["width"], frames=shape["num_frames"],
                              guidance=1.0, seed=seed)
    t0 = time.perf_counter()
    e2e.run_diffusers(pipe, args, len(WARMUP_TIMESTEPS), device)
    warmup_s = time.perf_counter() - t0
    pipe.scheduler = _fixed_sigmas_euler(TIMESTEPS, SHIFT)
    run, frames = e2e.run_diffusers(pipe, args, len(TIMESTEPS), device)
    entry = {"impl": "diffusers", "build_s": build_s, "lora_load_fuse_s": lora_s, "warmup_s": warmup_s,
             **run}
    del pipe, references
    _free(device)
    return entry, frames


def bench_e2e(models: list[str], rank: int, c: dict, shape: dict, device, dtype, tmp: Path,
              impls: list[str], out: dict, save=None, seed: int = 0, vae_decoder: str = "auto") -> dict:
    """Fills ``out`` model by model (``save()`` after each, so a failure keeps the rest)."""
    out.update({"shape": shape, "timesteps": list(TIMESTEPS), "shift": SHIFT, "rank": rank, "models": {}})
    for name in models:
        if name not in TINY_E2E and name not in E2E_CHOICES:
            raise SystemExit(f"--e2e-models: {name!r} is not one of {', '.join(E2E_CHOICES)}")
        config, two = TINY_E2E.get(name) or (WAN_CONFIGS[name], name == "Wan2.2-T2V-A14B")
        loras = []
        for i in range(2 if two else 1):
            path = tmp / f"{name}-expert{i}-rank{rank}.safetensors"
            write_random_lora(path, config, rank, dtype, seed=10 + i)
            loras.append(path)
        entry: dict = {"experts": 2 if two else 1, "runs": []}
        out["models"][name] = entry  # filled as the runs finish
        frames = {}
        try:
            for impl in impls:
                try:
                    if impl in ("fastdit", "fastdit-fp8"):
                        run, frames[impl] = e2e_fastdit(name, config, two, loras, c, shape, device, dtype, seed,
                                                        quantize="fp8" if impl == "fastdit-fp8" else None,
                                                        vae_decoder=vae_decoder)
                        if impl == "fastdit-fp8" and "fastdit" in frames:
                            run["frames_vs_fastdit"] = e2e.compare(frames[impl], frames["fastdit"])
                    elif importlib.util.find_spec("peft") is None:  # diffusers' LoRA loading needs it
                        entry["diffusers"] = {"available": False, "why": "peft is not installed"}
                        continue
                    else:
                        run, frames[impl] = e2e_diffusers(config, two, loras, c, shape, device, dtype, seed)
                        if "fastdit" in frames:
                            run["frames_vs_fastdit"] = e2e.compare(frames[impl], frames["fastdit"])
                except Exception as exc:  # e.g. out of memory: record it, go on with the rest
                    entry.setdefault("errors", {})[impl] = f"{type(exc).__name__}: {first_line(exc)}"
                    print(f"{name:18s} {impl:9s} FAILED: {entry['errors'][impl]}", flush=True)
                    _free(device)
                    continue
                entry["runs"].append(run)
                _print_run(name, run)
        finally:
            for path in loras:
                path.unlink(missing_ok=True)
            frames.clear()
            _free(device)
        by = {r["impl"]: r["stages"] for r in entry["runs"]}
        for impl, key in (("fastdit", "ratios"), ("fastdit-fp8", "ratios_fp8")):
            if impl in by and "diffusers" in by:
                entry[key] = {f"{k}_vs_diffusers": by[impl][k] / by["diffusers"][k]
                              for k in ("total", "denoise", "text", "decode") if by["diffusers"][k] > 0}
                print(f"{name:18s} {impl} / diffusers: " + json.dumps({k: round(v, 3) for k, v in entry[key].items()}),
                      flush=True)
        out["models"][name] = entry
        if save is not None:
            save()
    return out


def _print_run(name: str, run: dict) -> None:
    s = run["stages"]
    lora = run.get("lora_load_merge_s") or run.get("lora_load_fuse_s")
    lora = sum(x["total"] for x in lora) if isinstance(lora, list) else lora
    peak = "-" if run.get("peak_gb") is None else f"{run['peak_gb']:.1f} GB"
    extra = f"  vs fastdit {run['frames_vs_fastdit']['psnr_db']:.1f} dB" if "frames_vs_fastdit" in run else ""
    print(f"{name:18s} {run['impl']:9s} total {s['total']:7.2f} s  text {s['text']:5.2f}  denoise "
          f"{s['denoise']:6.2f} ({s['per_step']:.3f} s/step)  decode {s['decode']:5.2f}  peak {peak}  "
          f"LoRA {lora:.2f} s{extra}", flush=True)


def markdown(result: dict) -> str:
    e2e = result.get("e2e")
    if not e2e:
        return ""
    shape = e2e["shape"]
    lines = [f"4-step {shape['height']}x{shape['width']}x{shape['num_frames']}, no guidance, random "
             f"rank-{e2e['rank']} LoRA per expert, on {result['env']['gpu']} ({result['env']['date']})", "",
             "| model | impl | total s | text s | denoise s | s/step | decode s | LoRA load+merge s | peak GB | fastdit / diffusers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in e2e["models"].items():
        for run in entry["runs"]:
            s = run["stages"]
            lora = run.get("lora_load_merge_s") or run.get("lora_load_fuse_s")
            lora = sum(x["total"] for x in lora) if isinstance(lora, list) else lora
            key = {"fastdit": "ratios", "fastdit-fp8": "ratios_fp8"}.get(run["impl"])
            ratio = entry.get(key, {}).get("total_vs_diffusers") if key else None
            lines.append(f"| {name} | {run['impl']} | {s['total']:.2f} | {s['text']:.2f} | {s['denoise']:.2f} | "
                         f"{s['per_step']:.3f} | {s['decode']:.2f} | {lora:.2f} | "
                         f"{'-' if run.get('peak_gb') is None else round(run['peak_gb'], 1)} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)

SECTIONS = ("merge", "runtime", "e2e")
E2E_MODELS = "Wan2.1-T2V-1.3B,Wan2.1-T2V-14B,Wan2.2-T2V-A14B"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--markdown", default=None, help="also write the e2e table here")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"some of {','.join(SECTIONS)}")
    parser.add_argument("--model", default="Wan2.1-T2V-14B", choices=sorted(WAN_CONFIGS),
                        help="the model of the merge and runtime sections")
    parser.add_argument("--e2e-models", default=None,
                        help=f"models of the e2e section (default {E2E_MODELS}; with --tiny: tiny,tiny-a14b)")
    parser.add_argument("--impls", default="fastdit,diffusers",
                        help="e2e implementations: fastdit, fastdit-fp8 (quantize='fp8'), diffusers")
    parser.add_argument("--vae-decoder", default="auto", choices=VAE_DECODERS,
                        help="fastdit's decode (LoadOptions.vae_decoder; auto: the platform's)")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="folder for the temporary LoRA files")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16
    if args.tiny:
        config, rank, tokens, text_len, latent_shape = TINY, 4, 96, 16, (2, 4, 6)
        warmup, repeat = 1, 2
        shape = dict(height=32, width=32, num_frames=5, max_sequence_length=512)
        e2e_models = [m.strip() for m in (args.e2e_models or ",".join(TINY_E2E)).split(",") if m.strip()]
        e2e_dtype = torch.float32
        torch.set_num_threads(min(4, torch.get_num_threads()))
    else:
        config, rank, tokens, text_len, latent_shape = WAN_CONFIGS[args.model], args.rank, 32760, 512, (21, 60, 104)
        warmup, repeat = 2, 5
        shape = dict(height=480, width=832, num_frames=81, max_sequence_length=512)
        e2e_models = [m.strip() for m in (args.e2e_models or E2E_MODELS).split(",") if m.strip()]
        e2e_dtype = dtype
    env = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    result = {"env": env, "model": "tiny" if args.tiny else args.model, "rank": rank, "dtype": "bf16",
              "sections": sections}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section: a later failure keeps what was measured
        out.write_text(json.dumps(result, indent=2))

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if "merge" in sections or "runtime" in sections:
            path = Path(tmp) / f"random_rank{rank}.safetensors"
            result["lora_file"] = write_random_lora(path, config, rank, dtype)
            t0 = time.perf_counter()
            model = WanTransformer.from_config(config, dtype=dtype, device=device, seed=0)
            sync(device)
            result["model_build_s"] = time.perf_counter() - t0
            if "merge" in sections:
                result["merge"] = bench_merge(model, path, device, args.repeat)
                print("merge:", json.dumps(result["merge"]["first"]), flush=True)
                save()
            if "runtime" in sections:
                result["runtime_forward"] = bench_runtime_forward(model, path, config, latent_shape, text_len,
                                                                  device, dtype, warmup, repeat)
                print("runtime forward:", json.dumps(result["runtime_forward"]), flush=True)
            del model
            _free(device)
            if "runtime" in sections:
                result["runtime_products"] = bench_runtime_products(config, tokens, text_len, rank, device,
                                                                    dtype, warmup, repeat)
                print("runtime products: overhead {:.1%}, {:.3f} s per forward".format(
                    result["runtime_products"]["overhead_of_products"],
                    result["runtime_products"]["adapter_cost_per_forward_s"]), flush=True)
            path.unlink(missing_ok=True)
            save()
        if "e2e" in sections:
            impls = [s.strip() for s in args.impls.split(",") if s.strip()]
            c = shared_components(args.tiny, device, e2e_dtype)
            result["e2e"] = {}
            bench_e2e(e2e_models, rank, c, shape, device, e2e_dtype, Path(tmp), impls, result["e2e"], save,
                      vae_decoder=args.vae_decoder)
            del c
            _free(device)
    save()
    table = markdown(result)
    if table:
        print(table)
        if args.markdown:
            Path(args.markdown).write_text(table + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

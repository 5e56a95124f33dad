"""Multi-GPU scaling through the real pipeline: one whole video per parallel layout at 1, 2, 4
and 8 GPUs (Wan2.1 1.3B and 14B, 480p and 720p): seconds per denoising step, text encoding,
denoising, (parallel) VAE decode and the whole video, speedup and scaling efficiency, peak
memory, and how far each layout's frames are from the one-GPU video.

    python benchmarks/parallel.py --out benchmarks/results/parallel-h200.json
    python benchmarks/parallel.py --models Wan2.1-T2V-1.3B --resolutions 480p --gpus 1 2 --out p.json
    python benchmarks/parallel.py --layouts u4r1c2 u8r1c1 --gpus 8 --out p8.json \
        --baseline p.json --reference-dir refs/     # against an earlier 1-GPU run
    python benchmarks/parallel.py --tiny --out /tmp/p.json        # CPU smoke run (gloo, 1/2/4 ranks)

The script starts itself once per GPU count (``fastdit.distributed.launch``: one process per
GPU, NCCL) and, per layout ``ulysses x ring x cfg = N`` whose Ulysses degree divides the heads
(12 for 1.3B, 40 for 14B), builds a :class:`WanVideoPipeline` with ``parallel=`` that layout
over the same components and runs ``pipe.run(request)``: what ``fastdit generate --gpus N
--parallel ...`` runs after loading (UMT5 on rank 0 and broadcast, noise from rank 0, sequence
and CFG parallelism in the denoise loop, the VAE decode split over all N ranks). Random bf16
weights, identical on every rank and every launch (seeded): the Wan2.1 transformer (fastdit's
named config), a full-size UMT5-XXL (rank 0 only) and the Wan2.1 VAE; UniPC, flow shift 3 (5 at
720p), guidance 5. Each layout gets a warm-up video of ``--warmup-steps`` steps, then
``--runs`` timed videos of ``--steps`` steps (median reported; ``seconds_per_step`` is the
synchronised denoise time over the steps). Efficiency is ``t1 / (N * tN)`` against the one-GPU
run of the same model and size, for the step and for the whole video. Quality: PSNR and
largest difference of the uint8 frames against the one-GPU video (saved by the 1-GPU launch,
so include 1 in ``--gpus``; PSNR null: identical).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
FLOW_SHIFT = {"480p": 3.0, "720p": 5.0}
PROMPT = ("A cat and a dog baking a cake together in a kitchen. The cat is carefully measuring flour, "
          "while the dog is stirring the batter with a wooden spoon.")
NEGATIVE = "Bright tones, overexposed, static, blurred details, subtitles, worst quality, low quality"
UMT5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", tie_word_embeddings=False)
UMT5_TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, feed_forward_proj="gated-gelu")
TINY = dict(num_attention_heads=4, attention_head_dim=8, in_channels=16, out_channels=16, text_dim=32,
            freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)
TINY_SIZE = dict(height=32, width=48, num_frames=5)


def layouts(world: int, heads: int) -> list[tuple[int, int, int]]:
    """Every ``(ulysses, ring, cfg)`` with product ``world`` and ``heads % ulysses == 0``."""
    found = []
    for cfg in (1, 2):
        if world % cfg:
            continue
        sequence = world // cfg
        for ulysses in range(1, sequence + 1):
            if sequence % ulysses == 0 and heads % ulysses == 0:
                found.append((ulysses, sequence // ulysses, cfg))
    return found


# ---------------------------------------------------------------------------------------
# One rank
# ---------------------------------------------------------------------------------------
def build_components(name: str, args, root):
    """Random-weight components, the same on every rank (seeded); the text encoder on rank 0."""
    import torch
    from diffusers import AutoencoderKLWan
    from diffusers.utils import logging as diffusers_logging
    from transformers import UMT5Config, UMT5EncoderModel

    from fastdit.models.wan import WanTransformer
    from fastdit.models.wan.configs import WanConfig
    from fastdit.pipelines import tiny

    diffusers_logging.set_verbosity_error()
    device, dtype = root.device, (torch.float32 if args.tiny else torch.bfloat16)
    torch.manual_seed(0)
    tokenizer = tiny.make_tokenizer()  # in memory; its ids fit any vocabulary
    text_encoder = None
    if root.is_writer:
        text_config = UMT5Config(vocab_size=len(tokenizer), **(UMT5_TINY if args.tiny else UMT5_XXL))
        with torch.device(device):
            text_encoder = UMT5EncoderModel._from_config(text_config, dtype=dtype).eval().requires_grad_(False)
    torch.manual_seed(1)
    with torch.device(device):
        vae = (tiny._vae(wan22=False) if args.tiny else AutoencoderKLWan()).to(dtype).eval().requires_grad_(False)
    transformer = WanTransformer.from_config(WanConfig(**TINY) if args.tiny else name, dtype=dtype,
                                             device=device, seed=0)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                dtype=dtype)


def make_pipeline(c: dict, flow_shift: float, state):
    from diffusers import UniPCMultistepScheduler

    from fastdit.pipelines.spec import ModelSpec
    from fastdit.pipelines.wan import WanVideoPipeline, make_scheduler
    from fastdit.platforms import current_platform

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=flow_shift)
    spec = ModelSpec.from_configs(c["transformer"].config.to_diffusers_config(), dict(c["vae"].config),
                                  dict(scheduler.config))
    return WanVideoPipeline(spec, tokenizer=c["tokenizer"], text_encoder=c["text_encoder"],
                            vae=current_platform().optimize_vae(c["vae"]), scheduler=make_scheduler(spec),
                            transformer=c["transformer"], device=state.device, dtype=c["dtype"],
                            parallel=state)


def _peak_gb(state, peak) -> float | None:
    import torch
    import torch.distributed as dist

    if state.device.type == "cpu":
        return None
    value = torch.tensor([float(peak or 0)], device=state.device)
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item() / 1e9


def _quality(frames, reference_path: Path) -> dict:
    """PSNR (dB) and the largest difference of the uint8 frames against the one-GPU video."""
    import numpy as np

    from fastdit.pipelines.result import to_uint8

    if not reference_path.exists():
        return {}
    reference = np.load(reference_path).astype(np.float64)
    ours = to_uint8(frames).astype(np.float64)
    mse = float(np.mean((ours - reference) ** 2))
    return {"psnr_db": None if mse == 0 else 10 * math.log10(255.0**2 / mse),  # None: identical
            "max_abs_uint8": float(np.abs(ours - reference).max())}


def run_rank(args) -> None:
    """Every case for this world size, on this rank; rank 0 writes ``args.partial``."""
    import numpy as np
    import torch

    from fastdit.distributed import ParallelConfig, close_parallel, init_parallel
    from fastdit.pipelines.request import GenerationRequest
    from fastdit.pipelines.result import to_uint8

    backend, device = ("gloo", "cpu") if args.tiny else (None, None)
    root = init_parallel(ParallelConfig(ring=args.world), backend=backend, device=device)
    rows = []
    for name in args.models:
        c = build_components(name, args, root)
        heads = c["transformer"].config.num_attention_heads
        for resolution in args.resolutions:
            height, width = (TINY_SIZE["height"], TINY_SIZE["width"]) if args.tiny else RESOLUTIONS[resolution]
            frames = TINY_SIZE["num_frames"] if args.tiny else args.frames
            request = GenerationRequest(PROMPT, NEGATIVE, height=height, width=width, num_frames=frames,
                                        num_inference_steps=args.steps, guidance_scale=5.0, seed=0)
            reference = Path(args.reference_dir) / f"{name}-{resolution}.npy"
            for ulysses, ring, cfg in layouts(args.world, heads):
                if args.layouts and f"u{ulysses}r{ring}c{cfg}" not in args.layouts:
                    continue
                state = init_parallel(ParallelConfig(ulysses=ulysses, ring=ring, cfg=cfg), backend=backend,
                                      device=device)
                pipe = make_pipeline(c, FLOW_SHIFT[resolution], state)
                with torch.no_grad():
                    if args.warmup_steps:
                        pipe.run(request.replace(num_inference_steps=args.warmup_steps))
                    results = [pipe.run(request) for _ in range(args.runs)]
                t = {key: statistics.median(r.timings.get(key, 0.0) for r in results)
                     for key in ("text", "denoise", "per_step", "decode", "total")}
                row = {"part": "video", "model": name, "resolution": resolution, "height": height,
                       "width": width, "frames": frames, "tokens": _tokens(c, height, width, frames),
                       "gpus": args.world, "ulysses": ulysses, "ring": ring, "cfg": cfg,
                       "seconds_per_step": t["per_step"], "seconds": t, "steps": args.steps,
                       "peak_gb": _peak_gb(state, max(r.peak_memory or 0 for r in results))}
                if root.is_writer:
                    video = results[0].frames
                    if args.world == 1:
                        np.save(reference, to_uint8(video))
                    else:
                        row["quality_vs_1gpu"] = _quality(video, reference)
                    print(f"{name} {resolution} N={args.world} u{ulysses} r{ring} c{cfg}: "
                          f"{t['per_step']:.3f} s/step, video {t['total']:.1f} s (text {t['text']:.2f}, "
                          f"decode {t['decode']:.2f})", flush=True)
                rows.append(row)
        del c
        if root.device.type == "cuda":
            torch.cuda.empty_cache()
    if root.is_writer:
        Path(args.partial).write_text(json.dumps(rows))
    close_parallel(root)


def _tokens(c, height: int, width: int, frames: int) -> int:
    cfg = c["transformer"].config
    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)
    return math.prod(s // p for s, p in zip(latent, cfg.patch_size))


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------
def efficiencies(rows: list[dict]) -> None:
    """Add ``speedup`` / ``efficiency = t1 / (N * tN)`` per step and for the whole video,
    against the one-GPU row of the same model and size."""
    single = {(r["model"], r["resolution"]): r for r in rows if r["gpus"] == 1}
    for row in rows:
        one = single.get((row["model"], row["resolution"]))
        if one is None:
            continue
        for key, t1, tn in (("step", one["seconds_per_step"], row["seconds_per_step"]),
                            ("video", one["seconds"]["total"], row["seconds"]["total"])):
            row[f"speedup_{key}"] = t1 / tn
            row[f"efficiency_{key}"] = t1 / (row["gpus"] * tn)


def environment(args) -> dict:
    import torch

    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "tiny": args.tiny,
            "frames": args.frames, "steps": args.steps, "warmup_steps": args.warmup_steps, "runs": args.runs}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), gpus_present=torch.cuda.device_count(),
                    cudnn=torch.backends.cudnn.version())
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model, gloo")
    parser.add_argument("--models", nargs="+", default=["Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B"])
    parser.add_argument("--resolutions", nargs="+", default=["480p", "720p"], choices=list(RESOLUTIONS))
    parser.add_argument("--gpus", nargs="+", type=int, default=None, help="default 1 2 4 8 (as present)")
    parser.add_argument("--layouts", nargs="*", default=None, help="only these, e.g. u4r1c2 u2r2c2")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of a timed video")
    parser.add_argument("--warmup-steps", type=int, default=1, help="steps of the warm-up video (0: none)")
    parser.add_argument("--runs", type=int, default=1, help="timed videos per layout")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--partial", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reference-dir", default=None,
                        help="where the 1-GPU videos are kept as uint8 .npy (default: a temporary "
                             "folder); give the same folder to a later run without 1 in --gpus")
    parser.add_argument("--baseline", default=None,
                        help="an earlier --out JSON whose 1-GPU rows are the efficiency baseline")
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.resolutions = ["tiny"], ["480p"]
    if args.worker:
        run_rank(args)
        return 0

    import torch

    from fastdit.distributed.launch import launch

    present = 4 if args.tiny else torch.cuda.device_count()
    counts = sorted(args.gpus or [n for n in (1, 2, 4, 8) if n <= present])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        references = args.reference_dir or tmp
        Path(references).mkdir(parents=True, exist_ok=True)
        for world in counts:
            partial = Path(tmp) / f"world{world}.json"
            command = [sys.executable, str(Path(__file__).resolve()), *_passed(argv), "--worker",
                       "--world", str(world), "--partial", str(partial), "--reference-dir", references]
            code = launch(command, world, log_dir=Path(tmp) / f"logs{world}")
            if code != 0 or not partial.exists():
                print(f"world {world}: failed with exit code {code}", file=sys.stderr)
                continue
            rows += json.loads(partial.read_text())
    baseline = []
    if args.baseline and 1 not in counts:
        baseline = [r for r in json.loads(Path(args.baseline).read_text())["results"] if r["gpus"] == 1]
    efficiencies(baseline + rows)
    result = {"environment": environment(args), "results": rows,
              "baseline": args.baseline if baseline else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        if "efficiency_step" in row:
            quality = row.get("quality_vs_1gpu", {})
            print(f"{row['model']} {row['resolution']} u{row['ulysses']}r{row['ring']}c{row['cfg']} "
                  f"N={row['gpus']}: step speedup {row['speedup_step']:.2f} (efficiency "
                  f"{row['efficiency_step']:.2f}), video {row['speedup_video']:.2f} "
                  f"({row['efficiency_video']:.2f})"
                  + (f", vs 1 GPU: PSNR {quality['psnr_db'] or math.inf:.1f} dB, largest difference "
                     f"{quality['max_abs_uint8']:.0f}/255" if quality else ""))
    return 0 if rows else 1


def _passed(argv) -> list[str]:
    """The driver's own arguments, for its workers."""
    return list(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

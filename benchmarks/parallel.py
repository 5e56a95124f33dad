"""Multi-GPU scaling: seconds per guided denoising step for every parallel layout at 1, 2, 4
and 8 GPUs (Wan2.1 1.3B and 14B, 480p and 720p), and the parallel VAE decode.

    python benchmarks/parallel.py --out benchmarks/results/parallel-h200.json
    python benchmarks/parallel.py --models Wan2.1-T2V-1.3B --resolutions 480p --gpus 1 2 --out p.json
    python benchmarks/parallel.py --tiny --out /tmp/p.json        # CPU smoke run (gloo, 1/2/4 ranks)

The script starts itself once per GPU count (``fastdit.distributed.launch``: one process per
GPU, NCCL). A *step* is what the denoise loop runs per step with guidance on: the transformer
on the prompt and the negative prompt (batch 2 in one forward, or one branch per CFG half
with ``cfg=2``) and the guidance combine. Every layout ``ulysses x ring x cfg = N`` whose
Ulysses degree divides the heads (12 for 1.3B, 40 for 14B) is timed: median of ``--steps``
after ``--warmup``, wall clock between barriers (the slowest rank). Scaling efficiency is
``t1 / (N * tN)`` against the one-GPU step of the same model and size. Random bf16 weights
(``WanTransformer.from_config``), 512 random text tokens. The VAE part decodes the latents of
each size with diffusers' default ``AutoencoderKLWan`` (Wan2.1's VAE, random weights) on N
ranks with :func:`fastdit.distributed.parallel_vae_decode`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
TEXT_LEN = 512
TINY = dict(num_attention_heads=4, attention_head_dim=8, in_channels=16, out_channels=16, text_dim=16,
            freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)


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
def _sync(state):
    import torch
    import torch.distributed as dist

    if state.device.type == "cuda":
        torch.cuda.synchronize()
    if dist.is_initialized():
        dist.barrier()


def _time(step, state, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(state)
        start = time.perf_counter()
        step()
        _sync(state)
        times.append(time.perf_counter() - start)
    return times


def _step_fn(model, state, latents, timestep, text, negative, scale=5.0):
    """The guided step of this layout: the transformer call(s) and the combine."""
    from fastdit.distributed import CFGParallel, sequence_parallel_forward
    from fastdit.pipelines.guidance import CFG, BranchModel

    branches = BranchModel(lambda x, t, txt, image: sequence_parallel_forward(model, state, x, t, txt, image),
                           [text, negative])
    strategy = CFGParallel(scale, state) if state.config.cfg == 2 else CFG(scale, mode="batched")
    return lambda: strategy(branches, latents, timestep, 0)


def _peak(state) -> float | None:
    import torch
    import torch.distributed as dist

    if state.device.type != "cuda":
        return None
    peak = torch.tensor([float(torch.cuda.max_memory_allocated())], device=state.device)
    if dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return peak.item() / 1e9


def run_rank(args) -> None:
    """Every case for this world size, on this rank; rank 0 writes ``args.partial``."""
    import torch

    from fastdit.distributed import ParallelConfig, close_parallel, init_parallel, parallel_vae_decode
    from fastdit.models.wan import WanTransformer
    from fastdit.models.wan.configs import WanConfig

    backend = "gloo" if args.tiny else None
    root = init_parallel(ParallelConfig(ring=args.world), backend=backend,
                         device="cpu" if args.tiny else None)
    device = root.device
    dtype = torch.float32 if args.tiny else torch.bfloat16
    rows = []
    for name in args.models:
        config = WanConfig(**TINY) if args.tiny else name
        model = WanTransformer.from_config(config, dtype=dtype, device=device, seed=0)
        cfg = model.config
        for resolution in args.resolutions:
            height, width = (64, 96) if args.tiny else RESOLUTIONS[resolution]
            frames = 9 if args.tiny else args.frames
            g = torch.Generator().manual_seed(0)
            latent = (1, cfg.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
            latents = torch.randn(*latent, generator=g).to(device, dtype)
            timestep = torch.tensor([999.0], device=device)
            text_len = 8 if args.tiny else TEXT_LEN
            text, negative = (torch.randn(1, text_len, cfg.text_dim, generator=g).to(device, dtype)
                              for _ in range(2))
            tokens = latent[2] * (latent[3] // 2) * (latent[4] // 2)
            for ulysses, ring, cfg_degree in layouts(args.world, cfg.num_attention_heads):
                if args.layouts and f"u{ulysses}r{ring}c{cfg_degree}" not in args.layouts:
                    continue
                state = init_parallel(ParallelConfig(ulysses=ulysses, ring=ring, cfg=cfg_degree),
                                      backend=backend, device=device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                with torch.no_grad():
                    times = _time(_step_fn(model, state, latents, timestep, text, negative), state,
                                  args.warmup, args.steps)
                rows.append({"part": "step", "model": name, "resolution": resolution,
                             "tokens": tokens, "gpus": args.world, "ulysses": ulysses, "ring": ring,
                             "cfg": cfg_degree, "seconds_per_step": statistics.median(times),
                             "times": times, "peak_gb": _peak(state)})
                if root.is_writer:
                    print(f"{name} {resolution} N={args.world} u{ulysses} r{ring} c{cfg_degree}: "
                          f"{statistics.median(times):.4f} s/step", flush=True)
        del model
    if args.vae:
        rows += _vae_rows(args, root, device, dtype, parallel_vae_decode)
    if root.is_writer:
        Path(args.partial).write_text(json.dumps(rows))
    close_parallel(root)


def _vae_rows(args, root, device, dtype, parallel_vae_decode) -> list[dict]:
    import torch
    from diffusers import AutoencoderKLWan
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # no note about fp32 modules on the cast below
    if args.tiny:
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    else:
        vae = AutoencoderKLWan()  # Wan2.1's VAE layout
    vae = vae.to(device, dtype).eval()
    rows = []
    for resolution in args.resolutions:
        height, width = (64, 96) if args.tiny else RESOLUTIONS[resolution]
        frames = 9 if args.tiny else args.frames
        z = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8,
                        generator=torch.Generator().manual_seed(0)).to(device, dtype)
        with torch.no_grad():
            times = _time(lambda: parallel_vae_decode(vae, z, root.vae_group), root, 1,
                          max(1, args.steps // 2))
        rows.append({"part": "vae", "resolution": resolution, "gpus": args.world,
                     "seconds": statistics.median(times), "times": times})
        if root.is_writer:
            print(f"VAE {resolution} N={args.world}: {statistics.median(times):.3f} s", flush=True)
    return rows


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------
def efficiencies(rows: list[dict]) -> None:
    """Add ``efficiency = t1 / (N * tN)`` (and ``speedup``) against the one-GPU row of the same
    model and size."""
    single = {}
    for row in rows:
        if row["gpus"] == 1:
            key = (row["part"], row.get("model"), row["resolution"])
            single[key] = row.get("seconds_per_step", row.get("seconds"))
    for row in rows:
        t1 = single.get((row["part"], row.get("model"), row["resolution"]))
        tn = row.get("seconds_per_step", row.get("seconds"))
        if t1:
            row["speedup"] = t1 / tn
            row["efficiency"] = t1 / (row["gpus"] * tn)


def environment(args) -> dict:
    import torch

    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "tiny": args.tiny, "frames": args.frames, "steps": args.steps, "warmup": args.warmup}
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
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-vae", dest="vae", action="store_false")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--partial", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.resolutions = ["tiny"], ["480p"]
    if args.worker:
        run_rank(args)
        return 0

    import torch

    from fastdit.distributed.launch import launch

    present = 4 if args.tiny else torch.cuda.device_count()
    counts = args.gpus or [n for n in (1, 2, 4, 8) if n <= present]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in counts:
            partial = Path(tmp) / f"world{world}.json"
            command = [sys.executable, str(Path(__file__).resolve()), *_passed(argv), "--worker",
                       "--world", str(world), "--partial", str(partial)]
            code = launch(command, world, log_dir=Path(tmp) / f"logs{world}")
            if code != 0 or not partial.exists():
                print(f"world {world}: failed with exit code {code}", file=sys.stderr)
                continue
            rows += json.loads(partial.read_text())
    efficiencies(rows)
    result = {"environment": environment(args), "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        if "efficiency" in row:
            what = (f"{row['model']} {row['resolution']} u{row['ulysses']}r{row['ring']}c{row['cfg']}"
                    if row["part"] == "step" else f"VAE {row['resolution']}")
            print(f"{what} N={row['gpus']}: speedup {row['speedup']:.2f}, efficiency {row['efficiency']:.2f}")
    return 0 if rows else 1


def _passed(argv) -> list[str]:
    """The driver's own arguments, for its workers (without --out's effect on them)."""
    return list(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

"""Why TeaCache reuses nothing at random weights: its indicator along a 50-step schedule.

    python benchmarks/diag_teacache.py [--seeds 0,1] [--steps 50] [--out FILE]

The condition embedder of a randomly initialised Wan2.1-T2V-1.3B (nn defaults, as the GPU
benchmarks' random models), on the CPU: ``x_s = mean|temb_s - temb_{s-1}| / mean|temb_{s-1}|``
over UniPC's flow-shift-3 timesteps and the published rescaling polynomial ``poly(x_s)``, the
amount TeaCache adds to its accumulator each step (it reuses while the sum stays under the
threshold: 0.08 for 1.3B). A trained model's time embedding moves a few percent a step.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch


def trajectory(seed: int, steps: int) -> dict:
    from diffusers import UniPCMultistepScheduler

    from fastdit.cache.indicators import rescale
    from fastdit.cache.teacache import TEACACHE_COEFFICIENTS
    from fastdit.models.wan.configs import get_config
    from fastdit.models.wan.transformer import WanConditionEmbedder, sinusoidal_embedding

    config = get_config("Wan2.1-T2V-1.3B")
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    scheduler.set_timesteps(steps)
    torch.manual_seed(seed)
    embedder = WanConditionEmbedder(config)
    with torch.no_grad():  # temb as the model computes it: fp32 MLP, bf16 result
        temb = [embedder.time_embedder(sinusoidal_embedding(t.float().view(1), config.freq_dim)).to(torch.bfloat16)
                .float() for t in scheduler.timesteps]
    changes = [((b - a).abs().mean() / a.abs().mean()).item() for a, b in zip(temb, temb[1:])]
    added = [rescale(TEACACHE_COEFFICIENTS["Wan2.1-T2V-1.3B"][0], x) for x in changes]
    return {"seed": seed, "relative_change": changes, "accumulated_per_step": added,
            "relative_change_range": [min(changes), max(changes)], "added_range": [min(added), max(added)],
            "added_median": statistics.median(added)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = [trajectory(int(s), args.steps) for s in args.seeds.split(",") if s.strip()]
    for row in rows:
        lo, hi = row["relative_change_range"]
        print(f"seed {row['seed']}: relative change {lo:.3f}..{hi:.3f} a step; TeaCache adds "
              f"{row['added_range'][0]:.1f}..{row['added_range'][1]:.1f} (median {row['added_median']:.1f}) a step")
    if args.out:
        Path(args.out).write_text(json.dumps({"steps": args.steps, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

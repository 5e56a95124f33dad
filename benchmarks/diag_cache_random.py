"""What the measuring caches see at random weights: each step's indicator, for choosing thresholds.

    python benchmarks/diag_cache_random.py --out benchmarks/results/cpu-cache-random.json   # CPU, ~7 min

A randomly initialised Wan2.1-T2V-1.3B transformer (nn defaults, as the GPU benchmarks' random
models; fp32 on the CPU) with e2e.py's toy UMT5 at the real width and its toy VAE, at a small
video (``--height/--width/--frames``, 64x64x5 by default: 32 tokens), 50 UniPC steps with
guidance 5, through ``pipe.generate(..., cache=POLICY:threshold=1e-9)``: the policy measures
every step and reuses none, and ``result.stats["cache"]`` lists each branch's measured
``changes`` (the first block's residual against the previous step's, relative L1). The
threshold a policy needs to reuse at random weights is above these values; the published ones
(0.05-0.2) are below them, which is why the GPU runs at those thresholds reuse nothing. The
GPU benchmark's overhead runs (``cache.py --overhead-steps``) record the same lists at full size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SPECS = {"fbcache": "fbcache:threshold=1e-9", "dbcache": "dbcache:threshold=1e-9,n=8,m=0,warmup=8"}


def random_pipeline(seed: int):
    """fastdit's pipeline on a random 1.3B transformer with ``e2e``'s toy UMT5 (at the real
    width, 4096) and toy VAE."""
    import e2e
    from diffusers import UniPCMultistepScheduler

    from fastdit.models.wan import WanTransformer
    from fastdit.pipelines import tiny

    torch.manual_seed(seed)
    tokenizer = tiny.make_tokenizer()
    text, vae = e2e.text_encoder_and_vae(tokenizer, True, "cpu", torch.float32, text_dim=4096)
    transformer = WanTransformer.from_config("Wan2.1-T2V-1.3B", dtype=torch.float32, device="cpu", seed=seed)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0).config
    components = dict(tokenizer=tokenizer, text_encoder=text, vae=vae, transformer=transformer,
                      scheduler_config=scheduler, model="Wan2.1-T2V-1.3B", expand_timesteps=False)
    return e2e.fastdit_pipeline(components, torch.device("cpu"), torch.float32), e2e


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="fbcache,dbcache", help=f"some of {','.join(SPECS)}")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    pipe, e2e = random_pipeline(args.seed)
    result = {"steps": args.steps, "video": [args.height, args.width, args.frames], "runs": {}}
    for name in [p.strip() for p in args.policies.split(",") if p.strip()]:
        start = time.perf_counter()
        with torch.no_grad():
            out = pipe.generate(e2e.PROMPT, negative_prompt=e2e.NEGATIVE, height=args.height, width=args.width,
                                num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=5.0,
                                seed=args.seed, cache=SPECS[name])
        branches = out.stats["cache"]["branches"]
        values = [v for b in branches.values() for _, v in b["changes"] if v is not None]
        result["runs"][name] = {"spec": SPECS[name], "seconds": time.perf_counter() - start,
                                "min": min(values), "median": statistics.median(values), "max": max(values),
                                "changes": {k: b["changes"] for k, b in branches.items()}}
        print(f"{name}: {len(values)} measured steps, relative change {min(values):.3f}..{max(values):.3f} "
              f"(median {statistics.median(values):.3f})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

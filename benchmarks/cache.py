"""Step caching: each policy at three thresholds, against the uncached video and peer caches.

    python benchmarks/cache.py --out benchmarks/results/cache-h200.json                 # everything
    python benchmarks/cache.py --impls fastdit --policies teacache,magcache --out out/cache-fastdit-1.json
    python benchmarks/cache.py --impls diffusers,diffusers-fbcache --out out/cache-fbc.json
    python benchmarks/cache.py --impls diffusers,cache-dit --policies dbcache --out out/cache-dit-1.json
    python benchmarks/cache.py --tiny --out /tmp/cache.json                             # CPU check

Wan2.1-T2V-1.3B with random weights (the components of ``benchmarks/e2e.py``: one seed, diffusers'
WanTransformer3DModel shares fastdit's tensors), 480x832, 81 frames, 50 steps, guidance 5.
Per run: total seconds, denoise seconds, branch forwards run (of 2 x steps), the speed-up
over the same implementation without a cache, and the PSNR of the frames against it (and
against fastdit without a cache when it ran in the same process). The PSNR is ``e2e.compare``'s:
10 log10(1 / MSE) over float frames in [0, 1].

* ``fastdit``: no cache, then the ``--policies`` (``teacache``, ``magcache``, ``fbcache``,
  ``dbcache``, ``dbcache+taylorseer``) at three thresholds each, through
  ``pipe.generate(..., cache=SPEC)``; the forwards come from ``result.stats["cache"]``. With
  ``--overhead-steps N`` (default 10) also the cost of deciding: an ``N``-step run of each
  policy at ``threshold=1e-9`` (it measures every step and reuses none) against an uncached
  ``N``-step run, per step.
* ``diffusers``: WanPipeline without a cache; ``diffusers-fbcache``: diffusers' FirstBlockCache
  hook (``transformer.enable_cache(FirstBlockCacheConfig(threshold))``) at the fbcache thresholds;
  ``diffusers-magcache``: diffusers' MagCache hook at the magcache thresholds (K=4, retention
  0.2) with fastdit's published Wan2.1-T2V-1.3B table resampled to the step count: diffusers
  takes one ratio per step, so both guidance branches use the conditional branch's ratios
  (fastdit uses each branch's own).
* ``cache-dit``: cache-dit's DBCache (F8B0, warm-up 8, ``cache_dit.enable_cache(pipe,
  cache_config=DBCacheConfig(...), calibrator_config=TaylorSeerCalibratorConfig(1))``) without
  TaylorSeer when ``dbcache`` is in ``--policies`` and with it for ``dbcache+taylorseer``, at the
  dbcache thresholds; skipped when ``cache_dit`` is not installed.
* ``cache-dit-mask``: cache-dit at the same forwards as fastdit's MagCache runs of the same call
  (needs ``fastdit`` and ``magcache``): DBCache F1B0 with ``steps_computation_mask`` = the steps
  fastdit's cond branch computed and ``steps_computation_policy="static"``. Random weights make
  DBCache's own residual test reuse nothing, so this is how the two are compared at equal work.

One GPU step of ``benchmarks/gpu_run.sh`` runs a few policies (three runs of 50 steps take
about 2.5 minutes on an H200 at worst): ``cache-fastdit-1`` teacache + magcache,
``cache-fastdit-2`` fbcache + dbcache, ``cache-fastdit-3`` dbcache+taylorseer,
``cache-diffusers``, ``cache-dit-1`` / ``cache-dit-2``.

Random weights make the cache decisions unlike a trained model's (how fast the residuals move
decides everything): report the forwards run and the PSNR for what they are. At the published
thresholds the measuring policies (teacache, fbcache, dbcache) reuse nothing on random weights;
``--threshold-set random`` runs them (and the diffusers / cache-dit peers) at thresholds above
the random model's indicators (``RANDOM_WEIGHT_THRESHOLDS``), so their reuse paths are timed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling e2e.py
import e2e  # noqa: E402

#: policy -> (spec template, three thresholds); {n}, {w}, {model} differ for the tiny model
FASTDIT_POLICIES = {
    "teacache": ("teacache:threshold={t}{model}", (0.05, 0.08, 0.1)),
    "magcache": ("magcache:threshold={t},K=4,retention=0.2{model}", (0.06, 0.12, 0.24)),
    "fbcache": ("fbcache:threshold={t}", (0.05, 0.1, 0.2)),
    "dbcache": ("dbcache:threshold={t},n={n},m=0,warmup={w}", (0.08, 0.12, 0.2)),
    "dbcache+taylorseer": ("dbcache:threshold={t},n={n},m=0,warmup={w},taylorseer=true", (0.08, 0.12, 0.2)),
}
#: ``--threshold-set random``: thresholds at which the measuring policies reuse on random weights
#: (their indicators there: TeaCache adds 196-1405 a step, ``diag_teacache.py``; the first block's
#: residual moves 0.21-0.34 a step, ``diag_cache_random.py``); MagCache decides from its table.
RANDOM_WEIGHT_THRESHOLDS = {"teacache": (600, 1200, 2400), "fbcache": (0.3, 0.5, 1.0),
                            "dbcache": (0.3, 0.5, 1.0), "dbcache+taylorseer": (0.3, 0.5, 1.0)}
IMPLS = ("fastdit", "diffusers", "diffusers-fbcache", "diffusers-magcache", "cache-dit", "cache-dit-mask")


class BlockCounter:
    """Counts the calls that really ran ``block.ffn`` (a cached block skips it)."""

    def __init__(self, block: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = block.ffn.register_forward_hook(self._hook)

    def _hook(self, module, args, out) -> None:
        self.calls += 1

    def close(self) -> int:
        self.handle.remove()
        return self.calls


# ---------------------------------------------------------------------------------------
# fastdit
# ---------------------------------------------------------------------------------------
def run_fastdit(pipe, args, device, spec: str | None, steps: int | None = None) -> tuple[dict, object]:
    """One fastdit generation (``spec``: a cache, or None); its times and cache stats."""
    steps = steps or args.steps
    e2e.sync(device)
    t0 = time.perf_counter()
    result = pipe.generate(e2e.PROMPT, negative_prompt=e2e.NEGATIVE, height=args.height, width=args.width,
                           num_frames=args.frames, num_inference_steps=steps,
                           guidance_scale=args.guidance, seed=args.seed, cache=spec or "none")
    e2e.sync(device)
    total = time.perf_counter() - t0
    stats = result.stats.get("cache")
    if (stats is None) != (spec is None):
        raise RuntimeError(f"fastdit ran with cache stats {stats} for the setting {spec!r}")
    run = {"total_s": total, "denoise_s": result.timings["denoise"], "per_step_s": result.timings["per_step"],
           "forwards_run": stats["forwards_run"] if stats else 2 * steps,
           "forwards_total": 2 * steps, "cache_stats": stats}
    return run, result.frames


def fastdit_runs(c, args, device, dtype, log, masks: dict) -> None:
    """fastdit uncached, then each policy's thresholds; ``masks`` gets, per MagCache setting,
    the steps whose cond forward ran (1) or was reused (0), for the ``cache-dit-mask`` peer."""
    pipe = e2e.fastdit_pipeline(c, device, dtype)
    e2e.run_fastdit(pipe, args, args.warmup_steps, device)  # warm-up (both branches, batch 2)
    if args.policies:  # a cache runs one branch alone (batch 1) where only one reuses: warm those shapes too
        pipe.generate(e2e.PROMPT, negative_prompt=e2e.NEGATIVE, height=args.height, width=args.width,
                      num_frames=args.frames, num_inference_steps=max(args.warmup_steps, 2),
                      guidance_scale=args.guidance, guidance_until=0.5, seed=args.seed)
    base, frames = run_fastdit(pipe, args, device, None)
    log("fastdit", None, base, frames, frames)
    policies = selected(args.policies)
    for policy, (template, _) in policies:
        for threshold in picked(policy, args):
            run, out = run_fastdit(pipe, args, device, fastdit_spec(template, threshold, args))
            run["speedup"] = base["total_s"] / run["total_s"]
            if policy == "magcache":
                reused = set(run["cache_stats"]["branches"]["cond"]["reused_steps"])
                masks[fastdit_spec(template, threshold, args)] = (
                    [0 if i in reused else 1 for i in range(args.steps)], run)
            log("fastdit", fastdit_spec(template, threshold, args), run, out, frames)
    if args.overhead_steps:
        overhead_runs(pipe, args, device, policies, log)


def fastdit_spec(template: str, threshold: float, args) -> str:
    return template.format(t=threshold, n=args.dbcache_n, w=args.dbcache_warmup, model=args.model_suffix)


def overhead_runs(pipe, args, device, policies, log) -> None:
    """The cost of deciding: each policy measuring every step and reusing none, per step,
    against the uncached per-step time (same short run)."""
    steps = args.overhead_steps
    plain, _ = run_fastdit(pipe, args, device, None, steps)
    log("fastdit-overhead", None, plain, None, None)
    for policy, (template, _) in policies:
        spec = fastdit_spec(template, 1e-9, args)
        run, _ = run_fastdit(pipe, args, device, spec, steps)
        reused = run["cache_stats"]["forwards_reused"]
        run["overhead_per_step_pct"] = 100.0 * (run["per_step_s"] / plain["per_step_s"] - 1.0)
        if reused:
            run["note"] = f"{reused} forwards reused even at threshold 1e-9: not a pure decision cost"
        log("fastdit-overhead", spec, run, None, None)


def picked(policy: str, args) -> list[float]:
    """The ``policy``'s thresholds of ``--threshold-set`` that ``--threshold-index`` keeps (all
    three by default)."""
    thresholds = FASTDIT_POLICIES[policy][1]
    if args.threshold_set == "random":
        thresholds = RANDOM_WEIGHT_THRESHOLDS.get(policy, thresholds)
    return [thresholds[int(i)] for i in args.threshold_index.split(",") if i.strip()]


def selected(names: str):
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = set(wanted) - set(FASTDIT_POLICIES)
    if unknown:
        raise SystemExit(f"unknown policies {sorted(unknown)}; known: {', '.join(FASTDIT_POLICIES)}")
    return [(n, FASTDIT_POLICIES[n]) for n in wanted]


# ---------------------------------------------------------------------------------------
# Peers on diffusers' WanPipeline
# ---------------------------------------------------------------------------------------
def run_diffusers(pipe, args, device, counted_block: int | None) -> tuple[dict, object]:
    counter = BlockCounter(pipe.transformer.blocks[counted_block]) if counted_block is not None else None
    try:
        run, frames = e2e.run_diffusers(pipe, args, args.steps, device)
    finally:
        calls = counter.close() if counter else None
    s = run["stages"]
    return {"total_s": s["total"], "denoise_s": s["denoise"], "per_step_s": s["per_step"],
            "forwards_run": 2 * args.steps if calls is None else calls,
            "forwards_total": 2 * args.steps}, frames


def diffusers_runs(c, args, device, impls, log, fastdit_frames, masks: dict) -> None:
    pipe = e2e.diffusers_pipeline(c)
    e2e.run_diffusers(pipe, args, args.warmup_steps, device)  # warm-up
    base, frames = run_diffusers(pipe, args, device, None)
    log("diffusers", None, base, frames, frames, fastdit_frames)
    if "diffusers-fbcache" in impls:
        from diffusers.hooks import FirstBlockCacheConfig

        for threshold in picked("fbcache", args):
            pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
            try:
                run, out = run_diffusers(pipe, args, device, counted_block=1)
            finally:
                pipe.transformer.disable_cache()
            run["speedup"] = base["total_s"] / run["total_s"]
            log("diffusers-fbcache", f"FirstBlockCacheConfig(threshold={threshold})", run, out, frames,
                fastdit_frames)
    if "diffusers-magcache" in impls:
        diffusers_magcache_runs(pipe, args, device, log, frames, fastdit_frames, base)
    if "cache-dit" in impls:
        cache_dit_runs(pipe, args, device, log, frames, fastdit_frames, base)
    if "cache-dit-mask" in impls:
        cache_dit_mask_runs(pipe, args, device, log, frames, fastdit_frames, base, masks)


def diffusers_magcache_runs(pipe, args, device, log, frames, fastdit_frames, base) -> None:
    from diffusers.hooks import MagCacheConfig

    from fastdit.cache.magcache import published_table

    ratios = list(published_table("Wan2.1-T2V-1.3B", args.steps).ratios[0])  # the cond branch's
    for threshold in picked("magcache", args):
        config = MagCacheConfig(threshold=threshold, max_skip_steps=4, retention_ratio=0.2,
                                num_inference_steps=args.steps, mag_ratios=ratios)
        pipe.transformer.enable_cache(config)
        try:
            run, out = run_diffusers(pipe, args, device, counted_block=1)
        finally:
            pipe.transformer.disable_cache()
        run["speedup"] = base["total_s"] / run["total_s"]
        log("diffusers-magcache", f"MagCacheConfig(threshold={threshold}, max_skip_steps=4, "
            f"retention_ratio=0.2, Wan2.1-T2V-1.3B cond ratios)", run, out, frames, fastdit_frames)


def run_cache_dit(pipe, args, device, base, config, calibrator, counted_block: int) -> tuple[dict, object]:
    """One diffusers generation under ``cache_dit.enable_cache(pipe, config, calibrator)``, with
    its speed-up over ``base`` (the uncached diffusers run)."""
    import cache_dit

    cache_dit.enable_cache(pipe, cache_config=config, calibrator_config=calibrator)
    try:
        run, out = run_diffusers(pipe, args, device, counted_block=counted_block)
    finally:
        cache_dit.disable_cache(pipe)
    run["speedup"] = base["total_s"] / run["total_s"]
    return run, out


def cache_dit_runs(pipe, args, device, log, frames, fastdit_frames, base) -> None:
    try:
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig
    except ImportError as exc:
        log("cache-dit", None, {"skipped": f"cache_dit not importable ({exc})"}, None, None)
        return
    wanted = [name for name, _ in selected(args.policies)]
    for taylorseer in [t for t, name in ((False, "dbcache"), (True, "dbcache+taylorseer")) if name in wanted]:
        for threshold in picked("dbcache", args):
            config = DBCacheConfig(Fn_compute_blocks=args.dbcache_n, Bn_compute_blocks=0,
                                   residual_diff_threshold=threshold,
                                   max_warmup_steps=args.dbcache_warmup, num_inference_steps=args.steps)
            calibrator = TaylorSeerCalibratorConfig(taylorseer_order=1) if taylorseer else None
            run, out = run_cache_dit(pipe, args, device, base, config, calibrator, counted_block=args.dbcache_n)
            name = f"DBCache F{args.dbcache_n}B0 W{args.dbcache_warmup} R{threshold}"
            log("cache-dit", name + (" +TaylorSeer(1)" if taylorseer else ""), run, out, frames,
                fastdit_frames)


def cache_dit_mask_runs(pipe, args, device, log, frames, fastdit_frames, base, masks) -> None:
    """cache-dit at the same forwards as each fastdit MagCache run: DBCache with
    ``steps_computation_mask`` set to the steps fastdit computed and the ``static`` policy, so
    cache-dit reuses its cached residual on exactly the other steps (it still runs its first
    block there, F1: 1/30 of a 1.3B forward)."""
    try:
        from cache_dit import DBCacheConfig
    except ImportError as exc:
        log("cache-dit-mask", None, {"skipped": f"cache_dit not importable ({exc})"}, None, None)
        return
    if not masks:
        log("cache-dit-mask", None, {"skipped": "needs fastdit magcache runs in the same call"}, None, None)
        return
    for spec, (mask, fastdit_run) in masks.items():
        config = DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1e9,
                               max_warmup_steps=0, num_inference_steps=args.steps,
                               steps_computation_mask=mask, steps_computation_policy="static")
        run, out = run_cache_dit(pipe, args, device, base, config, None, counted_block=1)
        run["fastdit_over_cache_dit"] = fastdit_run["total_s"] / run["total_s"]
        run["fastdit_forwards_run"] = fastdit_run["forwards_run"]
        log("cache-dit-mask", f"DBCache F1B0 static, steps mask of fastdit {spec} ({sum(mask)}/{len(mask)})",
            run, out, frames, fastdit_frames)


# ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON result file (rewritten after every run)")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"any of {', '.join(IMPLS)}")
    parser.add_argument("--policies", default=",".join(FASTDIT_POLICIES))
    parser.add_argument("--threshold-index", default="0,1,2",
                        help="which of each policy's three thresholds to run (e.g. 1: the middle one)")
    parser.add_argument("--threshold-set", default="published", choices=("published", "random"),
                        help="published: the recommended thresholds (no reuse at random weights); random: "
                             "thresholds above the random model's indicators (RANDOM_WEIGHT_THRESHOLDS)")
    e2e.add_video_arguments(parser)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--overhead-steps", type=int, default=10,
                        help="steps of the decision-cost runs (0: none)")
    parser.add_argument("--tiny", action="store_true", help="toy model on the CPU (checks the script)")
    args = parser.parse_args(argv)
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    if set(impls) - set(IMPLS):
        raise SystemExit(f"unknown impls {sorted(set(impls) - set(IMPLS))}; known: {', '.join(IMPLS)}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.dbcache_n, args.dbcache_warmup, args.model_suffix = 8, 8, ""
    if args.tiny:  # the toy transformer has 2 blocks and is no published model
        args.height, args.width, args.frames, args.steps, args.warmup_steps = 32, 32, 5, 6, 1
        args.overhead_steps = min(args.overhead_steps, 3)
        args.dbcache_n, args.dbcache_warmup = 1, 1
        args.model_suffix = ",model=Wan2.1-T2V-1.3B"  # borrowed constants (TeaCache / MagCache)
        torch.set_num_threads(min(4, torch.get_num_threads()))
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    import diffusers

    result = {"env": {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "torch": torch.__version__, "diffusers": diffusers.__version__,
                      "dtype": str(dtype).replace("torch.", ""),
                      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
              "tiny": args.tiny, "note": "random weights: cache decisions unlike a trained model's",
              "threshold_set": args.threshold_set,
              "shape": {"height": args.height, "width": args.width, "frames": args.frames,
                        "steps": args.steps, "guidance": args.guidance}, "runs": []}
    frames: dict = {}

    def log(impl, setting, run, out, reference, fastdit_reference=None):
        entry = {"impl": impl, "setting": setting, **run}
        if out is not None:
            entry["psnr_vs_uncached_db"] = e2e.compare(out, reference)["psnr_db"]
            other = fastdit_reference if fastdit_reference is not None else frames.get("fastdit")
            if other is not None:
                entry["psnr_vs_fastdit_uncached_db"] = e2e.compare(out, other)["psnr_db"]
            if setting is None and impl not in frames:
                frames[impl] = out
        result["runs"].append(entry)
        Path(args.out).write_text(json.dumps(result, indent=1))
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in entry.items()
                 if k not in ("cache_stats",)}
        print(json.dumps(shown), flush=True)

    c = e2e.build_components(args, device, dtype)
    masks: dict = {}  # fastdit MagCache setting -> (its step mask, its run), for cache-dit-mask
    with torch.no_grad():
        if "fastdit" in impls:
            fastdit_runs(c, args, device, dtype, log, masks)
        if {"diffusers", "diffusers-fbcache", "diffusers-magcache", "cache-dit"} & set(impls):
            diffusers_runs(c, args, device, impls, log, frames.get("fastdit"), masks)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/cache.py runs at toy sizes on the CPU and writes its JSON; fastdit's first-block
cache decides as diffusers' FirstBlockCache hook does on the same weights."""

import json
import math


def _run_tiny(load_benchmark, tmp_path, *args) -> list[dict]:
    """``benchmarks/cache.py --tiny ARGS``: the runs of its JSON."""
    module = load_benchmark("cache")
    out = tmp_path / "cache.json"
    assert module.main(["--tiny", *args, "--out", str(out)]) == 0
    return json.loads(out.read_text())["runs"]


def test_cache_benchmark_tiny(load_benchmark, tmp_path):
    runs = _run_tiny(load_benchmark, tmp_path, "--impls", "fastdit,diffusers-fbcache", "--policies", "fbcache",
                     "--overhead-steps", "2")
    assert [(r["impl"], r["setting"] is None) for r in runs][:1] == [("fastdit", True)]
    fastdit = [r for r in runs if r["impl"] == "fastdit" and r["setting"]]
    assert [r["setting"] for r in fastdit] == ["fbcache:threshold=0.05", "fbcache:threshold=0.1",
                                               "fbcache:threshold=0.2"]
    for r in fastdit:
        stats = r["cache_stats"]
        assert r["forwards_run"] == stats["forwards_run"] and stats["forwards_run"] + stats["forwards_reused"] == 12
        assert r["speedup"] > 0 and r["psnr_vs_fastdit_uncached_db"] > 0
    assert fastdit[-1]["forwards_run"] < 12  # the tiny model reuses at the largest threshold
    overhead = [r for r in runs if r["impl"] == "fastdit-overhead"]
    assert [r["setting"] for r in overhead] == [None, "fbcache:threshold=1e-09"]
    assert overhead[1]["forwards_total"] == 4 and "overhead_per_step_pct" in overhead[1]
    peers = [r for r in runs if r["impl"] == "diffusers-fbcache"]
    assert len(peers) == 3
    for mine, theirs in zip(fastdit, peers):  # the same decisions on the same weights
        assert theirs["forwards_run"] == mine["forwards_run"], (mine["setting"], theirs["setting"])
        assert math.isclose(theirs["psnr_vs_uncached_db"], mine["psnr_vs_uncached_db"], abs_tol=1.0)


def test_random_weight_threshold_set(load_benchmark, tmp_path):
    """``--threshold-set random``: the measuring policies and their peer at the random-weight
    thresholds; the recorded changes are what a threshold is chosen from."""
    module = load_benchmark("cache")
    first = module.RANDOM_WEIGHT_THRESHOLDS["fbcache"][0]
    runs = _run_tiny(load_benchmark, tmp_path, "--impls", "fastdit,diffusers-fbcache", "--policies", "fbcache",
                     "--overhead-steps", "0", "--threshold-set", "random", "--threshold-index", "0")
    fastdit = [r for r in runs if r["impl"] == "fastdit" and r["setting"]]
    assert [r["setting"] for r in fastdit] == [f"fbcache:threshold={first}"]
    changes = fastdit[0]["cache_stats"]["branches"]["cond"]["changes"]
    reused = fastdit[0]["cache_stats"]["branches"]["cond"]["reused_steps"]
    assert changes and all((v < first) == (step in reused) for step, v in changes)
    peers = [r for r in runs if r["impl"] == "diffusers-fbcache"]
    assert [r["setting"] for r in peers] == [f"FirstBlockCacheConfig(threshold={first})"]


def test_magcache_decides_as_diffusers_magcache_hook(load_benchmark, tmp_path):
    """fastdit's MagCache and diffusers' MagCache hook, given the same Wan2.1-T2V-1.3B ratios
    (diffusers: the conditional branch's for both branches), the same threshold, K and
    retention, skip the same steps on the same weights and give nearly the same frames."""
    runs = _run_tiny(load_benchmark, tmp_path, "--impls", "fastdit,diffusers-magcache", "--policies", "magcache",
                     "--overhead-steps", "0")
    mine = [r for r in runs if r["impl"] == "fastdit" and r["setting"]]
    theirs = [r for r in runs if r["impl"] == "diffusers-magcache"]
    assert len(mine) == len(theirs) == 3
    assert any(r["forwards_run"] < r["forwards_total"] for r in mine)  # the table reuses
    for a, b in zip(mine, theirs):
        assert b["forwards_run"] == a["forwards_run"], (a["setting"], b["setting"])
        assert math.isclose(b["psnr_vs_uncached_db"], a["psnr_vs_uncached_db"], abs_tol=1.0)

"""benchmarks/cache.py runs at toy sizes on the CPU and writes its JSON."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "cache.py"


def test_cache_benchmark_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("cache_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "cache.json"
    assert module.main(["--tiny", "--impls", "fastdit,diffusers-fbcache", "--policies", "teacache,fbcache",
                        "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["impl"], r["setting"] is None) for r in runs][:1] == [("fastdit", True)]
    fastdit = [r for r in runs if r["impl"] == "fastdit" and r["setting"]]
    assert len(fastdit) == 6 and all("model=" not in r["setting"] for r in fastdit
                                     if r["setting"].startswith("fbcache"))
    peers = [r for r in runs if r["impl"] == "diffusers-fbcache"]
    assert len(peers) == 3
    for r in peers:
        assert 0 < r["forwards_run"] <= r["forwards_total"] == 12
    assert peers[0]["psnr_vs_uncached_db"] >= peers[-1]["psnr_vs_uncached_db"]

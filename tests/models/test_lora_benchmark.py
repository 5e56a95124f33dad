"""benchmarks/lora.py runs (tiny configs, CPU) and writes its JSON: merge, runtime mode and the
4-step end-to-end comparison (fastdit with loras/preset vs diffusers with the LoRA fused)."""

import json


def test_lora_benchmark_tiny(load_benchmark, tmp_path):
    module = load_benchmark("lora")
    out, table = tmp_path / "lora.json", tmp_path / "lora.md"
    assert module.main(["--tiny", "--out", str(out), "--tmp", str(tmp_path), "--repeat", "1",
                        "--e2e-models", "tiny-a14b", "--markdown", str(table)]) == 0
    result = json.loads(out.read_text())
    assert result["lora_file"]["pairs"] == 3 * 10  # three tiny blocks, ten products each
    assert result["merge"]["first"]["total_s"] > 0
    assert "30 parameters merged" in result["merge"]["summary"]
    assert result["runtime_forward"]["forward_with_runtime_lora_s"] > 0
    products = result["runtime_products"]["products"]
    assert [p["product"] for p in products] == ["self q/k/v/o", "cross q/o", "cross k/v", "ffn up", "ffn down"]
    assert all(p["with_adapter_ms"] > 0 and p["plain_ms"] > 0 for p in products)

    entry = result["e2e"]["models"]["tiny-a14b"]
    fastdit, diffusers = entry["runs"]
    assert (fastdit["impl"], diffusers["impl"], entry["experts"]) == ("fastdit", "diffusers", 2)
    assert "lightx2v-4step" in fastdit["sampler"] and "switch at step 2" in fastdit["sampler"]
    assert len(fastdit["lora_load_merge_s"]) == 2 and diffusers["lora_load_fuse_s"] > 0
    for run in (fastdit, diffusers):
        assert set(run["stages"]) >= {"text", "denoise", "decode", "total", "per_step"}
    assert diffusers["frames_vs_fastdit"]["max_abs"] < 1e-4  # fp32 on the CPU: the same video
    assert "total_vs_diffusers" in entry["ratios"]
    assert "| tiny-a14b | fastdit |" in table.read_text()


def test_lora_benchmark_fp8_row_tiny(load_benchmark, tmp_path):
    """The ``fastdit-fp8`` impl: the merged experts under quantize="fp8", its frames compared
    with the exact fastdit video (lossy, close) and its own ratio to diffusers."""
    module = load_benchmark("lora")
    out = tmp_path / "lora.json"
    assert module.main(["--tiny", "--out", str(out), "--tmp", str(tmp_path), "--sections", "e2e",
                        "--e2e-models", "tiny", "--impls", "fastdit,fastdit-fp8,diffusers"]) == 0
    entry = json.loads(out.read_text())["e2e"]["models"]["tiny"]
    runs = {r["impl"]: r for r in entry["runs"]}
    assert set(runs) == {"fastdit", "fastdit-fp8", "diffusers"}
    fp8 = runs["fastdit-fp8"]
    assert fp8["quantize_s"] is not None and runs["fastdit"]["quantize_s"] is None
    assert 0 < fp8["frames_vs_fastdit"]["max_abs"] < 0.5 and fp8["frames_vs_fastdit"]["psnr_db"] > 20
    assert "total_vs_diffusers" in entry["ratios"] and "total_vs_diffusers" in entry["ratios_fp8"]

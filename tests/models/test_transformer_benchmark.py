"""benchmarks/transformer.py runs (tiny config, CPU, no compile) and writes its JSON."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "transformer.py"


def test_transformer_benchmark_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("transformer_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "transformer.json"
    assert module.main(["--tiny", "--no-compile", "--models", "Wan2.1-T2V-1.3B,Wan2.2-TI2V-5B",
                        "--batches", "1,2", "--variants", "ffn_chunk_tokens=7,linear_gelu_tanh=native",
                        "--out", str(out), "--tmp", str(tmp_path)]) == 0
    t2v, ti2v = json.loads(out.read_text())["models"]
    for model in (t2v, ti2v):
        runs = [(r["impl"], r["batch"]) for r in model["runs"]]
        assert runs == [("fastdit", 1), ("fastdit", 2), ("fastdit[ffn_chunk_tokens=7]", 1),
                        ("fastdit[linear_gelu_tanh=native]", 1), ("fastdit-fp8", 1),
                        ("fastdit-fp8", 2), ("diffusers-eager", 1), ("diffusers-eager", 2)]
        # TI2V: fastdit's per-frame timesteps [B, F] against diffusers' per-token [B, L]
        eager = [r for r in model["runs"] if r["impl"] == "diffusers-eager"]
        assert all(r["cosine_vs_fastdit"] > 0.99999 for r in eager)
        fp8 = [r for r in model["runs"] if r["impl"] == "fastdit-fp8"]
        assert all(0.99 < r["cosine_vs_fastdit"] < 1.0 for r in fp8)
        assert all(r["weight_gb_after"] < r["weight_gb_before"] and r["quantize"] == "fp8"
                   for r in fp8)
        assert set(model["ratios"]) == {"B1_vs_diffusers-eager", "B2_vs_diffusers-eager",
                                        "fp8_B1_vs_diffusers-eager", "fp8_B2_vs_diffusers-eager",
                                        "fp8_B1_vs_fastdit", "fp8_B2_vs_fastdit"}
        assert model["time_to_first_forward_s"] >= model["load_s"] > 0

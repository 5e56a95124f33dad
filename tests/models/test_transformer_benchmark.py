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
    assert module.main(["--tiny", "--no-compile", "--models", "Wan2.1-T2V-1.3B", "--batches", "1,2",
                        "--variants", "ffn_chunk_tokens=7,linear_gelu_tanh=native", "--out", str(out), "--tmp", str(tmp_path)]) == 0
    model = json.loads(out.read_text())["models"][0]
    runs = [(r["impl"], r["batch"]) for r in model["runs"]]
    assert runs == [("fastdit", 1), ("fastdit", 2), ("fastdit[ffn_chunk_tokens=7]", 1),
                    ("fastdit[linear_gelu_tanh=native]", 1), ("diffusers-eager", 1),
                    ("diffusers-eager", 2)]
    eager = [r for r in model["runs"] if r["impl"] == "diffusers-eager"]
    assert all(r["cosine_vs_fastdit"] > 0.99999 for r in eager)
    assert set(model["ratios"]) == {"B1_vs_diffusers-eager", "B2_vs_diffusers-eager"}
    assert model["time_to_first_forward_s"] >= model["load_s"] > 0

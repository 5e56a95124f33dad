"""benchmarks/lora.py runs (tiny config, CPU) and writes its JSON."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "lora.py"


def test_lora_benchmark_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("lora_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "lora.json"
    assert module.main(["--tiny", "--out", str(out), "--tmp", str(tmp_path), "--repeat", "1"]) == 0
    result = json.loads(out.read_text())
    assert result["lora_file"]["pairs"] == 3 * 10  # three tiny blocks, ten products each
    assert result["merge"]["first"]["total_s"] > 0
    assert "30 parameters merged" in result["merge"]["summary"]
    products = result["runtime_products"]["products"]
    assert [p["product"] for p in products] == ["self q/k/v/o", "cross q/o", "cross k/v", "ffn up", "ffn down"]
    assert all(p["with_adapter_ms"] > 0 and p["plain_ms"] > 0 for p in products)
    assert result["e2e"]["available"] is False

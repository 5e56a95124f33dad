"""benchmarks/parallel.py: its layouts, and a tiny CPU run over 1 and 2 gloo ranks."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "parallel.py"


def _module():
    spec = importlib.util.spec_from_file_location("parallel_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layouts_respect_heads():
    layouts = _module().layouts
    assert (8, 1, 1) not in layouts(8, 12) and (4, 2, 1) in layouts(8, 12)  # 1.3B: 12 heads
    assert (8, 1, 1) in layouts(8, 40) and (4, 1, 2) in layouts(8, 40)  # 14B: 40 heads
    assert layouts(1, 12) == [(1, 1, 1)]
    assert all(u * r * c == 4 for u, r, c in layouts(4, 12))


@pytest.mark.timeout(240)
def test_parallel_benchmark_tiny(tmp_path):
    out = tmp_path / "parallel.json"
    assert _module().main(["--tiny", "--gpus", "1", "2", "--steps", "1", "--warmup", "0",
                           "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    steps = {(r["gpus"], r["ulysses"], r["ring"], r["cfg"]) for r in rows if r["part"] == "step"}
    assert steps == {(1, 1, 1, 1), (2, 1, 2, 1), (2, 2, 1, 1), (2, 1, 1, 2)}
    assert {r["gpus"] for r in rows if r["part"] == "vae"} == {1, 2}
    assert all(r["efficiency"] > 0 and r["speedup"] > 0 for r in rows)

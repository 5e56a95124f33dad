"""benchmarks/dispatch.py and benchmarks/compile_block.py run in their --tiny modes and write
their JSON (each in its own interpreter: dispatch.py registers do-nothing providers)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script, *args):
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_dispatch_benchmark_tiny(tmp_path):
    out = tmp_path / "dispatch.json"
    _run("dispatch.py", "--tiny", "--custom-op", "--label", "now", "--out", str(out))
    rows = json.loads(out.read_text())["runs"]["now"]["rows"]
    ops = {row["op"] for row in rows}
    assert {"rms_norm", "layer_norm_scale_shift", "attention", "rope_qk_cache_store", "linear"} <= ops
    for row in rows:
        assert row["dispatch_us"] > 0 and row["null_us"] > 0 and "custom_op_dispatch_us" in row


def test_compile_block_benchmark_tiny(tmp_path):
    out = tmp_path / "compile.json"
    _run("compile_block.py", "--tiny", "--out", str(out))
    model = json.loads(out.read_text())["models"][0]
    impls = [(r["impl"], r["batch"]) for r in model["runs"]]
    assert impls == [("fastdit-eager", 1), ("fastdit-compiled-blocks", 1)]
    compiled = model["runs"][1]
    assert compiled["max_abs_diff_vs_eager"] == 0.0  # the same providers; eager backend
    assert compiled["first_call_s"] > 0 and set(model["compiled_over_eager"]) == {"B1"}

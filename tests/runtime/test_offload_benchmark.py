"""benchmarks/offload.py runs in its tiny CPU mode and writes its JSON; the GPU mode's plans
(from the memory planner) are the ones the targets are stated for."""

import json
import types

import torch


def test_offload_benchmark_tiny(load_benchmark, tmp_path):
    out = tmp_path / "offload.json"
    module = load_benchmark("offload")
    assert module.main(["--tiny", "--steps", "1", "--variants", "resident,stream-24gb,fp8-16gb,a14b-24gb",
                        "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    variants = report["variants"]
    assert set(variants) == {"resident", "stream-24gb", "fp8-16gb", "a14b-24gb"}
    assert all("error" not in v for v in variants.values()), variants
    assert variants["stream-24gb"]["bitwise_equal_to_resident"]
    assert variants["stream-24gb"]["bytes_copied_per_step_gb"] > 0
    assert 0.999 < variants["fp8-16gb"]["cosine_vs_resident"] < 1.0
    assert all(c["bitwise_equal_to_resident"] for c in variants["a14b-24gb"]["checks"].values())
    assert {"stream-24gb_vs_resident", "fp8-16gb_vs_resident"} <= set(report["summary"])


def test_gpu_mode_plans(load_benchmark):
    module = load_benchmark("offload")
    args = types.SimpleNamespace(tiny=False, height=480, width=832, frames=81, batch=2)
    plans = {}
    for key, budget, weights, experts in (("stream", 24, "dense", 1), ("fp8", 16, "fp8", 1),
                                          ("a14b", 24, "dense", 2), ("a14b-fp8", 24, "fp8", 2)):
        plan, text = module.plan_for(args, budget * 10**9, weights, experts=experts)
        assert plan.streamed and len(plan.resident) + len(plan.streamed) == 40 and "memory plan" in text
        plans[key] = plan
    dit_only, _ = module.plan_for(args, 24 * 10**9, "dense", transformer_only=True)
    assert len(dit_only.resident) > len(plans["stream"].resident)
    assert torch.cuda.is_available() or module.set_budget(10**9, torch.device("cpu"))["emulated"] is False


def test_offload_benchmark_quantized_variants_tiny(load_benchmark, tmp_path):
    """The fp8 precision resident and streamed: lossy against the exact forward, and the same
    numbers both ways (the streamed e4m3 weights are the ones the precision would make)."""
    out = tmp_path / "offload.json"
    module = load_benchmark("offload")
    assert module.main(["--tiny", "--steps", "1", "--variants", "resident-quant-fp8,quant-fp8-16gb",
                        "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    resident, streamed = report["variants"]["resident-quant-fp8"], report["variants"]["quant-fp8-16gb"]
    assert "error" not in resident and "error" not in streamed, report["variants"]
    assert 0.999 < resident["cosine_vs_resident"] < 1.0
    assert streamed["cosine_vs_resident"] == resident["cosine_vs_resident"]
    assert streamed["max_abs_diff_vs_resident"] == resident["max_abs_diff_vs_resident"]
    assert streamed["bytes_copied_per_step_gb"] > 0 and "quant-fp8-16gb_vs_resident_quant" in report["summary"]

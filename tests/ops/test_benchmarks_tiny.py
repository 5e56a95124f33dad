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


def test_quant_benchmark_attention_tiny(tmp_path):
    """benchmarks/quant.py --parts attention (interpreter): the default candidate with V in one
    and two terms, the spec, and the choice by the numbers."""
    out = tmp_path / "quant.json"
    env_run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quant.py"), "--tiny", "--parts", "attention",
         "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"})
    assert env_run.returncode == 0, env_run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not result["errors"]
    names = [r["candidate"] for r in result["attention"]]
    from fastdit.kernels.triton.attention_int8 import CONFIGS

    default = CONFIGS[128][0].name  # the launch default, timed with V in one and two terms
    assert {f"int8_triton {default} v_split=False", f"int8_triton {default} v_split=True",
            "int8_native (spec)"} <= set(names), names
    choice = result["attention_choice"]["2"]
    assert choice["reference"] == "sdpa bf16"
    # only V in two terms meets the accuracy target (cosine 0.999, L1 0.03) on these inputs
    assert choice["fastest_meeting_target"]["candidate"].endswith("v_split=True")


def test_choose_attention_picks_by_speed_and_accuracy(load_benchmark):
    bench = load_benchmark("quant")

    def row(name, ms, cos=0.9995, l1=0.02):
        return {"heads": 12, "candidate": name, "ms": ms, "cosine_gaussian": cos,
                "rel_l1_gaussian": l1, "cosine_outlier": cos, "rel_l1_outlier": l1}
    rows = [row("cudnn bf16 (SDPA)", 12.0), row("int8_triton a", 8.0, l1=0.04),
            row("int8_triton b", 10.0), row("int8_triton c", 9.0, cos=0.998),
            {"heads": 12, "candidate": "int8_triton a parts", "quantize_ms": 1.0}]
    choice = bench.choose_attention(rows)["12"]
    assert choice["fastest"]["candidate"] == "int8_triton a"
    assert choice["fastest"]["speedup_vs_reference"] == 12.0 / 8.0
    assert choice["fastest_meeting_target"]["candidate"] == "int8_triton b"


def test_vae_benchmark_tiny(tmp_path):
    """benchmarks/vae.py on the toy Wan2.1 VAE: every variant decodes what eager decodes (the
    layout and cudnn flag change nothing on the CPU; compile stays within fp32 rounding), the
    FLOP count and the profile's groups are filled."""
    out = tmp_path / "vae.json"
    _run("vae.py", "--tiny", "--variants", "eager,fastdit,fastdit-channels-last,fastdit-chunk4,cudnn-benchmark,channels-last", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["flops"] > 0 and report["latent"] == [1, 16, 3, 4, 4]
    assert report["variants"]["fastdit"]["max_abs_vs_eager"] == 0  # the CPU: bit for bit
    assert report["variants"]["fastdit"]["norm_provider"] == "native"
    for name in ("eager", "fastdit", "fastdit-channels-last", "fastdit-chunk4", "cudnn-benchmark", "channels-last"):
        row = report["variants"][name]
        assert "error" not in row, row
        assert row["s"] > 0 and row["max_abs_vs_eager"] < 1e-4
    groups = report["profile_eager"]["groups_s"]
    assert groups["convolution"] > 0 and abs(sum(report["profile_eager"]["groups_share"].values()) - 1) < 1e-6


def test_transformer_profile_kernel_groups(load_benchmark):
    """benchmarks/transformer.py's profile groups (the fp8 forward's breakdown, issue 10)."""
    module = load_benchmark("transformer")
    assert module.kernel_group("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n") == "products (GEMM)"
    assert module.kernel_group("_fp8_gemm_kernel") == "products (GEMM)"
    assert module.kernel_group("_attn_fwd_int8_kernel") == "attention"
    assert module.kernel_group("cudnn_generated_fort_native_sdpa_sm90") == "attention"
    assert module.kernel_group("_layer_norm_scale_shift_fp8_kernel") == "norms and fp8 quantisation"
    assert module.kernel_group("void at::native::vectorized_elementwise_kernel<4>") == "element-wise and copies"
    assert module.kernel_group("something_else") == "other"

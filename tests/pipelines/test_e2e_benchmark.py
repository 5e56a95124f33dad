"""benchmarks/e2e.py runs (toy sizes, CPU) and writes its JSON; fastdit's frames equal diffusers'."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "e2e.py"


def test_e2e_benchmark_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("e2e_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "e2e.json"
    assert module.main(["--tiny", "--impls", "fastdit,fastdit-fp8,diffusers-eager", "--out", str(out),
                        "--markdown", str(tmp_path / "e2e.md")]) == 0
    result = json.loads(out.read_text())
    assert [r["impl"] for r in result["runs"]] == ["fastdit", "fastdit-fp8", "diffusers-eager"]
    for run in result["runs"]:
        assert set(run["stages"]) >= {"text", "denoise", "decode", "total", "per_step"}
        assert run["stages"]["total"] > 0
    assert result["runs"][2]["frames_vs_fastdit"]["max_abs"] < 1e-4
    fp8 = result["runs"][1]
    assert fp8["precision"]["quantize"] == "fp8" and fp8["precision"]["exact"] is False
    assert fp8["quality_vs_fastdit"]["frames"] == 5 and fp8["quality_vs_fastdit"]["psnr"] > 20
    assert set(result["ratios"]) >= {"total_vs_diffusers-eager", "fp8_total_vs_diffusers-eager",
                                     "fp8_total_vs_fastdit"}
    table = (tmp_path / "e2e.md").read_text()
    assert "| fastdit |" in table and "| fastdit-fp8 |" in table and "PSNR" in table


def test_e2e_benchmark_tiny_ti2v(tmp_path):
    """``--model Wan2.2-TI2V-5B``: the 48-channel VAE and per-frame timesteps in both pipelines;
    fastdit's frames still equal diffusers' (``expand_timesteps=True``)."""
    spec = importlib.util.spec_from_file_location("e2e_benchmark_ti2v", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "e2e.json"
    assert module.main(["--tiny", "--model", "Wan2.2-TI2V-5B", "--impls", "fastdit,diffusers-eager",
                        "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "Wan2.2-TI2V-5B"
    assert result["weights_gb"]["vae"] > 0
    assert result["runs"][1]["frames_vs_fastdit"]["max_abs"] < 1e-4

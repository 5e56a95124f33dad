"""benchmarks/parallel.py: its layouts, and a tiny CPU run over 1 and 2 gloo ranks through the
real pipeline."""

import json

import pytest


def test_layouts_respect_heads(load_benchmark):
    layouts = load_benchmark("parallel").layouts
    assert (8, 1, 1) not in layouts(8, 12) and (4, 2, 1) in layouts(8, 12)  # 1.3B: 12 heads
    assert (8, 1, 1) in layouts(8, 40) and (4, 1, 2) in layouts(8, 40)  # 14B: 40 heads
    assert layouts(1, 12) == [(1, 1, 1)]
    assert all(u * r * c == 4 for u, r, c in layouts(4, 12))


@pytest.mark.timeout(400)
def test_parallel_benchmark_tiny(load_benchmark, tmp_path):
    out = tmp_path / "parallel.json"
    assert load_benchmark("parallel").main(["--tiny", "--gpus", "1", "2", "--steps", "1", "--warmup-steps", "0",
                           "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {(r["gpus"], r["ulysses"], r["ring"], r["cfg"]) for r in rows} == {
        (1, 1, 1, 1), (2, 1, 2, 1), (2, 2, 1, 1), (2, 1, 1, 2)}
    for row in rows:
        assert row["seconds"]["total"] > row["seconds"]["denoise"] > 0 and row["seconds"]["decode"] > 0
        assert row["efficiency_step"] > 0 and row["speedup_video"] > 0
        if row["gpus"] == 2:  # the same video as on one rank (fp32: within a uint8 level)
            quality = row["quality_vs_1gpu"]
            assert quality["max_abs_uint8"] <= 1 and (quality["psnr_db"] is None or quality["psnr_db"] > 50)

"""benchmarks/offload_video.py in its tiny CPU mode: a whole two-expert video through
``fastdit.load`` with a budget that streams every block, in a child process, from a folder
whose ``transformer_2/`` links to ``transformer/``'s files; the JSON says what ran."""

import json


def test_offload_video_benchmark_tiny(load_benchmark, tmp_path):
    module = load_benchmark("offload_video")
    out, work = tmp_path / "offload-video.json", tmp_path / "work"
    assert module.main(["--tiny", "--out", str(out), "--work-dir", str(work)]) == 0
    report = json.loads(out.read_text())
    assert "error" not in report, report.get("traceback", report.get("error"))
    assert [p["phase"] for p in report["phases"]] == ["folder written", "loaded", "generated", "done"]
    assert report["experts_share_weights"] is True and report["folder"]["link"] == "hard"

    plan, load, summary = report["plan"], report["load"], report["summary"]
    assert plan["streams"] and plan["resident_blocks"] < plan["num_blocks"]  # the budget made it stream
    assert load["task"] == "t2v-a14b" and load["experts"] == 2
    assert load["host_stores"]["streamed_experts"] == 2 and load["host_stores"]["separate_host_stores"]

    # both experts ran, each on the steps the scheduler's timesteps give it
    steps = report["settings"]["steps"]
    per_expert = summary["steps_per_expert"]
    assert sum(per_expert.values()) == steps and per_expert["0"] > 0 and per_expert["1"] > 0
    assert summary["observed_matches_plan"] and summary["switch_at_step"] == per_expert["0"]
    rows = report["generate"]["rows"]
    assert [r["step"] for r in rows] == list(range(steps))
    assert all(r["bytes_copied_gb"] > 0 and r["s"] > 0 for r in rows)  # every block streamed, every step
    assert set(summary["step_s_per_expert"]) == {"0", "1"} and summary["first_step_after_switch_s"] > 0
    assert {"text", "denoise", "decode", "total"} <= set(report["generate"]["timings"])

    assert summary["frames_shape"] == [9, 64, 64, 3] and summary["frames_finite"]
    assert summary["host_vmhwm_gb"] > 0 and summary["host_rss_anon_peak_gb"] > 0
    assert summary["host_rss_anon_plus_pinned_gb"] >= summary["host_rss_anon_peak_gb"]
    assert summary["host_target_gb"] == 36

    # a second call finds the folder and reuses it
    again = tmp_path / "again.json"
    assert module.main(["--tiny", "--write-only", "--out", str(again), "--work-dir", str(work)]) == 0
    reused = json.loads(again.read_text())
    assert reused["folder"]["reused"] and reused["experts_share_weights"] is True


def test_offload_video_benchmark_four_step_lora_tiny(load_benchmark, tmp_path):
    """``--lora-rank`` and ``--quantize``: the 4-step recipe (a random LoRA per expert merged as
    the blocks stream, the lightx2v-4step preset, guidance off) on streamed fp8 experts."""
    module = load_benchmark("offload_video")
    out, work = tmp_path / "offload-video.json", tmp_path / "work"
    assert module.main(["--tiny", "--lora-rank", "4", "--quantize", "fp8", "--out", str(out),
                        "--work-dir", str(work)]) == 0
    report = json.loads(out.read_text())
    assert "error" not in report, report.get("traceback", report.get("error"))
    assert report["settings"]["lora_rank"] == 4 and report["settings"]["quantize"] == "fp8"
    summary = report["summary"]
    assert summary["steps_per_expert"] == {"0": 2, "1": 2} and summary["observed_matches_plan"]
    assert report["generate"]["guidance"] == ["NoGuidance()", "NoGuidance()"]
    assert report["plan"]["streams"] and summary["frames_finite"]
    assert sorted(p.name for p in work.glob("*-lora*-rank4.safetensors")) and len(list(work.glob("*-lora*"))) == 2

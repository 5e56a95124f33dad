"""``fastdit generate --cache ... / --guidance-until / --cfg-zero-star``: a good run prints what
the cache ran and reused per branch (and expert); a bad setting fails before the model loads
with ONE line on stderr, exit code 2 and no output file."""

from pathlib import Path

import imageio.v3 as iio
import pytest

from fastdit.cli import main

SMALL = ["--height", "32", "--width", "32", "--num-frames", "5", "--steps", "4", "--no-progress",
         "--max-sequence-length", "32"]


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cache_summary_per_branch_and_expert(tiny_model, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    code, stdout, stderr = _run(["generate", "--model", str(tiny_model("a14b")), "--prompt", "a cat", *SMALL,
                                 "--cache", "fbcache:threshold_1=0,threshold_2=10", "--guidance-until", "0.9",
                                 "--output", str(out)], capsys)
    assert code == 0, stderr
    assert iio.imread(out).shape == (5, 32, 32, 3)
    line = next(x for x in stdout.splitlines() if x.startswith("cache "))
    assert line.startswith("cache fbcache:threshold_1=0,threshold_2=10: ") and "branch forwards run" in line
    for key in ("expert1.cond", "expert1.uncond", "expert2.cond"):
        assert f"{key} " in line, line
    assert any(x.startswith("guidance: GuidanceUntil(until=0.9") for x in stdout.splitlines())


def test_no_cache_no_cache_line(tiny_model, tmp_path, capsys):
    code, stdout, stderr = _run(["generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat", *SMALL,
                                 "--cache", "none", "--output", str(tmp_path / "v.mp4")], capsys)
    assert code == 0, stderr
    assert not [x for x in stdout.splitlines() if x.startswith(("cache ", "guidance:"))]


BAD = {
    "unknown-policy": (["--cache", "warpcache"], "unknown cache policy 'warpcache'"),
    "unknown-key": (["--cache", "fbcache:speed=3"], "unknown setting 'speed'"),
    "negative": (["--cache", "teacache:threshold=-1"], "threshold=-1 must not be negative"),
    "not-a-number": (["--cache", "fbcache:threshold=lots"], "must be a number"),
    "no-constants": (["--cache", "teacache"], "no published coefficients for this model"),
    "too-many-blocks": (["--cache", "dbcache"], "leave nothing to cache in a model of 2 blocks"),
    "missing-table": (["--cache", "magcache:table=MISSING"], "no such file"),
    "no-key-value": (["--cache", "fbcache:threshold"], "expected key=value"),
    "until": (["--guidance-until", "1.5"], "--guidance-until must be a fraction of the steps in [0, 1]"),
    "zero-steps": (["--cfg-zero-star", "--zero-init-steps", "9"], "--zero-init-steps must be in 0..4"),
    "zero-alone": (["--zero-init-steps", "2"], "needs --cfg-zero-star"),
    "no-guidance": (["--cfg-zero-star", "--guidance-scale", "1"], "--cfg-zero-star changes classifier-free"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_cache_settings_fail_cleanly(tiny_model, tmp_path, capsys, case, monkeypatch):
    extra, words = BAD[case]
    extra = [a.replace("MISSING", str(tmp_path / "missing.json")) for a in extra]
    from fastdit.pipelines.wan import WanVideoPipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(WanVideoPipeline, "from_pretrained", classmethod(no_loading))
    outdir = tmp_path / "out"
    outdir.mkdir()
    code, stdout, stderr = _run(["generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat", *SMALL,
                                 *extra, "--output", str(outdir / "v.mp4")], capsys)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fastdit generate: error: ") and words in lines[0], lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert sorted(p.name for p in Path(outdir).iterdir()) == []

"""``fastdit generate --quantize`` (per-part overrides in its text form), ``fastdit ops --quantize`` and
``fastdit compare``, through the CLI's entry point ``fastdit.cli.main``."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from fastdit.cli import COMMANDS, build_parser, main
from fastdit.pipelines.result import write_frames

SMALL = ["--height", "32", "--width", "32", "--num-frames", "5", "--steps", "2", "--no-progress"]


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_fp8_writes_a_video_and_names_the_preset(tiny_model, tmp_path, capsys):
    exact, fp8 = tmp_path / "exact.mp4", tmp_path / "fp8.mp4"
    base = ["generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat", "--seed", "2",
            "--device", "cpu", *SMALL]
    code, out, err = _run(base + ["--output", str(exact)], capsys)
    assert code == 0, err
    assert "precision: exact (quantize=none)" in out
    code, out, err = _run(base + ["--quantize", "fp8", "--output", str(fp8)], capsys)
    assert code == 0, err
    assert iio.imread(fp8).shape == (5, 32, 32, 3)
    assert "precision: quantize=fp8: self-attention 8-bit" in out and "transformer weights" in out
    # the quality report of the fp8 video against the exact one
    code, out, err = _run(["compare", str(exact), str(fp8), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["frames"] == 5 and report["psnr"] > 20 and 0.5 < report["ssim"] <= 1.0


def test_per_part_overrides_of_the_preset(tiny_model, tmp_path, capsys):
    out_path = tmp_path / "v.mp4"
    code, out, err = _run(["generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat",
                           "--quantize", "fp8:attention=exact", *SMALL,
                           "--output", str(out_path)], capsys)
    assert code == 0, err
    assert "quantize=fp8:attention=exact" in out and "self-attention exact" in out


@pytest.mark.parametrize("flags,message", [
    (["--quantize", "int4"], "--quantize must be one of none, fp8, got 'int4'"),
    (["--quantize", "fp8:attention"], "--quantize: cannot read 'attention'"),
    (["--quantize", "fp8:speed=max"], r"--quantize: unknown part\(s\) speed"),
    (["--quantize", "fp8:attention=fp4"], "attention must be one of exact, int8, sage"),
])
def test_bad_quantize_flags_fail_before_loading(tiny_model, tmp_path, capsys, flags, message):
    out_path = tmp_path / "v.mp4"
    code, out, err = _run(["generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat",
                           *flags, *SMALL, "--output", str(out_path)], capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and __import__("re").search(message, err), err
    assert not out_path.exists() and list(tmp_path.iterdir()) == []


def test_ops_shows_the_quantised_self_attention(capsys):
    code, out, err = _run(["ops", "--quantize", "fp8", "--json"], capsys)
    assert code == 0, err
    table = json.loads(out)
    assert table["precision"]["quantize"] == "fp8"
    names = table["precision"]["self_attention_providers"]
    attention = next(r for r in table["ops"] if r["op"] == "attention")
    assert names and attention["priority"][:len(names)] == names
    code, out, _ = _run(["ops"], capsys)
    assert "precision: exact (quantize=none)" in out
    code, out, err = _run(["ops", "--quantize", "fp9"], capsys)
    assert code == 2 and "--quantize must be one of none, fp8" in err


def test_compare_is_a_registered_command_with_a_known_psnr(tmp_path, capsys):
    assert "compare" in build_parser().parse_args(["compare", "a", "b"]).command
    assert any(getattr(add, "__name__", "") == "_add_compare" for add in COMMANDS)
    rng = np.random.default_rng(0)
    a = rng.integers(20, 230, size=(3, 16, 24, 3)).astype(np.uint8)
    b = (a.astype(int) + rng.choice([-5, 5], size=a.shape)).astype(np.uint8)  # MSE (5/255)^2
    write_frames(tmp_path / "a", a)
    write_frames(tmp_path / "b", b)
    code, out, err = _run(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["psnr"] == pytest.approx(20 * np.log10(255 / 5), abs=1e-9)
    code, out, err = _run(["compare", str(tmp_path / "a"), str(tmp_path / "missing")], capsys)
    assert code == 2 and "B: no such file or folder" in err and "Traceback" not in err

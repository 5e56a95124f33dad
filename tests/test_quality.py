"""``fastdit.quality.compare`` and ``fastdit compare``: PSNR on videos built with a known MSE,
SSIM and LPIPS behaviour, mp4 and frame-folder inputs, and bad input."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from fastdit.errors import InputError, UserError
from fastdit.pipelines.result import write_frames, write_video
from fastdit.quality import compare, load_frames
from fastdit.quality_cli import add_compare, cmd_compare


def _frames(f=3, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, size=(1, h, w, 3))
    drift = np.linspace(0, 0.1, f)[:, None, None, None]
    return base + drift  # smooth-ish content, values in [0.2, 0.9]


def _with_known_mse(frames, delta, seed=1):
    """``frames + delta * s`` with random signs s = +-1: the MSE is exactly delta**2."""
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=frames.shape)
    return frames + delta * signs


def test_psnr_of_arrays_with_a_known_mse():
    a = _frames()
    b = _with_known_mse(a, 0.01)
    result = compare(a, b)
    assert result["frames"] == 3
    assert result["psnr"] == pytest.approx(40.0, abs=1e-9)  # 10 log10(1 / 1e-4)
    assert result["psnr_worst_frame"] == pytest.approx(40.0, abs=1e-9)
    assert 0.0 < result["ssim"] < 1.0


def test_psnr_of_frame_folders_with_a_known_mse(tmp_path):
    """PNG frames hold 8-bit values: an offset of +-3 levels is an MSE of (3/255)^2."""
    a8 = (np.round(_frames() * 255)).astype(np.uint8)
    signs = np.random.default_rng(2).choice([-3, 3], size=a8.shape)
    b8 = (a8.astype(int) + signs).astype(np.uint8)
    write_frames(tmp_path / "a", a8)
    write_frames(tmp_path / "b", b8)
    result = compare(tmp_path / "a", str(tmp_path / "b"))
    assert result["psnr"] == pytest.approx(20 * math.log10(255 / 3), abs=1e-9)
    # one frame worse than the others: the worst-frame figure shows it
    b8[1] = np.clip(a8[1].astype(int) + 2 * signs[1], 0, 255).astype(np.uint8)
    write_frames(tmp_path / "b", b8)
    worse = compare(tmp_path / "a", tmp_path / "b")
    assert worse["psnr_worst_frame"] == pytest.approx(20 * math.log10(255 / 6), abs=1e-9)
    assert worse["psnr"] < result["psnr"]


def _ssim_reference(a, b, win=7, k1=0.01, k2=0.03):
    """Wang et al.'s SSIM written out: 7x7 uniform windows over the valid region, sample
    (co)variances, data range 1, averaged over channels and frames."""
    from numpy.lib.stride_tricks import sliding_window_view

    def mean(x):  # (F, H, W, C) -> window means (F, H - 6, W - 6, C)
        return sliding_window_view(x, (win, win), axis=(1, 2)).mean(axis=(-2, -1))

    n = win * win
    ua, ub = mean(a), mean(b)
    va = (mean(a * a) - ua * ua) * n / (n - 1)
    vb = (mean(b * b) - ub * ub) * n / (n - 1)
    cov = (mean(a * b) - ua * ub) * n / (n - 1)
    c1, c2 = k1 ** 2, k2 ** 2
    s = (2 * ua * ub + c1) * (2 * cov + c2) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return float(s.mean())


def test_identical_videos_and_ssim_against_its_formula():
    a = _frames()
    same = compare(a, a.copy())
    assert same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0)
    for delta in (0.005, 0.05):
        b = _with_known_mse(a, delta)
        result = compare(a, b)
        assert result["psnr"] == pytest.approx(-20 * math.log10(delta), abs=1e-9)
        assert result["ssim"] == pytest.approx(_ssim_reference(a, b), abs=1e-6)


def _smooth(f=4, h=32, w=48):
    """Gradients that H.264 keeps well (yuv420: no per-pixel colour noise)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    t = np.arange(f)[:, None, None] / f
    grey = 0.5 + 0.3 * np.sin(3 * x + 2 * y + t)
    return np.repeat(grey[..., None], 3, axis=-1)


def test_mp4_input(tmp_path):
    a = _smooth()
    path = write_video(tmp_path / "a.mp4", a, fps=8)
    decoded = load_frames(path)
    assert decoded.shape == (4, 32, 48, 3) and decoded.min() >= 0 and decoded.max() <= 1
    assert compare(path, path)["psnr"] == math.inf
    lossy = compare(a, path)  # H.264 of smooth content: close but not equal
    assert 30.0 < lossy["psnr"] < math.inf and lossy["ssim"] > 0.9


def test_lpips_is_none_with_a_reason_when_its_weights_are_absent():
    result = compare(_frames(), _frames(seed=3))
    if result["lpips"] is None:
        reason = result["lpips_reason"]
        assert reason and "\n" not in reason
    else:  # lpips and its weights are on this machine
        assert result["lpips"] > 0 and "lpips_reason" not in result


def test_lpips_uses_the_model_frame_by_frame(monkeypatch):
    import fastdit.quality as quality

    class FakeLpips:  # per-frame mean |a - b| of inputs in [-1, 1]
        def __call__(self, x, y):
            assert x.shape[1] == 3 and x.min() >= -1 and x.max() <= 1
            return (x - y).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setattr(quality, "lpips_model", lambda: (FakeLpips(), None))
    a = _frames(f=10)
    b = _with_known_mse(a, 0.01)
    result = compare(a, b)
    assert result["lpips"] == pytest.approx(0.02, rel=1e-5) and "lpips_reason" not in result


BAD = [
    (lambda tmp: (_frames(f=3), _frames(f=2)), "different frame counts: A has 3, B has 2"),
    (lambda tmp: (_frames(w=32), _frames(w=30)), "different frame sizes: A is 32x24, B is 30x24"),
    (lambda tmp: (tmp / "missing.mp4", _frames()), "A: no such file or folder"),
    (lambda tmp: (_frames(), tmp), "B: the folder .* holds no frame images"),
    (lambda tmp: (_frames()[0], _frames()), r"A: frames must be \[F, H, W, 3\]"),
    (lambda tmp: (_frames() * 2, _frames()), r"A: frame values must be finite and in \[0, 1\]"),
    (lambda tmp: ((_frames() * 255).astype(np.uint8), _frames()), "must be float"),
    (lambda tmp: (_frames(h=5, w=5), _frames(h=5, w=5)), "too small for SSIM"),
    (lambda tmp: (_garbage_mp4(tmp), _frames()), "A: cannot read the video"),
    (lambda tmp: (_text_file(tmp), _frames()), "neither a folder of frames nor a video"),
    (lambda tmp: ([1, 2, 3], _frames()), "expected a path, a folder or an array"),
]


def _garbage_mp4(tmp):
    path = tmp / "broken.mp4"
    path.write_bytes(b"not a video at all" * 10)
    return path


def _text_file(tmp):
    path = tmp / "notes.txt"
    path.write_text("hello")
    return path


@pytest.mark.parametrize("make,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_is_an_input_error(tmp_path, make, message):
    a, b = make(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        compare(a, b)
    assert isinstance(info.value, UserError)


def test_cli_compare(tmp_path, capsys):
    a8 = (np.round(_frames() * 255)).astype(np.uint8)
    write_frames(tmp_path / "a", a8)
    write_frames(tmp_path / "b", a8)
    assert cmd_compare(argparse.Namespace(a=str(tmp_path / "a"), b=str(tmp_path / "b"),
                                          json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frames"] == 3 and out["psnr"] == "inf" and out["ssim"] == pytest.approx(1.0)
    assert set(out) >= {"frames", "psnr", "ssim", "lpips"}
    parser = argparse.ArgumentParser()
    add_compare(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("frames: 3  PSNR: inf dB") and "SSIM: 1.0000" in text
    args = parser.parse_args(["compare", str(tmp_path / "a"), str(tmp_path / "missing")])
    with pytest.raises(InputError, match="B: no such file or folder"):
        args.func(args)


def test_fastdit_compare_through_the_command_line(tmp_path, capsys):
    """`fastdit compare` is a registered command: PSNR of a known error, and exit 2 with one
    line for a missing input."""
    from fastdit.cli import main

    a = _frames()
    b = np.clip(_with_known_mse(a, 0.05), 0.0, 1.0)
    a8, b8 = (np.round(x * 255).astype(np.uint8) for x in (a, b))
    write_frames(tmp_path / "a", a8)
    write_frames(tmp_path / "b", b8)
    assert main(["compare", "--json", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = json.loads(capsys.readouterr().out)
    mse = np.mean((a8.astype(np.float64) - b8.astype(np.float64)) ** 2) / 255.0**2
    assert out["psnr"] == pytest.approx(10 * np.log10(1.0 / mse), abs=1e-3)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file or folder" in err[0]

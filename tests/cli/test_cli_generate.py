"""``fastdit generate`` and ``fastdit make-tiny-model``: good runs write a readable mp4; every
bad input fails before loading the model with ONE line on stderr, exit code 2, no traceback
and no output file; Ctrl-C during denoising leaves no partial file."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import pytest

from fastdit.cli import main
from tests.pipelines.helpers import sample_image

SMALL = ["--height", "32", "--width", "48", "--num-frames", "5", "--steps", "2"]


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _left_over(folder: Path, keep=()):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_generate_writes_mp4_and_summary(tiny_model, tmp_path, capsys):
    out = tmp_path / "out" / "video.mp4"
    out.parent.mkdir()
    code, stdout, stderr = _run(["generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat on a boat",
                                 "--negative-prompt", "blurry", *SMALL, "--seed", "3", "--fps", "10",
                                 "--output", str(out), "--save-frames", str(tmp_path / "frames")], capsys)
    assert code == 0, stderr
    video = iio.imread(out)
    assert video.shape == (5, 32, 48, 3)
    meta = iio.immeta(out)
    assert meta["codec"] == "h264" and meta["fps"] == 10
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame_{i:05d}.png" for i in range(5)]
    assert iio.imread(tmp_path / "frames" / "frame_00000.png").shape == (32, 48, 3)
    assert _left_over(out.parent) == ["video.mp4"] and _left_over(tmp_path) == ["frames", "out"]
    assert "wrote" in stdout and "5 frames, 48x32, 10 fps" in stdout
    for word in ("load", "text", "denoise", "decode", "s/step", "peak GPU memory"):
        assert word in stdout
    assert "denoising" in stderr and "Traceback" not in stderr  # the progress bar


def test_generate_image_models(tiny_model, tmp_path, capsys):
    image = tmp_path / "first.png"
    sample_image().save(image)
    for task, size in (("i2v", ["--height", "32", "--width", "32"]), ("ti2v", ["--height", "64", "--width", "64"])):
        out = tmp_path / f"{task}.mp4"
        code, _, stderr = _run(["generate", "--model", str(tiny_model(task)), "--prompt", "a bird", "--image",
                                str(image), *size, "--num-frames", "5", "--steps", "2", "--output", str(out),
                                "--no-progress"], capsys)
        assert code == 0, stderr
        assert iio.imread(out).shape[:3] == (5, int(size[1]), int(size[3]))


def test_generate_defaults_from_model(tiny_model, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    code, stdout, stderr = _run(["generate", "--model", str(tiny_model("a14b")), "--prompt", "a dog",
                                 "--output", str(out)], capsys)
    assert code == 0, stderr
    assert iio.imread(out).shape == (9, 64, 64, 3) and iio.immeta(out)["fps"] == 8


# ---- bad input ------------------------------------------------------------------------------
def _corrupt_weights(root: Path) -> str:
    path = next((root / "transformer").glob("*.safetensors"))
    path.write_bytes(path.read_bytes()[:1000])
    return str(path)


def _bad_model_index(root: Path) -> str:
    (root / "model_index.json").write_text("{oops")
    return "model_index.json"


BAD = {
    # name: (task, extra argv, expected words in the message, model damage)
    "frames": ("t2v", ["--num-frames", "10"], "--num-frames must be 4k+1", None),
    "height": ("t2v", ["--height", "40"], "--height must be a positive multiple of 16", None),
    "width": ("t2v", ["--width", "50"], "--width must be a positive multiple of 16", None),
    "ti2v-stride": ("ti2v", ["--height", "48"], "multiple of 32", None),
    "steps": ("t2v", ["--steps", "0"], "--steps must be at least 1", None),
    "guidance": ("t2v", ["--guidance-scale", "-1"], "--guidance-scale must be >= 0", None),
    "guidance-2": ("a14b", ["--guidance-scale-2", "-3"], "--guidance-scale-2 must be >= 0", None),
    "guidance-2-one-expert": ("t2v", ["--guidance-scale-2", "3"], "two-expert", None),
    "i2v-no-image": ("i2v", [], "an image is required (--image)", None),
    "t2v-with-image": ("t2v", ["--image", "IMAGE"], "takes no image", None),
    "image-unreadable": ("i2v", ["--image", "NOTANIMAGE"], "cannot read image", None),
    "image-missing": ("i2v", ["--image", "MISSING"], "cannot read image", None),
    "corrupt-weights": ("t2v", [], "corrupt weights file", _corrupt_weights),
    "bad-model-index": ("t2v", [], "cannot parse", _bad_model_index),
    "device": ("t2v", ["--device", "warp-drive"], "unknown device", None),
    "fps": ("t2v", ["--fps", "0"], "--fps must be between 1 and 1000", None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_cleanly(tiny_model, tmp_path, capsys, case):
    task, extra, words, damage = BAD[case]
    model = tiny_model(task)
    if damage is not None:
        model = shutil.copytree(model, tmp_path / "model")
        words_file = damage(model)
    image = tmp_path / "image.png"
    sample_image().save(image)
    (tmp_path / "not-an-image.png").write_text("hello")
    subst = {"IMAGE": str(image), "NOTANIMAGE": str(tmp_path / "not-an-image.png"),
             "MISSING": str(tmp_path / "missing.png")}
    extra = [subst.get(a, a) for a in extra]
    outdir = tmp_path / "out"
    outdir.mkdir()
    code, stdout, stderr = _run(["generate", "--model", str(model), "--prompt", "a cat", *extra,
                                 "--output", str(outdir / "v.mp4"), "--save-frames", str(outdir / "frames")],
                                capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fastdit generate: error: ") and words in lines[0], lines[0]
    if damage is not None:
        assert words_file in lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert _left_over(outdir) == []


@pytest.mark.parametrize("case", ["missing-model", "model-is-file", "no-parent", "parent-is-file",
                                  "output-is-dir", "bad-suffix", "frames-dir-is-file", "argparse"])
def test_bad_paths_fail_cleanly(tiny_model, tmp_path, capsys, case):
    model, out = str(tiny_model("t2v")), tmp_path / "v.mp4"
    argv_extra = []
    (tmp_path / "file").write_text("x")
    words = {"missing-model": "model folder not found", "model-is-file": "is not a folder",
             "no-parent": "does not exist", "parent-is-file": "is not a folder",
             "output-is-dir": "is a folder", "bad-suffix": "output must end in .mp4",
             "frames-dir-is-file": "exists and is not a folder", "argparse": "invalid int value"}[case]
    if case == "missing-model":
        model = str(tmp_path / "nowhere")
    elif case == "model-is-file":
        model = str(tmp_path / "file")
    elif case == "no-parent":
        out = tmp_path / "no" / "such" / "v.mp4"
    elif case == "parent-is-file":
        out = tmp_path / "file" / "v.mp4"
    elif case == "output-is-dir":
        out = tmp_path / "adir.mp4"
        out.mkdir()
    elif case == "bad-suffix":
        out = tmp_path / "v.avi"
    elif case == "frames-dir-is-file":
        argv_extra = ["--save-frames", str(tmp_path / "file")]
    elif case == "argparse":
        argv_extra = ["--num-frames", "many"]
    before = _left_over(tmp_path)
    try:
        code = main(["generate", "--model", model, "--prompt", "x", "--output", str(out), *argv_extra])
    except SystemExit as exc:  # argparse exits
        code = exc.code
    stdout, stderr = capsys.readouterr()
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and words in stderr, stderr
    assert "Traceback" not in stderr
    assert _left_over(tmp_path) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tiny_model, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, stderr = _run(["generate", "--model", str(tiny_model("t2v")), "--prompt", "x",
                                "--output", str(locked / "v.mp4")], capsys)
    finally:
        locked.chmod(0o700)
    assert code == 2 and "cannot write output" in stderr and len(stderr.strip().splitlines()) == 1


def test_weights_that_do_not_fit_the_config(tiny_model, tmp_path, capsys):
    """Found while loading (the headers are sound): one error line naming the folder, no traceback."""
    model = shutil.copytree(tiny_model("t2v"), tmp_path / "model")
    cfg = model / "transformer" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "ffn_dim": 96}))
    code, stdout, stderr = _run(["generate", "--model", str(model), "--prompt", "x", *SMALL,
                                 "--output", str(tmp_path / "v.mp4")], capsys)
    assert code == 2 and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("fastdit generate: error: cannot load transformer") and "transformer" in last
    assert not (tmp_path / "v.mp4").exists()


# ---- real processes --------------------------------------------------------------------------
def _cli(*args):
    return [sys.executable, "-m", "fastdit", *args]


def test_subprocess_run_and_error(tiny_model, tmp_path):
    out = tmp_path / "v.mp4"
    done = subprocess.run(_cli("generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat", *SMALL,
                               "--output", str(out)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert iio.imread(out).shape == (5, 32, 48, 3)
    bad = subprocess.run(_cli("generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat",
                              "--num-frames", "12", "--output", str(tmp_path / "w.mp4")),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "fastdit generate: error: --num-frames must be 4k+1 (1, 5, 9, ..., 81), got 12 (try 9 or 13)"]
    assert not (tmp_path / "w.mp4").exists()


def test_ctrl_c_during_denoising_leaves_no_file(tiny_model, tmp_path):
    """SIGINT while the progress bar runs: exit 130, a one-line note, no output, no temporary."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = subprocess.Popen(_cli("generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat",
                                 "--steps", "100000", "--num-frames", "5", "--height", "32", "--width", "32",
                                 "--output", str(outdir / "v.mp4"), "--save-frames", str(outdir / "frames")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            chunk = os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
            seen += chunk
            if "step/s" in seen or "s/step" in seen or not chunk:
                break
        assert "denoising" in seen, seen
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = seen + rest
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert _left_over(outdir) == []


# ---- make-tiny-model ---------------------------------------------------------------------------
def test_make_tiny_model(tmp_path, capsys):
    code, stdout, stderr = _run(["make-tiny-model", str(tmp_path / "m"), "--task", "ti2v"], capsys)
    assert code == 0, stderr
    assert "random weights" in stdout
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["expand_timesteps"] is True
    # replacing a model in place is fine
    code, _, stderr = _run(["make-tiny-model", str(tmp_path / "m"), "--task", "t2v"], capsys)
    assert code == 0, stderr
    assert json.loads((tmp_path / "m" / "model_index.json").read_text())["expand_timesteps"] is False


@pytest.mark.parametrize("case", ["file", "not-empty", "bad-task"])
def test_make_tiny_model_bad_folder(tmp_path, capsys, case):
    target = tmp_path / "t"
    argv = ["make-tiny-model", str(target)]
    if case == "file":
        target.write_text("x")
    elif case == "not-empty":
        target.mkdir()
        (target / "precious.txt").write_text("keep me")
    else:
        argv += ["--task", "t3v"]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    _, stderr = capsys.readouterr()
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    if case == "not-empty":
        assert (target / "precious.txt").read_text() == "keep me"


# ---- memory flags ------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--max-gpu-memory", "abc"], "--max-gpu-memory must be a size"),
    (["--max-gpu-memory", "0"], "--max-gpu-memory must be more than 0"),
    (["--weights", "int4"], "invalid choice"),
    (["--prefetch", "two"], "invalid int value"),
])
def test_bad_memory_flags_fail_while_parsing(tiny_model, tmp_path, capsys, flags, message):
    out, model = tmp_path / "v.mp4", str(tiny_model("t2v"))
    capsys.readouterr()  # (building the tiny model may warn)
    with pytest.raises(SystemExit) as exited:  # argparse exits
        main(["generate", "--model", model, "--prompt", "a cat", "--output", str(out), *flags])
    stderr = capsys.readouterr().err
    assert exited.value.code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not out.exists()


def test_budget_too_small_is_refused_before_loading(tiny_model, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    code, stdout, stderr = _run(["generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat", *SMALL,
                                 "--device", "cpu", "--max-gpu-memory", "1KB", "--output", str(out)], capsys)
    last = stderr.strip().splitlines()[-1]
    assert code == 2 and last.startswith("fastdit generate: error: a 0.0 MB GPU memory budget")
    assert "cannot hold this model" in last and "smallest plan needs" in last and "Traceback" not in stderr
    assert stdout == "" and not out.exists()


def test_generate_with_streamed_blocks_and_fp8(tiny_model, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    code, stdout, stderr = _run(["generate", "--model", str(tiny_model("t2v")), "--prompt", "a cat", *SMALL,
                                 "--output", str(out), "--device", "cpu", "--offload", "blocks", "--weights",
                                 "fp8", "--prefetch", "2", "--no-progress"], capsys)
    assert code == 0, stderr
    assert "memory plan" in stderr and "weights fp8" in stderr and "prefetch 2" in stderr
    assert iio.imread(out).shape == (5, 32, 48, 3)

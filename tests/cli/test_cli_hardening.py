"""Regression tests for the bad-input report (shared/reports/bad-input-2026-12-01.md), command
line side: each defect's reproducing input (or a fast equivalent), with the promised behaviour:
exit code, ONE line on stderr, no traceback, no file left, an existing output untouched, and a
message that names the problem. The smallest generation is used (16x16, 1 frame, 1 step)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from fastdit.cli import main
from tests.cli.fakes import fake_ffmpeg, hidden_leftovers
from tests.pipelines.helpers import sample_image

TINY = ["--num-frames", "1", "--height", "16", "--width", "16", "--steps", "1", "--no-progress"]


def run(argv, capsys):
    """``fastdit ARGV`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, out, err, words, exit_code=2, late=False):
    """The error is ONE line (the only line when it is found before loading; after the log
    lines of loading when ``late``), with no traceback, nothing on stdout."""
    lines = err.strip().splitlines()
    assert code == exit_code, err
    if late:
        assert all(line.startswith("[fastdit] ") for line in lines[:-1]), err
    else:
        assert len(lines) == 1, err
    assert "Traceback" not in err and out == ""
    for word in ([words] if isinstance(words, str) else words):
        assert word in lines[-1], lines[-1]
    return lines[-1]


def generate(model, out, *extra):
    return ["generate", "--model", model, "--prompt", "a cat", *TINY, "-o", out, *extra]


@pytest.fixture
def t2v(tiny_model):
    return tiny_model("t2v")


@pytest.fixture
def outdir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _good_video(path: Path) -> bytes:
    frames = (np.random.default_rng(0).random((2, 16, 16, 3)) * 255).astype(np.uint8)
    iio.imwrite(path, frames, fps=8)
    return path.read_bytes()


# ---- D1: encoder failures are detected; an existing output is untouched -------------------------
def test_d1_full_disk_encoder_failure_keeps_the_existing_video(t2v, outdir, tmp_path, capsys, monkeypatch):
    good = outdir / "good.mp4"
    before = _good_video(good)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake_ffmpeg(tmp_path, "full-disk")))
    code, out, err = run(generate(t2v, good, "--seed", "5", "--save-frames", outdir / "fr"), capsys)
    one_line_error(code, out, err, ["cannot write", "good.mp4", "ffmpeg failed", "No space left on device"],
                   late=True)
    assert good.read_bytes() == before  # untouched
    assert hidden_leftovers(outdir) == ["good.mp4"]  # no temporary, no frames


def test_d1_encoder_that_writes_nothing(t2v, outdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake_ffmpeg(tmp_path, "empty")))
    code, out, err = run(generate(t2v, outdir / "a.mp4"), capsys)
    one_line_error(code, out, err, ["cannot write", "wrote nothing"], late=True)
    assert hidden_leftovers(outdir) == []


def test_d1_out_of_range_fps_is_refused_before_loading(t2v, outdir, capsys):
    code, out, err = run(generate(t2v, outdir / "a.mp4", "--fps", "100000000000"), capsys)
    one_line_error(code, out, err, "--fps must be between 1 and 1000, got 100000000000")
    assert hidden_leftovers(outdir) == []


def test_d1_good_run_reports_the_fps_written(t2v, outdir, capsys):
    code, out, err = run(generate(t2v, outdir / "a.mp4", "--fps", "240"), capsys)
    assert code == 0, err
    assert iio.immeta(outdir / "a.mp4")["fps"] == 240 and "240 fps" in out
    code, out, err = run(generate(t2v, outdir / "b.mp4"), capsys)
    assert code == 0 and "8 fps (the model's default)" in out
    assert hidden_leftovers(outdir) == ["a.mp4", "b.mp4"]


# ---- D2 / D31: make-tiny-model replaces only what it wrote --------------------------------------
def test_d2_make_tiny_model_never_touches_a_real_model(tiny_model, tmp_path, capsys):
    real = shutil.copytree(tiny_model("a14b"), tmp_path / "realmodel")
    (real / "fastdit_defaults.json").unlink()
    (real / ".fastdit-tiny-model").unlink()
    (real / "transformer_2" / "notes.txt").write_text("keep")
    before = hidden_leftovers(real)
    weights = (real / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    code, out, err = run(["make-tiny-model", real], capsys)
    one_line_error(code, out, err, ["realmodel", "--force"])
    assert hidden_leftovers(real) == before
    assert (real / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["realmodel"]


def test_d2_a_tiny_model_with_a_user_file_is_kept(tmp_path, capsys):
    folder = tmp_path / "m"
    code, _, err = run(["make-tiny-model", folder], capsys)
    assert code == 0, err
    code, _, err = run(["make-tiny-model", folder, "--task", "ti2v"], capsys)  # its own: replaced
    assert code == 0, err
    assert json.loads((folder / "model_index.json").read_text())["expand_timesteps"] is True
    (folder / "vae" / "mine.txt").write_text("keep")
    code, out, err = run(["make-tiny-model", folder], capsys)
    one_line_error(code, out, err, ["vae/mine.txt", "--force"])
    assert (folder / "vae" / "mine.txt").read_text() == "keep"
    code, _, err = run(["make-tiny-model", folder, "--force"], capsys)
    assert code == 0, err
    assert not (folder / "vae" / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no hidden leftovers beside it


def test_d31_interrupted_make_tiny_model_leaves_nothing(tmp_path, monkeypatch):
    from fastdit.pipelines import tiny

    def interrupted(pipe, directory):
        (directory / "model_index.json").write_text("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "_quiet_save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny.make_tiny_model(tmp_path / "new" / "m")
    assert list(tmp_path.iterdir()) == []  # neither the model nor the parents made for it


def test_d31_tiny_model_files_get_the_usual_mode(tmp_path):
    from fastdit.pipelines.atomic import umask
    from fastdit.pipelines.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path / "m")
    modes = {(p.stat().st_mode & 0o777) for p in folder.rglob("*") if p.is_file()}
    assert modes == {0o666 & ~umask()}


# ---- D6: sizes bounded by the model's range and an estimate -----------------------------------------
@pytest.mark.parametrize("extra, words", [
    (["--num-frames", "400001"], "--num-frames 400001 is beyond this model's range: at most 125"),
    (["--height", "8192", "--width", "8192"], "--height 8192 is beyond this model's range: at most 512"),
    (["--height", "512", "--width", "512", "--num-frames", "125", "--steps", str(10**12)],
     "this request would take at least"),
])
def test_d6_infeasible_requests_are_refused_up_front(t2v, outdir, capsys, extra, words):
    start = time.perf_counter()
    code, out, err = run(["generate", "--model", t2v, "--prompt", "x", "--no-progress", *extra, "-o",
                          outdir / "a.mp4"], capsys)
    line = one_line_error(code, out, err, [words, "--force"])
    assert time.perf_counter() - start < 60 and "loading" not in line
    assert hidden_leftovers(outdir) == []


# ---- D7: SIGTERM cleans up like Ctrl-C ------------------------------------------------------------
def _wait_for(path: Path, proc, seconds=180):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_d7_sigterm_while_writing_removes_partials_and_ends_ffmpeg(t2v, outdir, tmp_path):
    pid_file = tmp_path / "ffmpeg.pid"
    env = dict(os.environ, IMAGEIO_FFMPEG_EXE=str(fake_ffmpeg(tmp_path, "slow")), FAKE_FFMPEG_PID=str(pid_file))
    proc = subprocess.Popen([sys.executable, "-m", "fastdit", *generate(t2v, outdir / "a.mp4", "--save-frames",
                                                                        outdir / "fr")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(pid_file, proc)
        assert any(p.name.endswith(".partial.mp4") for p in outdir.iterdir())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "fastdit generate: terminated by SIGTERM"
    assert "Traceback" not in err
    assert hidden_leftovers(outdir) == []
    assert _gone(int(pid_file.read_text()))


# ---- D8: out of memory is one line with a hint; the text length is bounded ---------------------------
def test_d8_out_of_memory_is_one_line(t2v, outdir):
    import resource

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (16 * 2**30, 16 * 2**30))

    done = subprocess.run([sys.executable, "-m", "fastdit", "generate", "--model", str(t2v), "--prompt", "x",
                           "--num-frames", "400001", "--height", "1024", "--width", "1024", "--steps", "1",
                           "--guidance-scale", "1", "--force", "--no-progress", "-o", str(outdir / "a.mp4")],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_memory)
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert line.startswith("fastdit generate: error: out of memory (tried to allocate 97.66 GiB)")
    assert "--height" in line and "--offload model" in line
    assert hidden_leftovers(outdir) == []


def test_d8_max_sequence_length_is_bounded(t2v, outdir, capsys):
    code, out, err = run(generate(t2v, outdir / "a.mp4", "--max-sequence-length", "1000000"), capsys)
    one_line_error(code, out, err, "--max-sequence-length must be between 1 and 512, got 1000000")


# ---- D4: flow shift ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", ["nan", "inf", "-1", "0"])
def test_d4_flow_shift_must_be_positive_and_finite(t2v, outdir, capsys, shift):
    code, out, err = run(generate(t2v, outdir / "a.mp4", "--flow-shift", shift), capsys)
    one_line_error(code, out, err, "--flow-shift must be a positive finite number")
    assert hidden_leftovers(outdir) == []


# ---- D26, D27: notices, once each ----------------------------------------------------------------------
def test_d26_d27_notices_are_printed_once(t2v, outdir, capsys):
    long_prompt = " ".join(["cat"] * 30)
    code, out, err = run(["generate", "--model", t2v, "--prompt", long_prompt, "--negative-prompt", "blurry",
                          "--guidance-scale", "1", "--max-sequence-length", "8", *TINY, "-o", outdir / "a.mp4"],
                         capsys)
    assert code == 0, err
    assert err.count("the negative prompt is not used") == 1
    assert err.count("only the first 8 are used") == 1 and "dropped" in err


# ---- D9, D11: seeds and prompts checked before loading --------------------------------------------
@pytest.mark.parametrize("seed", ["100000000000000000000000", "-9223372036854775809"])
def test_d9_seed_out_of_range(t2v, outdir, capsys, seed):
    code, out, err = run(generate(t2v, outdir / "a.mp4", "--seed", seed), capsys)
    one_line_error(code, out, err, "--seed must be an integer in [-2^63, 2^64)")


def test_d11_prompt_that_is_not_utf8(t2v, outdir, capsys):
    prompt = os.fsdecode(b"bad \xff\xfe bytes")  # what Python makes of such argv bytes
    code, out, err = run(["generate", "--model", t2v, "--prompt", prompt, *TINY, "-o", outdir / "a.mp4"], capsys)
    one_line_error(code, out, err, "--prompt is not valid UTF-8")


# ---- D10: decompression bombs are image errors -------------------------------------------------------
def test_d10_decompression_bomb_image(tiny_model, outdir, tmp_path, capsys):
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (9500, 9500)).save(bomb)  # 11 KB on disk, 90 million pixels
    code, out, err = run(["generate", "--model", tiny_model("i2v"), "--prompt", "x", *TINY, "--image", bomb,
                          "-o", outdir / "a.mp4"], capsys)
    one_line_error(code, out, err, [f"cannot read image {bomb}", "90250000 pixels", "MAX_IMAGE_PIXELS"])


def test_d5_sixteen_bit_png_is_scaled(tiny_model, outdir, tmp_path, capsys):
    from PIL import Image

    from fastdit.pipelines.stages import load_image

    values = (np.random.default_rng(0).random((24, 24)) * 65535).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    rgb = np.asarray(load_image(str(path)))
    assert np.array_equal(rgb[..., 0], np.round(values / 257).astype(np.uint8))
    assert (rgb == 255).mean() < 0.01
    code, _, err = run(["generate", "--model", tiny_model("ti2v"), "--prompt", "x", "--num-frames", "1",
                        "--height", "32", "--width", "32", "--steps", "1", "--no-progress", "--image", path,
                        "-o", outdir / "a.mp4"], capsys)
    assert code == 0, err


# ---- D12, D13, D14, D28: output paths -----------------------------------------------------------------
def test_d12_long_output_names(t2v, outdir, capsys):
    ok = outdir / ("n" * 246 + ".mp4")  # 250 bytes: fits, although its temporary name would not have
    code, _, err = run(generate(t2v, ok), capsys)
    assert code == 0, err
    assert hidden_leftovers(outdir) == [ok.name]
    code, out, err = run(generate(t2v, outdir / ("n" * 260 + ".mp4")), capsys)
    one_line_error(code, out, err, ["file name is 264 bytes long", "limit here is 255"])
    assert hidden_leftovers(outdir) == [ok.name]


def test_d13_existing_output_that_cannot_be_replaced(t2v, outdir, tmp_path, capsys, monkeypatch):
    """Found at the end (a folder took the output's place during the run): one line, the folder
    and its content untouched, no temporary left."""
    target = outdir / "a.mp4"
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake_ffmpeg(tmp_path, "steal")))
    monkeypatch.setenv("FAKE_FFMPEG_TARGET", str(target))
    code, out, err = run(generate(t2v, target, "--save-frames", outdir / "fr"), capsys)
    one_line_error(code, out, err, ["cannot replace", "a.mp4"], late=True)
    assert hidden_leftovers(outdir) == ["a.mp4", "a.mp4/keep.txt"]  # the frames were rolled back


def test_d13_immutable_output_is_refused_up_front(t2v, outdir, capsys):
    locked = outdir / "locked.mp4"
    locked.write_text("old")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(locked)]).returncode != 0:
        locked.chmod(0o444)
        if os.geteuid() == 0:
            pytest.skip("needs chattr (root) or a non-root user")
    try:
        code, out, err = run(generate(t2v, locked), capsys)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
    one_line_error(code, out, err, ["cannot replace output", "locked.mp4", "read-only or immutable"])
    assert locked.read_text() == "old" and hidden_leftovers(outdir) == ["locked.mp4"]


@pytest.mark.parametrize("case", ["same-as-output", "long-name", "too-long"])
def test_d14_save_frames_checked_up_front(t2v, outdir, capsys, case):
    video = outdir / "a.mp4"
    frames = {"same-as-output": video, "long-name": outdir / ("f" * 250), "too-long": outdir / ("f" * 260)}[case]
    code, out, err = run(generate(t2v, video, "--save-frames", frames), capsys)
    if case == "long-name":  # its temporary name is short now: it works
        assert code == 0, err
        assert hidden_leftovers(outdir) == sorted(["a.mp4", frames.name, f"{frames.name}/frame_00000.png"])
        return
    words = "is the video's own path" if case == "same-as-output" else "file name is 260 bytes long"
    one_line_error(code, out, err, words)
    assert hidden_leftovers(outdir) == []


def test_d14_failing_frames_roll_back_the_video(outdir, tmp_path):
    """A frame write that fails (a full disk) publishes neither the frames nor the video."""
    from fastdit.cli.output import write_outputs
    from fastdit.errors import OutputError

    video = outdir / "a.mp4"
    before = _good_video(video)
    (outdir / "fr").mkdir()
    (outdir / "fr" / "frame_00000.png").write_bytes(b"old frame")
    frames = np.random.default_rng(1).random((2, 16, 16, 3)).astype(np.float32)

    def full_disk(folder, frames):
        (Path(folder) / "frame_00000.png").write_bytes(b"half")
        raise OutputError(f"cannot write frames to {folder}: No space left on device")

    with pytest.raises(OutputError, match=r"frames to .*out/fr: No space left"):
        write_outputs(frames, video, 8, outdir / "fr", frame_writer=full_disk)
    assert video.read_bytes() == before
    assert (outdir / "fr" / "frame_00000.png").read_bytes() == b"old frame"
    assert hidden_leftovers(outdir) == ["a.mp4", "fr", "fr/frame_00000.png"]
    write_outputs(frames, video, 8, outdir / "fr")  # and without the failure both are replaced
    assert iio.imread(video).shape == (2, 16, 16, 3)
    assert hidden_leftovers(outdir) == ["a.mp4", "fr", "fr/frame_00000.png", "fr/frame_00001.png"]


def test_d28_empty_output(t2v, capsys):
    code, out, err = run(["generate", "--model", t2v, "--prompt", "x", "-o", ""], capsys)
    one_line_error(code, out, err, "--output is empty")


# ---- D15, D32: FASTDIT_* values ----------------------------------------------------------------------------
@pytest.fixture
def env_config(monkeypatch, fresh_config):
    """Set FASTDIT_* variables; fastdit parses them again."""
    from fastdit.platforms import current_platform

    def setenv(**values):
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        fresh_config.reset_config()  # the next get_config() reads the environment
        current_platform.cache_clear()

    yield setenv
    for key in ("FASTDIT_STRICT_OPS", "FASTDIT_OP_PROVIDERS", "FASTDIT_ATTENTION_BACKEND",
                "FASTDIT_FFN_CHUNK_TOKENS", "FASTDIT_VAE_AUTOTUNE", "FASTDIT_PLATFORM"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("name, value, words", [
    ("FASTDIT_STRICT_OPS", "maybe", "FASTDIT_STRICT_OPS: expected 1/0/true/false, got 'maybe'"),
    ("FASTDIT_OP_PROVIDERS", "=x", "FASTDIT_OP_PROVIDERS: cannot parse '=x'"),
    ("FASTDIT_ATTENTION_BACKEND", "garbage", "FASTDIT_ATTENTION_BACKEND: attention_backend must be one of auto"),
    ("FASTDIT_FFN_CHUNK_TOKENS", "abc", "FASTDIT_FFN_CHUNK_TOKENS: expected an integer, got 'abc'"),
    ("FASTDIT_FFN_CHUNK_TOKENS", "-1", "FASTDIT_FFN_CHUNK_TOKENS: ffn_chunk_tokens must be an integer >= 0, got '-1'"),
    ("FASTDIT_VAE_AUTOTUNE", "perhaps", "FASTDIT_VAE_AUTOTUNE: expected 1/0/true/false"),
    ("FASTDIT_PLATFORM", "garbage", "FASTDIT_PLATFORM: platform must be one of rocm, cuda"),
])
@pytest.mark.parametrize("command", ["generate", "ops"])
def test_d15_bad_environment_values(t2v, outdir, capsys, env_config, name, value, words, command):
    env_config(**{name: value})
    argv = generate(t2v, outdir / "a.mp4") if command == "generate" else ["ops"]
    code, out, err = run(argv, capsys)
    one_line_error(code, out, err, [f"fastdit {command}: error: ", words])
    assert hidden_leftovers(outdir) == []


def test_d15_forced_platform_without_its_device(t2v, outdir, capsys, env_config):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env_config(FASTDIT_PLATFORM="cuda")
    code, out, err = run(generate(t2v, outdir / "a.mp4"), capsys)
    one_line_error(code, out, err, "the cuda platform (FASTDIT_PLATFORM) has no usable device")


def test_d32_forced_platform_without_its_device_offers_no_gpu_providers(capsys, env_config, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env_config(FASTDIT_PLATFORM="cuda", TRITON_INTERPRET="0")
    code, out, err = run(["ops", "--json"], capsys)
    assert code == 0, err
    rows = {row["op"]: row for row in json.loads(out)["ops"]}
    assert all("triton" not in r["available"] and "cublaslt" not in r["available"] for r in rows.values())
    assert all(r["first_available"] not in ("triton", "cublaslt") for r in rows.values())


# ---- D16, D18, D19, D24, D29: the model folder, checked before anything loads --------------------------
def _edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_weights(path: Path, drop=None, reshape=None, add=None):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = tensors[reshape].reshape(-1)[:-1].clone()
    if add:
        tensors[add] = tensors[next(iter(tensors))].clone()
    save_file(tensors, path, metadata={"format": "pt"})


def _clip_key(root: Path, suffix: str) -> str:
    """The CLIP tensor name as this transformers release saved it (5.x drops 'vision_model.')."""
    from safetensors import safe_open

    with safe_open(str(root / CLIP), "pt") as handle:
        return next(k for k in handle.keys() if k.endswith(suffix))


TE = "text_encoder/model.safetensors"
TR = "transformer/diffusion_pytorch_model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"
CLIP = "image_encoder/model.safetensors"
FOLDER_DAMAGE = {
    # name: (task, damage(root), words in the message)
    "d3-text-encoder-tensor": ("t2v", lambda r: _edit_weights(r / TE, drop="encoder.block.0.layer.0.SelfAttention.q.weight"),
                               ["cannot load text_encoder", "lack", "'encoder.block.0.layer.0.SelfAttention.q.weight'"]),
    "d3-clip-tensor": ("i2v", lambda r: _edit_weights(r / CLIP, drop=_clip_key(r, "post_layernorm.weight")),
                       ["cannot load image_encoder", "post_layernorm.weight'"]),
    "d16-patch-size": ("t2v", lambda r: _edit_json(r / "transformer/config.json", patch_size=[1, 0, 0]),
                       ["transformer/config.json: patch_size must be three positive integers, got [1, 0, 0]"]),
    "d16-heads": ("t2v", lambda r: _edit_json(r / "transformer/config.json", num_attention_heads="two"),
                  ["num_attention_heads must be a positive integer, got \"two\""]),
    "d16-boundary": ("a14b", lambda r: _edit_json(r / "model_index.json", boundary_ratio="abc"),
                     ["model_index.json: boundary_ratio must be a number in (0, 1]"]),
    "d18-deleted": ("t2v", lambda r: _edit_weights(r / TR, drop="blocks.0.attn1.to_k.weight"),
                    ["cannot load transformer", "'blocks.0.attn1.to_k.weight'"]),
    "d18-reshaped": ("t2v", lambda r: _edit_weights(r / TR, reshape="blocks.0.attn1.to_k.weight"),
                     ["'blocks.0.attn1.to_k.weight'", "has shape [1023], its config.json expects [32, 32]"]),
    "d18-extra": ("t2v", lambda r: _edit_weights(r / TR, add="bogus.weight"), ["unexpected tensor 'bogus.weight'"]),
    "d18-config-key": ("t2v", lambda r: _edit_json(r / "transformer/config.json", frobnicate=1),
                       ["unsupported diffusers config keys ['frobnicate']"]),
    "d18-layers": ("t2v", lambda r: _edit_json(r / "transformer/config.json", num_layers=-1),
                   ["num_layers must be a positive integer, got -1"]),
    "d19-vae-tensor": ("t2v", lambda r: _edit_weights(r / VAE, drop="decoder.mid_block.attentions.0.proj.bias"),
                       ["cannot load vae", "'decoder.mid_block.attentions.0.proj.bias'"]),
    "d24-scheduler": ("t2v", lambda r: _edit_json(r / "scheduler/scheduler_config.json", num_train_timesteps="many"),
                      ["scheduler_config.json: num_train_timesteps must be a positive integer, got \"many\""]),
    "d4-checkpoint-shift": ("t2v", lambda r: _edit_json(r / "scheduler/scheduler_config.json", flow_shift=float("nan")),
                            ["flow_shift must be a positive finite number or null"]),
    "d29-defaults-fps": ("t2v", lambda r: _edit_json(r / "fastdit_defaults.json", fps=0),
                         ["fastdit_defaults.json: fps must be an integer from 1 to 1000, got 0"]),
}


@pytest.mark.parametrize("case", list(FOLDER_DAMAGE))
def test_model_folder_problems_fail_before_loading(tiny_model, tmp_path, outdir, capsys, case):
    task, damage, words = FOLDER_DAMAGE[case]
    root = shutil.copytree(tiny_model(task), tmp_path / "model")
    damage(root)
    image = ["--image", tmp_path / "im.png"] if task == "i2v" else []
    if image:
        sample_image().save(image[1])
    code, out, err = run(["generate", "--model", root, "--prompt", "x", *TINY, *image, "-o", outdir / "a.mp4"],
                         capsys)
    one_line_error(code, out, err, words)  # one line: nothing was loaded ("loading ..." is logged first)
    assert hidden_leftovers(outdir) == []


# ---- D21, D22: device, dtype, providers ----------------------------------------------------------------------
def test_d21_fp16_on_the_cpu_without_device(t2v, outdir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, out, err = run(generate(t2v, outdir / "a.mp4", "--dtype", "fp16"), capsys)
    one_line_error(code, out, err, "--dtype float16 is not supported on the CPU")


def test_d22_a_strict_provider_error_is_one_line(t2v, outdir, capsys, env_config):
    env_config(FASTDIT_OP_PROVIDERS="aiter", FASTDIT_STRICT_OPS="1")
    code, out, err = run(generate(t2v, outdir / "a.mp4"), capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("fastdit generate: error: ") and "aiter" in err
    assert hidden_leftovers(outdir) == []


def test_internal_errors_are_one_line_and_verbose_shows_the_traceback(capsys):
    import argparse

    from fastdit import cli

    def add_boom(sub):
        p = sub.add_parser("boom")
        p.set_defaults(func=lambda args: {}["missing"])

    cli.COMMANDS.append(add_boom)
    try:
        code, out, err = run(["boom"], capsys)
        one_line_error(code, out, err, "fastdit boom: internal error: KeyError: 'missing' (run with -v", exit_code=1)
        code, out, err = run(["-v", "boom"], capsys)
        assert code == 1 and "Traceback" in err
    finally:
        cli.COMMANDS.remove(add_boom)
    assert isinstance(cli.build_parser(), argparse.ArgumentParser)


def test_config_knows_the_platform_names():
    """config.py checks FASTDIT_PLATFORM without importing the platforms: the same names."""
    from fastdit import config, platforms

    assert config.PLATFORM_NAMES == platforms.PLATFORM_NAMES

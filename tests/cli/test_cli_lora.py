"""``fastdit generate`` with LoRAs, a preset, explicit timesteps and distilled files: the frames
equal the Python API's (merged LoRAs + few-step sampler) and diffusers'; the summary names the
LoRAs and the preset; every malformed LoRA / file / few-step flag fails before loading with one
line on stderr, exit code 2 and no output file."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import fastdit
from fastdit.cli import main
from fastdit.pipelines.result import to_uint8
from tests.models.lora_helpers import make_lora, write_lora
from tests.pipelines.lora_helpers import diffusers_few_step_frames, tiny_lora

PROMPT = "a small robot walks on the moon at night"
SIZE = ["--height", "32", "--width", "32", "--num-frames", "5", "--max-sequence-length", "32"]
SETTINGS = dict(height=32, width=32, num_frames=5, max_sequence_length=32)


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _frames(folder) -> np.ndarray:
    return np.stack([iio.imread(p) for p in sorted(folder.glob("frame_*.png"))])


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """uint8 frames equal up to one level (a float a hair from .5 may round either way)."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def test_cli_lora_preset_equals_api_and_diffusers(tiny_model, tmp_path, capsys):
    path = tiny_model("a14b")
    high = tiny_lora(path, tmp_path / "distill_high.safetensors", seed=1)
    style = tiny_lora(path, tmp_path / "style.safetensors", layout="diffusers", alpha=None, seed=2)
    low = tiny_lora(path, tmp_path / "distill_low.safetensors", subfolder="transformer_2", seed=3)
    out, frames_dir = tmp_path / "v.mp4", tmp_path / "frames"
    code, stdout, stderr = _run(["generate", "--model", str(path), "--prompt", PROMPT, *SIZE, "--seed", "3",
                                 "--lora", str(high), "--lora", f"{style}:0.6", "--lora", f"low:{low}:1.0",
                                 "--preset", "lightx2v-4step", "--output", str(out),
                                 "--save-frames", str(frames_dir), "--no-progress"], capsys)
    assert code == 0, stderr
    assert "LoRA (merge) on the high-noise expert: distill_high.safetensors x1, style.safetensors x0.6" in stdout
    assert "LoRA (merge) on the low-noise expert: distill_low.safetensors x1" in stdout
    assert "sampler: preset lightx2v-4step: few-step Euler, timesteps 1000,750,500,250, shift 5, experts " \
           "switch at step 2" in stdout
    assert "over 4 steps" in stdout
    cli = _frames(frames_dir)

    api = fastdit.load(path, device="cpu", dtype=torch.float32, loras=[high, (style, 0.6)],
                       loras_2=[(low, 1.0)], preset="lightx2v-4step").generate(PROMPT, seed=3, **SETTINGS)
    assert _close(cli, to_uint8(api.frames))
    theirs = diffusers_few_step_frames(path, prompt=PROMPT, seed=3, loras=[(high, 1.0), (style, 0.6)],
                                       loras_2=[(low, 1.0)], **SETTINGS)
    assert _close(cli, to_uint8(theirs))


def test_cli_timesteps_runtime_mode_and_strict_off(tiny_model, tmp_path, capsys, caplog):
    """--timesteps/--flow-shift/--boundary-step, --lora-mode runtime, --lora-strict off (an
    extra key is skipped with a warning) give the API's frames for the same settings."""
    path = tiny_model("a14b")
    lora = tiny_lora(path, tmp_path / "a.safetensors", seed=1)
    lenient = tmp_path / "lenient.safetensors"
    from safetensors.torch import load_file

    save_file({**load_file(str(lora)), "diffusion_model.blocks.0.nonsense.lora_down.weight": torch.zeros(2, 4),
               "diffusion_model.blocks.0.nonsense.lora_up.weight": torch.zeros(4, 2)}, str(lenient))
    frames_dir = tmp_path / "frames"
    code, stdout, stderr = _run(["generate", "--model", str(path), "--prompt", PROMPT, *SIZE, "--seed", "3",
                                 "--lora", f"{lenient}:0.8", "--lora-mode", "runtime", "--lora-strict", "off",
                                 "--timesteps", "1000,800,400", "--flow-shift", "3", "--boundary-step", "1",
                                 "--output", str(tmp_path / "v.mp4"), "--save-frames", str(frames_dir),
                                 "--no-progress"], capsys)
    assert code == 0, stderr
    assert "skipping 2 tensor(s)" in stderr + caplog.text
    assert "LoRA (runtime) on the high-noise expert: lenient.safetensors x0.8" in stdout
    assert "timesteps 1000,800,400, shift 3, experts switch at step 1" in stdout
    api = fastdit.load(path, device="cpu", dtype=torch.float32, loras=[(lora, 0.8)]).generate(
        PROMPT, seed=3, timesteps=[1000, 800, 400], flow_shift=3.0, boundary_step=1, **SETTINGS)
    assert _close(_frames(frames_dir), to_uint8(api.frames))


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------
def _garbage(tmp, model):
    (tmp / "garbage.safetensors").write_bytes(b"\x00\x01 not safetensors" * 9)
    return ["--lora", str(tmp / "garbage.safetensors")]


def _truncated(tmp, model):
    good = tiny_lora(model, tmp / "t.safetensors")
    good.write_bytes(good.read_bytes()[:300])
    return ["--lora", str(good)]


def _unknown(tmp, model):
    save_file({"diffusion_model.blocks.0.self_attn.zz.lora_down.weight": torch.zeros(2, 32),
               "diffusion_model.blocks.0.self_attn.zz.lora_up.weight": torch.zeros(32, 2)},
              str(tmp / "u.safetensors"))
    return ["--lora", str(tmp / "u.safetensors")]


def _rank(tmp, model):
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 32),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(32, 3)},
              str(tmp / "r.safetensors"))
    return ["--lora", str(tmp / "r.safetensors")]


def _big(tmp, model):
    save_file({"diffusion_model.blocks.39.self_attn.q.lora_down.weight": torch.zeros(4, 5120),
               "diffusion_model.blocks.39.self_attn.q.lora_up.weight": torch.zeros(5120, 4)},
              str(tmp / "wan14b.safetensors"))
    return ["--lora", str(tmp / "wan14b.safetensors")]


def _shape(tmp, model):
    from fastdit.models.wan import WanConfig
    from fastdit.models.wan.checkpoint import read_json

    config = WanConfig.from_diffusers_config(read_json(model / "transformer" / "config.json"))
    lora = make_lora(config, ["blocks.0.ffn.net.2"], rank=2)
    lora["blocks.0.ffn.net.2"]["up"] = torch.zeros(7, 2)
    return ["--lora", str(write_lora(tmp / "shape.safetensors", lora, "original"))]


def _distilled(tmp, model):
    save_file({"model.diffusion_model.blocks.0.self_attn.q.weight": torch.zeros(8, 8)},
              str(tmp / "wan_distill.safetensors"))
    return ["--transformer", str(tmp / "wan_distill.safetensors")]


BAD = {
    # name: (task, argv maker or list, words in the message)
    "garbage": ("t2v", _garbage, "cannot read LoRA file"),
    "truncated": ("t2v", _truncated, "cannot read LoRA file"),
    "missing": ("t2v", ["--lora", "MISSING"], "does not exist"),
    "unknown-keys": ("t2v", _unknown, "map to no parameter of the model"),
    "rank": ("t2v", _rank, "rank mismatch"),
    "shape": ("t2v", _shape, "do not fit the parameter"),
    "14b-lora-on-tiny": ("t2v", _big, "is for Wan 14B / A14B (width 5120"),
    "low-on-one-expert": ("t2v", ["--lora", "low:MISSING"], "has one transformer"),
    "lora-2-on-one-expert": ("t2v", ["--lora-2", "MISSING"], "has one transformer"),
    "scale": ("t2v", ["--lora", "x.safetensors:inf"], "scale must be finite"),
    "distilled-file": ("t2v", _distilled, "wan_distill.safetensors"),
    "transformer-2-one-expert": ("t2v", ["--transformer-2", "MISSING"], "two-expert models"),
    "preset": ("t2v", ["--preset", "turbo"], "unknown few-step preset 'turbo'"),
    "timesteps": ("t2v", ["--timesteps", "1000,abc"], "integers separated by commas"),
    "boundary-one-expert": ("t2v", ["--preset", "lightx2v-4step", "--boundary-step", "2"], "only for two-expert"),
    "boundary-range": ("a14b", ["--timesteps", "1000,500", "--boundary-step", "2"], "in 1..1"),
    "boundary-no-schedule": ("a14b", ["--boundary-step", "2"], "needs a few-step schedule"),
    "steps-vs-preset": ("t2v", ["--preset", "lightx2v-4step", "--steps", "8"], "does not match the 4 timesteps"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_lora_and_few_step_input_fails_cleanly(tiny_model, tmp_path, capsys, case):
    task, extra, words = BAD[case]
    model = tiny_model(task)
    files = tmp_path / "files"
    files.mkdir()
    extra = extra(files, model) if callable(extra) else [a.replace("MISSING", str(files / "none.safetensors"))
                                                         for a in extra]
    outdir = tmp_path / "out"
    outdir.mkdir()
    code, stdout, stderr = _run(["generate", "--model", str(model), "--prompt", "a cat", *SIZE, *extra,
                                 "--output", str(outdir / "v.mp4"), "--save-frames", str(outdir / "frames")],
                                capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fastdit generate: error: ") and words in lines[0], lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert sorted(p.name for p in outdir.iterdir()) == []

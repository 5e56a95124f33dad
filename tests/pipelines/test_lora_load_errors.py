"""Every LoRA, distilled-file and few-step problem given to ``fastdit.load`` fails with one line
(a ``UserError``) before the tokenizer or the text encoder loads; request-level few-step values
fail before denoising."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import fastdit
from fastdit.errors import CheckpointError, InputError, LoraError, UserError
from tests.pipelines.lora_helpers import tiny_lora

PROMPT = "a fox"
SETTINGS = dict(height=32, width=32, num_frames=5, max_sequence_length=32)


class _Loaded(Exception):
    """Raised by the stand-in loaders: the check under test came too late."""


@pytest.fixture
def no_encoders(monkeypatch):
    """Loading the tokenizer or the text encoder fails the test."""
    import transformers

    def refuse(*args, **kwargs):
        raise _Loaded("the tokenizer / text encoder was loaded before the check")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.UMT5EncoderModel, "from_pretrained", refuse)


def _lora_14b_shaped(path):
    """A LoRA whose factors have the 14B model's width (5120)."""
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 5120),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, 4)}, str(path))
    return path


def _unknown_keys(path):
    save_file({"diffusion_model.blocks.0.self_attn.zz.lora_down.weight": torch.zeros(2, 32),
               "diffusion_model.blocks.0.self_attn.zz.lora_up.weight": torch.zeros(32, 2)}, str(path))
    return path


def _wrong_rank(path):
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 32),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(32, 3)}, str(path))
    return path


def _truncated(path, model):
    good = tiny_lora(model, path)
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


def _garbage(path):
    path.write_bytes(b"not a safetensors file at all" * 5)
    return path


def _bad_transformer_file(path):
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(3, 3)}, str(path))
    return path


CASES = {
    "missing LoRA": (lambda tmp, model: dict(loras=[str(tmp / "nope.safetensors")]), LoraError, "does not exist"),
    "garbage LoRA": (lambda tmp, model: dict(loras=[str(_garbage(tmp / "g.safetensors"))]), LoraError,
                     "cannot read LoRA file"),
    "truncated LoRA": (lambda tmp, model: dict(loras=[str(_truncated(tmp / "t.safetensors", model))]),
                       LoraError, "cannot read LoRA file"),
    "unknown keys": (lambda tmp, model: dict(loras=[str(_unknown_keys(tmp / "u.safetensors"))]), LoraError,
                     "map to no parameter"),
    "wrong rank": (lambda tmp, model: dict(loras=[str(_wrong_rank(tmp / "r.safetensors"))]), LoraError,
                   "rank mismatch"),
    "14B LoRA on a tiny model": (lambda tmp, model: dict(loras=[str(_lora_14b_shaped(tmp / "big.safetensors"))]),
                                 LoraError, r"is for Wan 14B / A14B \(width 5120"),
    "second-expert LoRA on one transformer": (
        lambda tmp, model: dict(loras=[f"low:{tiny_lora(model, tmp / 'l.safetensors')}"]), LoraError,
        "has one transformer"),
    "bad scale": (lambda tmp, model: dict(loras=[(str(tiny_lora(model, tmp / 's.safetensors')), "x")]),
                  LoraError, "scale must be a number"),
    "bad mode": (lambda tmp, model: dict(lora_mode="fused"), LoraError, "lora_mode must be one of"),
    "missing transformer file": (lambda tmp, model: dict(transformer=str(tmp / "none.safetensors")),
                                 CheckpointError, "does not exist"),
    "transformer file for another model": (
        lambda tmp, model: dict(transformer=str(_bad_transformer_file(tmp / "d.safetensors"))),
        CheckpointError, "has shape"),
    "transformer_2 on one transformer": (lambda tmp, model: dict(transformer_2=str(tmp / "x.safetensors")),
                                         InputError, "two-expert models"),
    "unknown preset": (lambda tmp, model: dict(preset="turbo"), InputError, "unknown few-step preset"),
    "bad timesteps": (lambda tmp, model: dict(timesteps="1000,1000"), InputError, "strictly decreasing"),
    "boundary step on one transformer": (lambda tmp, model: dict(preset="lightx2v-4step", boundary_step=2),
                                         InputError, "only for two-expert"),
    "bad shift": (lambda tmp, model: dict(preset="lightx2v-4step", flow_shift=-1.0), InputError,
                  "flow_shift must be a positive"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_fails_before_the_text_encoder(tiny_model, tmp_path, no_encoders, case):
    make, error, match = CASES[case]
    model = tiny_model("t2v")
    options = make(tmp_path, model)
    with pytest.raises(error, match=match) as info:
        fastdit.load(model, device="cpu", dtype=torch.float32, **options)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_boundary_step_out_of_range_on_two_experts(tiny_model, no_encoders):
    with pytest.raises(InputError, match=r"boundary_step must be an integer in 1\.\.3"):
        fastdit.load(tiny_model("a14b"), device="cpu", dtype=torch.float32, preset="lightx2v-4step",
                     boundary_step=4)


def test_request_values_fail_before_denoising(tiny_model):
    pipe = fastdit.load(tiny_model("a14b"), device="cpu", dtype=torch.float32, preset="lightx2v-4step")
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    for kwargs, match in ((dict(num_inference_steps=8), "does not match the 4 timesteps"),
                          (dict(timesteps=[1000, 500], boundary_step=2), r"in 1\.\.1"),
                          (dict(timesteps="abc"), "integers separated by commas"),
                          (dict(flow_shift=0), "flow_shift must be a positive")):
        with pytest.raises(InputError, match=match):
            pipe.generate(PROMPT, **SETTINGS, **kwargs)
    plain = fastdit.load(tiny_model("t2v"), device="cpu", dtype=torch.float32)
    with pytest.raises(InputError, match="needs a few-step schedule"):
        plain.generate(PROMPT, **SETTINGS, boundary_step=1)
    assert not calls

"""LoRA merge against diffusers (``pipe.load_lora_weights`` + ``set_adapters`` + ``fuse_lora``)
and a float64 reference, in every file format, on tiny random Wan models, fp32 on the CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastdit.errors import LoraError, UserError
from fastdit.models.wan.lora import apply_loras, parse_lora_arg, plan_lora
from fastdit.models.wan.lora.names import ParameterNames
from tests.models.lora_helpers import (
    ATTENTION,
    EMBEDDERS,
    FFN,
    IMAGE_EMBEDDER,
    IMAGE_KV,
    block_modules,
    diffusers_merged,
    expected_weights,
    fastdit_from,
    make_lora,
    peft_metadata,
    write_lora,
)
from tests.models.wan_helpers import I2V, T2V, diffusers_model

#: fp32 merges: both sides sum in fp32 and round once; the float64 reference differs by rounding
ATOL = 2e-6


def _close(actual: dict, expected: dict, names=None, atol=ATOL) -> None:
    for name in names or expected:
        a, e = actual[name].double(), expected[name].double()
        err = (a - e).abs().max().item()
        assert err <= atol * max(1.0, e.abs().max().item()), f"{name}: max error {err:.3g}"


def _merged(config, files, reference_files=None, **kwargs):
    """(fastdit's merged state dict, diffusers' merged state dict, the original state dict);
    diffusers loads ``reference_files`` when given (the same tensors in a layout it reads)."""
    reference = diffusers_model(config)
    original = {k: v.clone() for k, v in reference.state_dict().items()}
    model = fastdit_from(reference, config)
    apply_loras(model, files, **kwargs)
    theirs = diffusers_merged(reference, reference_files or files)
    return {k: v.detach() for k, v in model.state_dict().items()}, theirs, original


def _changed(after: dict, before: dict) -> set[str]:
    return {k for k in before if not torch.equal(after[k], before[k])}


# ---------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------
def test_original_with_alpha_and_bias_deltas(tmp_path):
    lora = make_lora(T2V, block_modules(T2V), rank=4, alpha=2.0, seed=1)
    lora.update(make_lora(T2V, EMBEDDERS, rank=3, seed=2,  # no alpha: diffusers' converter
                          diff_b=["blocks.0.attn1.to_q", "blocks.1.ffn.net.2",
                                  "condition_embedder.time_proj", "proj_out"]))
    path = write_lora(tmp_path / "a.safetensors", lora, "original")
    ours, theirs, original = _merged(T2V, [(path, 0.8)])
    expected = expected_weights(original, [(lora, 0.8)])
    _close(ours, theirs)
    _close(ours, expected)
    assert _changed(ours, original) == _changed(theirs, original)
    assert "blocks.1.ffn.net.2.bias" in _changed(ours, original)


def test_original_with_lora_a_b_names(tmp_path):
    lora = make_lora(T2V, block_modules(T2V, ATTENTION), rank=2, seed=3)
    path = write_lora(tmp_path / "ab.safetensors", lora, "original_ab")
    ours, theirs, original = _merged(T2V, [(path, 1.0)])
    _close(ours, theirs)
    _close(ours, expected_weights(original, [(lora, 1.0)]))
    assert plan_lora(path, _names(T2V)).format == "original"


@pytest.mark.parametrize("layout", ["diffusers", "diffusers_bare"])
def test_diffusers_peft_names(tmp_path, layout):
    lora = make_lora(T2V, block_modules(T2V) + ["proj_out"], rank=4, seed=4,
                     diff_b=["blocks.0.attn2.to_v"])
    path = write_lora(tmp_path / "d.safetensors", lora, layout)
    # diffusers' pipeline loader wants the ``transformer.`` prefix: it reads the same tensors so
    prefixed = write_lora(tmp_path / "prefixed.safetensors", lora, "diffusers")
    ours, theirs, original = _merged(T2V, [(path, 1.3)], [(prefixed, 1.3)])
    _close(ours, theirs)
    _close(ours, expected_weights(original, [(lora, 1.3)]))


def test_peft_alpha_conventions_from_metadata(tmp_path):
    """PEFT: scale lora_alpha / r, per-module alpha_pattern overrides."""
    lora = make_lora(T2V, block_modules(T2V), rank=4, seed=5)
    meta = peft_metadata(lora, lora_alpha=8, rank=4, alpha_pattern={"blocks.1.attn1.to_q": 2.0})
    path = write_lora(tmp_path / "p.safetensors", lora, "diffusers", metadata=meta)
    ours, theirs, original = _merged(T2V, [(path, 0.5)])
    _close(ours, theirs)

    def alpha_scale(module, rank):
        return (2.0 if module == "blocks.1.attn1.to_q" else 8.0) / rank

    _close(ours, expected_weights(original, [(lora, 0.5)], alpha_scale=alpha_scale))


def test_musubi_tuner_names(tmp_path):
    lora = make_lora(T2V, block_modules(T2V), rank=4, alpha=1.0, seed=6)
    path = write_lora(tmp_path / "m.safetensors", lora, "musubi")
    ours, theirs, original = _merged(T2V, [(path, 1.0)])
    _close(ours, theirs)
    _close(ours, expected_weights(original, [(lora, 1.0)]))
    assert plan_lora(path, _names(T2V)).format == "musubi"


def test_two_loras_stacked_with_their_own_scales(tmp_path):
    first = make_lora(T2V, block_modules(T2V), rank=4, alpha=4.0, seed=7)
    second = make_lora(T2V, block_modules(T2V, ATTENTION), rank=2, seed=8)
    files = [(write_lora(tmp_path / "1.safetensors", first, "original"), 0.7),
             (write_lora(tmp_path / "2.safetensors", second, "diffusers"), 1.4)]
    ours, theirs, original = _merged(T2V, files)
    _close(ours, theirs)
    _close(ours, expected_weights(original, [(first, 0.7), (second, 1.4)]))


def test_wan22_pair_one_lora_per_expert(tmp_path):
    """Two experts, each with its own LoRA: the second goes in through load_into_transformer_2."""
    config = dataclasses.replace(T2V, num_layers=2)
    high, low = diffusers_model(config, seed=0), diffusers_model(config, seed=1)
    lora_high = make_lora(config, block_modules(config), rank=4, alpha=2.0, seed=9)
    lora_low = make_lora(config, block_modules(config), rank=4, alpha=2.0, seed=10)
    path_high = write_lora(tmp_path / "high_noise_model.safetensors", lora_high, "original")
    path_low = write_lora(tmp_path / "low_noise_model.safetensors", lora_low, "original")
    orig_high, orig_low = high.state_dict(), low.state_dict()
    orig_high = {k: v.clone() for k, v in orig_high.items()}
    orig_low = {k: v.clone() for k, v in orig_low.items()}
    ours_high, ours_low = fastdit_from(high, config), fastdit_from(low, config)
    apply_loras(ours_high, [(path_high, 1.0)])
    apply_loras(ours_low, [(path_low, 1.0)])
    theirs_low = diffusers_merged(low, [(path_low, 1.0)], expert=1, other=high)
    theirs_high = diffusers_merged(high, [(path_high, 1.0)], expert=0, other=None)
    _close(ours_low.state_dict(), theirs_low)
    _close(ours_high.state_dict(), theirs_high)
    _close(ours_low.state_dict(), expected_weights(orig_low, [(lora_low, 1.0)]))


def test_t2v_lora_on_i2v_model_leaves_image_projections_alone(tmp_path):
    lora = make_lora(I2V, block_modules(I2V), rank=4, alpha=2.0, seed=11)
    path = write_lora(tmp_path / "t2v.safetensors", lora, "original")
    ours, theirs, original = _merged(I2V, [(path, 1.0)])
    _close(ours, theirs)
    image = [k for k in original if "add_k_proj" in k or "add_v_proj" in k or "image_embedder" in k]
    assert image and all(torch.equal(ours[k], original[k]) for k in image)


def test_i2v_lora_with_image_projections(tmp_path):
    lora = make_lora(I2V, block_modules(I2V, ATTENTION + FFN + IMAGE_KV) + list(IMAGE_EMBEDDER),
                     rank=4, seed=12)
    path = write_lora(tmp_path / "i2v.safetensors", lora, "original")
    ours, theirs, original = _merged(I2V, [(path, 1.0)])
    _close(ours, theirs)
    _close(ours, expected_weights(original, [(lora, 1.0)]))


def test_full_deltas_diff_and_head(tmp_path):
    """``.diff`` on weights, norms and modulation tables (which diffusers drops, LightX2V and
    ComfyUI add), against the float64 reference; the head's ``diff`` + ``diff_b`` also against
    diffusers, which reads that pair."""
    diffs = ["blocks.0.attn1.to_k.weight", "blocks.1.ffn.net.0.proj.weight",
             "blocks.0.attn1.norm_q.weight", "blocks.1.norm2.weight", "blocks.0.scale_shift_table",
             "patch_embedding.weight"]
    lora = make_lora(T2V, block_modules(T2V, ATTENTION), rank=4, seed=13, diff=diffs)
    path = write_lora(tmp_path / "diff.safetensors", lora, "original")
    reference = diffusers_model(T2V)
    original = {k: v.clone() for k, v in reference.state_dict().items()}
    model = fastdit_from(reference, T2V)
    apply_loras(model, [(path, 0.9)])
    ours = model.state_dict()
    _close(ours, expected_weights(original, [(lora, 0.9)]))
    assert set(diffs) <= _changed(ours, original)

    head = make_lora(T2V, block_modules(T2V, ATTENTION), diff=["proj_out.weight"],
                     diff_b=["proj_out"], seed=14)  # diffusers' converter needs some block
    head_path = write_lora(tmp_path / "head.safetensors", head, "original")
    reference = diffusers_model(T2V)
    model = fastdit_from(reference, T2V)
    apply_loras(model, [(head_path, 1.0)])
    theirs = diffusers_merged(reference, [(head_path, 1.0)])
    _close(model.state_dict(), theirs)


def test_bf16_merge_rounds_once(tmp_path):
    lora = make_lora(T2V, block_modules(T2V), rank=8, alpha=4.0, seed=15, dtype=torch.bfloat16)
    path = write_lora(tmp_path / "bf16.safetensors", lora, "original")
    reference = diffusers_model(T2V)
    model = fastdit_from(reference, T2V).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_loras(model, [(path, 1.0)])
    expected = expected_weights(before, [(lora, 1.0)])
    for name in ("blocks.0.attn1.to_q.weight", "blocks.1.ffn.net.2.weight"):
        got = model.state_dict()[name]
        assert got.dtype == torch.bfloat16
        ulp = expected[name].abs().clamp_min(1e-30) * 2.0 ** -8  # bf16: 8 significant bits
        assert ((got.double() - expected[name]).abs() <= ulp).all()


# ---------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("a.safetensors", (0, "a.safetensors", 1.0)),
    ("a.safetensors:0.5", (0, "a.safetensors", 0.5)),
    ("high:dir/a.safetensors:2", (0, "dir/a.safetensors", 2.0)),
    ("low:b.safetensors", (1, "b.safetensors", 1.0)),
    ("c:/x/y.safetensors", (0, "c:/x/y.safetensors", 1.0)),
])
def test_parse_lora_arg(text, expected):
    expert, spec = parse_lora_arg(text)
    assert (expert, spec.path, spec.scale) == expected


def _names(config):
    from tests.models.lora_helpers import weight_shapes

    return ParameterNames(weight_shapes(config))


def test_lora_error_is_a_user_error():
    assert issubclass(LoraError, UserError) and issubclass(LoraError, ValueError)


def test_conv_pair_and_modulation_delta(tmp_path):
    """A LoRA pair on the patch embedding (conv factors ``[r, C, 1, 2, 2]`` / ``[D, r, 1, 1, 1]``)
    and LightX2V's ``blocks.N.diff_m`` modulation delta, against float64."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(16)
    down = torch.randn(3, T2V.in_channels, 1, 2, 2, generator=g) * 0.1
    up = torch.randn(T2V.dim, 3, 1, 1, 1, generator=g) * 0.1
    diff_m = torch.randn(1, 6, T2V.dim, generator=g) * 0.1
    path = tmp_path / "conv.safetensors"
    save_file({"diffusion_model.patch_embedding.lora_down.weight": down,
               "diffusion_model.patch_embedding.lora_up.weight": up,
               "diffusion_model.patch_embedding.alpha": torch.tensor(6.0),
               "diffusion_model.blocks.1.diff_m": diff_m}, str(path))
    reference = diffusers_model(T2V)
    model = fastdit_from(reference, T2V)
    before = {k: v.double() for k, v in model.state_dict().items()}
    apply_loras(model, [(path, 0.5)])
    state = model.state_dict()
    conv = before["patch_embedding.weight"] + 0.5 * (6.0 / 3) * (
        up.double().flatten(1) @ down.double().flatten(1)).view(T2V.dim, T2V.in_channels, 1, 2, 2)
    _close(state, {"patch_embedding.weight": conv,
                   "blocks.1.scale_shift_table": before["blocks.1.scale_shift_table"] + 0.5 * diff_m.double()})


def test_loras_by_expert():
    from fastdit.models.wan.lora import loras_by_expert

    first, second = loras_by_expert(["a.safetensors:0.5", "low:b.safetensors", ("c.safetensors", 2)],
                                    ["d.safetensors:0.3"], two_experts=True)
    assert [(s.path, s.scale) for s in first] == [("a.safetensors", 0.5), ("c.safetensors", 2.0)]
    assert [(s.path, s.scale) for s in second] == [("d.safetensors", 0.3), ("b.safetensors", 1.0)]
    with pytest.raises(LoraError, match="second .low-noise. expert, but this model has one"):
        loras_by_expert(["low:b.safetensors"], two_experts=False)

"""Random LoRA files in every format, and the diffusers reference.

A LoRA is built in fastdit's (= diffusers') module names as ``{module: {role: tensor}}`` and
written in one of the file layouts:

* ``original``: ``diffusion_model.<official name>.lora_down.weight`` / ``lora_up.weight``;
* ``original_ab``: the same with ``lora_A`` / ``lora_B``;
* ``diffusers``: ``transformer.<diffusers name>.lora_A.weight`` / ``lora_B.weight`` (``diff_b``
  as ``lora_B.bias``), alphas in the PEFT metadata;
* ``diffusers_bare``: the same without the ``transformer.`` prefix;
* ``musubi``: ``lora_unet_<official name with _>.lora_down.weight`` / ``lora_up.weight``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors.torch import save_file

from fastdit.models.wan import WanConfig, WanTransformer, diffusers_to_original_key

Lora = dict[str, dict[str, torch.Tensor]]

ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
             "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
FFN = ("ffn.net.0.proj", "ffn.net.2")
IMAGE_KV = ("attn2.add_k_proj", "attn2.add_v_proj")
EMBEDDERS = ("condition_embedder.text_embedder.linear_1", "condition_embedder.text_embedder.linear_2",
             "condition_embedder.time_embedder.linear_1", "condition_embedder.time_embedder.linear_2",
             "condition_embedder.time_proj", "proj_out")
IMAGE_EMBEDDER = ("condition_embedder.image_embedder.ff.net.0.proj",
                  "condition_embedder.image_embedder.ff.net.2")


def block_modules(config: WanConfig, parts: Iterable[str] = ATTENTION + FFN) -> list[str]:
    return [f"blocks.{i}.{p}" for i in range(config.num_layers) for p in parts]


def weight_shapes(config: WanConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = WanTransformer(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def make_lora(config: WanConfig, modules: Iterable[str], *, rank: int = 4, seed: int = 0,
              alpha: float | None = None, diff: Iterable[str] = (), diff_b: Iterable[str] = (),
              std: float = 0.05, dtype: torch.dtype = torch.float32) -> Lora:
    """Random factors on ``modules`` (optionally an alpha), full weight deltas on ``diff``
    (parameter names) and bias deltas on ``diff_b`` (module names)."""
    shapes = weight_shapes(config)
    g = torch.Generator().manual_seed(seed)
    lora: Lora = {}
    for module in modules:
        out, inp = shapes[module + ".weight"]
        entry = {"down": torch.randn(rank, inp, generator=g) * std,
                 "up": torch.randn(out, rank, generator=g) * std}
        if alpha is not None:
            entry["alpha"] = torch.tensor(float(alpha))
        lora[module] = {k: v.to(dtype) if k != "alpha" else v for k, v in entry.items()}
    for name in diff:
        module, _, leaf = name.rpartition(".")
        key = module if leaf == "weight" else name  # leafless parameters: the whole name
        lora.setdefault(key, {})["diff"] = (torch.randn(shapes[name], generator=g) * std).to(dtype)
    for module in diff_b:
        lora.setdefault(module, {})["diff_b"] = (torch.randn(shapes[module + ".bias"], generator=g)
                                                 * std).to(dtype)
    return lora


def _original_module(module: str) -> str:
    name = diffusers_to_original_key(module + ".weight")
    if name is not None:
        return name[: -len(".weight")]
    name = diffusers_to_original_key(module)  # leafless: modulation tables
    assert name is not None, module
    return name


_SUFFIXES = {
    "original": {"down": ".lora_down.weight", "up": ".lora_up.weight", "alpha": ".alpha",
                 "diff": ".diff", "diff_b": ".diff_b"},
    "original_ab": {"down": ".lora_A.weight", "up": ".lora_B.weight", "alpha": ".alpha",
                    "diff": ".diff", "diff_b": ".diff_b"},
    "diffusers": {"down": ".lora_A.weight", "up": ".lora_B.weight", "diff_b": ".lora_B.bias"},
    "musubi": {"down": ".lora_down.weight", "up": ".lora_up.weight", "alpha": ".alpha"},
}


def lora_state_dict(lora: Lora, layout: str) -> dict[str, torch.Tensor]:
    """The file's tensors for ``layout`` (see the module doc)."""
    base = "diffusers" if layout == "diffusers_bare" else layout
    suffixes = _SUFFIXES[base]
    out = {}
    for module, roles in lora.items():
        for role, tensor in roles.items():
            if base == "diffusers" and role == "alpha":
                continue  # PEFT keeps alphas in its config
            if base in ("original", "original_ab"):
                key = "diffusion_model." + _original_module(module)
            elif base == "musubi":
                key = "lora_unet_" + _original_module(module).replace(".", "_")
            else:
                key = ("transformer." if layout == "diffusers" else "") + module
            out[key + suffixes[role]] = tensor.contiguous()
    return out


def peft_metadata(lora: Lora, *, lora_alpha: float, rank: int,
                  alpha_pattern: Mapping[str, float] | None = None) -> dict[str, str]:
    """diffusers' ``lora_adapter_metadata`` (a PEFT LoraConfig, keys prefixed ``transformer.``)."""
    config = {"r": rank, "lora_alpha": lora_alpha, "target_modules": sorted(
        m for m, roles in lora.items() if "down" in roles),
        "alpha_pattern": dict(alpha_pattern or {}), "rank_pattern": {},
        "lora_bias": any("diff_b" in roles for roles in lora.values())}
    return {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()}),
            "format": "pt"}


def write_lora(path: Path, lora: Lora, layout: str, metadata: Mapping[str, str] | None = None) -> Path:
    path = Path(path)
    save_file(lora_state_dict(lora, layout), str(path), metadata=dict(metadata or {"format": "pt"}))
    return path


# ---------------------------------------------------------------------------------------
def expected_weights(state: Mapping[str, torch.Tensor], loras: Iterable[tuple[Lora, float]],
                     alpha_scale=None) -> dict[str, torch.Tensor]:
    """The float64 reference: ``W + sum s * (alpha/rank) * up @ down`` and the deltas."""
    out = {k: v.double().clone() for k, v in state.items()}
    for lora, scale in loras:
        for module, roles in lora.items():
            if "down" in roles:
                rank = roles["down"].shape[0]
                s = scale * (float(roles["alpha"]) / rank if "alpha" in roles else 1.0)
                if alpha_scale is not None:
                    s = scale * alpha_scale(module, rank)
                out[module + ".weight"] += s * roles["up"].double() @ roles["down"].double()
            if "diff" in roles:
                name = module + ".weight" if module + ".weight" in out else module
                out[name] += scale * roles["diff"].double()
            if "diff_b" in roles:
                out[module + ".bias"] += scale * roles["diff_b"].double()
    return out


def fastdit_from(reference, config: WanConfig, dtype=torch.float32) -> WanTransformer:
    """A fastdit model holding the diffusers model's weights."""
    model = WanTransformer.from_config(config, dtype=dtype)
    missing = model.load_state_dict(reference.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    return model


def diffusers_merged(reference, files: Iterable[tuple[Path, float]], *, expert: int = 0,
                     other=None) -> dict[str, torch.Tensor]:
    """diffusers' merged weights: ``pipe.load_lora_weights`` for each file (with
    ``load_into_transformer_2`` for expert 1), ``set_adapters`` with the scales, ``fuse_lora``."""
    from diffusers import WanPipeline

    transformer, transformer_2 = (reference, other) if expert == 0 else (other, reference)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None,
                       transformer=transformer, transformer_2=transformer_2,
                       boundary_ratio=0.875 if transformer_2 is not None else None)
    files = list(files)
    names = [f"lora{i}" for i in range(len(files))]
    for name, (path, _) in zip(names, files):
        pipe.load_lora_weights(str(path), adapter_name=name, load_into_transformer_2=expert == 1)
    component = "transformer" if expert == 0 else "transformer_2"
    pipe.set_adapters(names, [scale for _, scale in files])
    pipe.fuse_lora(components=[component], adapter_names=names)
    pipe.unload_lora_weights()
    return {k: v.detach().clone() for k, v in reference.state_dict().items()}

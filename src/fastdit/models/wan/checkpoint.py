"""Wan checkpoints: finding them, reading their configs, mapping official key names, and
loading tensors straight from memory-mapped safetensors to the target device and dtype.

Two layouts are read:

* diffusers: ``config.json`` with ``num_attention_heads`` etc., tensors named like
  ``blocks.0.attn1.to_q.weight`` (= this model's parameter names), one
  ``diffusion_pytorch_model.safetensors`` or shards listed in
  ``diffusion_pytorch_model.safetensors.index.json``;
* the official Wan repositories: ``config.json`` with ``dim``, ``num_heads``, ``in_dim``, ...,
  tensors named like ``blocks.0.self_attn.q.weight`` (:func:`original_to_diffusers_key`).

The model is built on the meta device; each tensor is read once, converted on its way to the
device and assigned, so host memory never holds a full copy of the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from fastdit import model_files
from fastdit.errors import CheckpointError  # re-exported: the checkpoint errors
from fastdit.models.wan.configs import WAN_CONFIGS, WanConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
#: Checkpoint tensors that diffusers also ignores (some conversions carry an unused norm).
IGNORED_KEYS = re.compile(r"(^|\.)norm_added_q\.")


# ---------------------------------------------------------------------------------------
# official Wan key names <-> diffusers key names
# ---------------------------------------------------------------------------------------
_TOP_LEVEL = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}
_BLOCK = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "norm3": "norm2",  # the official block runs norm1, norm3 (cross-attention), norm2 (FFN)
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "modulation": "scale_shift_table",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _split_leaf(key: str, known: Mapping[str, str]) -> tuple[str, str] | None:
    """``"a.b.weight"`` -> (``"a.b"`` mapped, ``".weight"``) when the module path is known."""
    if key in known:  # parameters without a leaf name (modulation, emb_pos)
        return known[key], ""
    module, dot, leaf = key.rpartition(".")
    if dot and module in known:
        return known[module], "." + leaf
    return None


def _map_key(key: str, block_map: Mapping[str, str], top_map: Mapping[str, str]) -> str | None:
    """``key`` renamed through ``block_map`` (inside ``blocks.N.``) or ``top_map``; None if unknown."""
    match = _BLOCK_KEY.match(key)
    if match:
        mapped = _split_leaf(match.group(2), block_map)
        return None if mapped is None else f"blocks.{match.group(1)}.{mapped[0]}{mapped[1]}"
    mapped = _split_leaf(key, top_map)
    return None if mapped is None else mapped[0] + mapped[1]


_BLOCK_INV = {v: k for k, v in _BLOCK.items()}
_TOP_LEVEL_INV = {v: k for k, v in _TOP_LEVEL.items()}


def original_to_diffusers_key(key: str) -> str | None:
    """The diffusers name of an official Wan tensor name, or None when it has none."""
    return _map_key(key, _BLOCK, _TOP_LEVEL)


def diffusers_to_original_key(key: str) -> str | None:
    """The inverse of :func:`original_to_diffusers_key`."""
    return _map_key(key, _BLOCK_INV, _TOP_LEVEL_INV)


# ---------------------------------------------------------------------------------------
# finding and indexing a checkpoint
# ---------------------------------------------------------------------------------------
def find_model_dir(path: str | Path, subfolder: str | None = None) -> Path:
    """The folder that holds the transformer's ``config.json``.

    ``path`` is a diffusers pipeline root (``transformer/`` inside, or ``subfolder`` such as
    ``"transformer_2"``), the transformer folder itself, or an official Wan folder.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist")
    if subfolder is not None:
        folder = root / subfolder
        if not (folder / CONFIG_NAME).is_file():
            raise CheckpointError(f"no {CONFIG_NAME} in {folder} (subfolder={subfolder!r} of {root})")
        return folder
    if (root / CONFIG_NAME).is_file() and not (root / "model_index.json").is_file():
        return root
    if (root / "transformer" / CONFIG_NAME).is_file():
        return root / "transformer"
    if (root / CONFIG_NAME).is_file():
        return root
    candidates = sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file())
    hint = f"; pass subfolder= one of {candidates}" if candidates else ""
    raise CheckpointError(f"no {CONFIG_NAME} in {root} nor in {root / 'transformer'}: not a Wan "
                          f"transformer checkpoint{hint}")


def read_json(file: Path) -> dict[str, Any]:
    """The JSON object in ``file`` (:class:`CheckpointError` naming the file otherwise)."""
    return model_files.read_json(file, CheckpointError)


def weight_files(folder: Path) -> tuple[list[Path], dict[str, Path] | None]:
    """The safetensors files of a checkpoint folder, and the index's ``{tensor: file}`` map:
    the files of the index when there is one, else every ``*.safetensors`` file."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{folder} holds several safetensors indexes: "
                              f"{', '.join(i.name for i in indexes)}")
    if indexes:
        weight_map = read_json(indexes[0]).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{indexes[0]} has no weight_map")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{indexes[0].name} lists {file.name}, which is not in {folder}")
        return files, {key: folder / name for key, name in weight_map.items()}
    files = (sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
             or sorted(folder.glob("*.safetensors")))
    if not files:
        raise CheckpointError(f"no .safetensors weights in {folder}")
    return files, None


def _open(file: Path):
    return model_files.open_safetensors(file, CheckpointError)


def index_entries(files: Iterable[Path]) -> dict[str, tuple[Path, model_files.TensorEntry]]:
    """``{tensor name: (file, header entry)}`` from the files' headers (no tensor data is
    read); a name in two files is a :class:`CheckpointError`."""
    found: dict[str, tuple[Path, model_files.TensorEntry]] = {}
    for file in files:
        header = model_files.read_safetensors_header(file, CheckpointError,
                                                      what="cannot read safetensors file")
        for key, entry in header.items():
            if key in found:
                raise CheckpointError(f"tensor {key!r} appears in both {found[key][0]} and {file}")
            found[key] = (file, entry)
    return found


def index_tensors(files: Iterable[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """``{tensor name: (file, shape)}`` from the files' headers (no tensor data is read)."""
    return {key: (file, entry.shape) for key, (file, entry) in index_entries(files).items()}


def check_index(folder: Path, stored: Mapping[str, tuple[Path, tuple]],
                weight_map: Mapping[str, Path] | None) -> None:
    """The safetensors index's ``{tensor: file}`` agrees with the files' headers."""
    for key, file in (weight_map or {}).items():
        if stored.get(key, (None,))[0] != file:
            raise CheckpointError(f"the safetensors index of {folder} puts tensor {key!r} in "
                                  f"{file.name}, which does not hold it")


def parameter_names(model: nn.Module, folder: Path, files: Sequence[Path],
                    stored: Mapping[str, tuple[Path, tuple]], original: bool) -> dict[str, str]:
    """``{checkpoint key: parameter name}`` for every stored tensor but the ignored ones, each
    checked against ``model``'s parameters (name and shape), every parameter present; a
    problem is a :class:`CheckpointError` naming the tensor and its file."""
    names: dict[str, str] = {}
    for key, (file, _) in stored.items():
        if IGNORED_KEYS.search(key):
            continue
        name = original_to_diffusers_key(key) if original else key
        if name is None:
            raise CheckpointError(f"unexpected tensor {key!r} in {file}: not a Wan transformer "
                                  "tensor (official layout)")
        names[key] = name
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for key, name in names.items():
        file, shape = stored[key]
        if name not in expected:
            raise CheckpointError(f"unexpected tensor {key!r} in {file}: the model "
                                  f"({_describe(model.config)}) has no parameter {name!r}")
        if tuple(shape) != expected[name]:
            raise CheckpointError(f"tensor {key!r} in {file} has shape {list(shape)}, the model "
                                  f"expects {list(expected[name])}")
    present = set(names.values())
    missing = [name for name in expected if name not in present]
    if missing:
        shown = [diffusers_to_original_key(n) or n for n in missing] if original else missing
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"checkpoint {folder} ({', '.join(f.name for f in files)}) lacks "
                              f"tensor(s) {', '.join(repr(m) for m in shown[:5])}{more}")
    return names


def is_original_config(config: Mapping[str, Any]) -> bool:
    return "num_heads" in config and "dim" in config and "num_attention_heads" not in config


def resolve_config(config: WanConfig | str | Mapping[str, Any]) -> WanConfig:
    """A :class:`WanConfig` from itself, a name in ``WAN_CONFIGS`` or a diffusers config dict."""
    if isinstance(config, WanConfig):
        return config
    if isinstance(config, str):
        from fastdit.models.wan.configs import get_config

        return get_config(config)
    if isinstance(config, Mapping):
        return WanConfig.from_diffusers_config(config)
    raise TypeError(f"expected a WanConfig, a config name ({', '.join(WAN_CONFIGS)}) or a dict, "
                    f"got {type(config).__name__}")


def config_for_checkpoint(raw: Mapping[str, Any], tensors: Mapping[str, tuple[Path, tuple]],
                          config_file: Path) -> tuple[WanConfig, bool]:
    """The architecture of a checkpoint, and whether it uses the official key names."""
    try:
        if not is_original_config(raw):
            return WanConfig.from_diffusers_config(raw), False
        image = tensors.get("img_emb.proj.1.weight")
        pos = tensors.get("img_emb.emb_pos")
        return WanConfig.from_original_config(
            raw,
            cross_attn_norm="blocks.0.norm3.weight" in tensors,
            image_dim=None if image is None else image[1][1],
            pos_embed_seq_len=None if pos is None else pos[1][1],
        ), True
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{config_file}: {exc}") from None


# ---------------------------------------------------------------------------------------
# materialising and loading
# ---------------------------------------------------------------------------------------
def parameter_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    from fastdit.models.wan.transformer import keeps_fp32

    return torch.float32 if keeps_fp32(name) and dtype.is_floating_point else dtype


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def materialize(model: nn.Module, dtype: torch.dtype, device: str | torch.device) -> None:
    """Give every (meta) parameter uninitialised storage on ``device`` in its load dtype."""
    for name, param in list(model.named_parameters()):
        _set_parameter(model, name, torch.empty(param.shape, dtype=parameter_dtype(name, dtype),
                                                device=device))


def load_pretrained(cls, path, *, dtype: torch.dtype, device, subfolder: str | None = None):
    folder = find_model_dir(path, subfolder)
    config_file = folder / CONFIG_NAME
    raw = read_json(config_file)
    files, weight_map = weight_files(folder)
    stored = index_tensors(files)
    check_index(folder, stored, weight_map)
    config, original = config_for_checkpoint(raw, stored, config_file)
    with torch.device("meta"):
        model = cls(config)
    names = parameter_names(model, folder, files, stored, original)  # checkpoint key -> parameter

    for file in files:
        with _open(file) as handle:
            for key in handle.keys():
                name = names.get(key)
                if name is None:
                    continue
                try:
                    tensor = handle.get_tensor(key)
                except Exception as exc:
                    raise CheckpointError(f"cannot read tensor {key!r} from {file}: {exc}") from None
                _set_parameter(model, name, tensor.to(device=device, dtype=parameter_dtype(name, dtype)))
    return model.eval().requires_grad_(False)


def _describe(config: WanConfig) -> str:
    return (f"dim={config.dim}, layers={config.num_layers}, in={config.in_channels}, "
            f"image_dim={config.image_dim}")


def save_pretrained(model: nn.Module, folder, *, max_shard_size: int | None = None,
                    layout: str = "diffusers") -> None:
    """``config.json`` plus safetensors (with an index when sharded)."""
    from safetensors.torch import save_file

    if layout not in ("diffusers", "original"):
        raise ValueError(f"layout must be 'diffusers' or 'original', got {layout!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config: WanConfig = model.config
    raw = config.to_diffusers_config() if layout == "diffusers" else config.to_original_config()
    tensors = {}
    for name, tensor in model.state_dict().items():
        key = name if layout == "diffusers" else diffusers_to_original_key(name)
        tensors[key] = tensor.detach().contiguous().cpu()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_size is not None and shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (folder / INDEX_NAME).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / CONFIG_NAME).write_text(json.dumps(raw, indent=2))

"""A transformer from one ``.safetensors`` file, as distilled models ship (LightX2V's
``wan2.1_t2v_14b_lightx2v_4step.safetensors``, ...), built on a base model's config.

    config = transformer_config("Wan2.1-T2V-14B-Diffusers")          # the base folder's
    model = load_transformer_file("wan2.1_t2v_14b_lightx2v_4step.safetensors", config,
                                  dtype=torch.bfloat16, device="cuda")

The file's tensors use the official Wan names (optionally under ``model.diffusion_model.`` or
``diffusion_model.``) or diffusers' names. Quantised files are dequantised on the device as
they load, ``W = weight * scale`` in fp32, stored in ``dtype``:

* LightX2V ``scaled_fp8_e4m3`` / ``int8``: ``<module>.weight`` in float8_e4m3fn (or int8) plus
  ``<module>.weight_scale`` ``[N, 1]`` fp32 (one scale per output channel);
* ComfyUI scaled fp8 (``..._comfyui.safetensors``, Kijai's ``fp8_scaled``): a ``scaled_fp8``
  marker tensor, ``<module>.scale_weight`` (one value, or one per output channel) and
  optional ``<module>.scale_input`` (activation scales for fp8 products: not needed here);
  ComfyUI's newer ``.comfy_quant`` per-layer entries when their format is an fp8 one;
* unscaled fp8 files (a plain cast).

Every tensor is checked against the model the config describes (names and shapes) before any
data is read; problems raise :class:`~fastdit.models.wan.checkpoint.CheckpointError`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Mapping

import torch

from fastdit.models.wan.checkpoint import (
    CONFIG_NAME,
    IGNORED_KEYS,
    CheckpointError,
    _describe,
    _open,
    _set_parameter,
    config_for_checkpoint,
    diffusers_to_original_key,
    find_model_dir,
    index_tensors,
    original_to_diffusers_key,
    parameter_dtype,
    read_json,
    resolve_config,
    weight_files,
)
from fastdit.errors import first_line as _first_line
from fastdit.models.wan.configs import WanConfig

log = logging.getLogger("fastdit.models")

_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
#: scale tensors: key suffix -> the suffix of the weight they scale
_SCALES = (".weight_scale", ".scale_weight")
#: tensors a dequantising loader does not need
_DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
_FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")


def transformer_config(model_path: str | PathLike, subfolder: str | None = None) -> WanConfig:
    """The transformer architecture of a base model folder (diffusers or official layout),
    read from its config (and, for the official layout, its tensor headers)."""
    folder = find_model_dir(model_path, subfolder)
    raw = read_json(folder / CONFIG_NAME)
    tensors = index_tensors(weight_files(folder)[0])
    return config_for_checkpoint(raw, tensors, folder / CONFIG_NAME)[0]


@dataclass(frozen=True)
class TransformerFile:
    """A single-file transformer checked against a model config (headers only)."""

    path: Path
    config: WanConfig
    weights: dict  # {parameter name: key in the file}
    scales: dict  # {weight key: scale key}


def check_transformer_file(path: str | PathLike, config: WanConfig | str | Mapping) -> TransformerFile:
    """Read the header of ``path`` and check every tensor against the model ``config``
    describes (names, shapes, scale shapes, quantisation formats); no tensor data is read.
    Raises :class:`CheckpointError` naming the file and the tensor."""
    from fastdit.models.wan.transformer import WanTransformer

    path, config = Path(path), resolve_config(config)
    if not path.is_file():
        raise CheckpointError(f"transformer file {path} does not exist")
    try:
        with _open(path) as handle:
            metadata = handle.metadata() or {}
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors' own errors for damaged files
        raise CheckpointError(f"cannot read transformer file {path}: {_first_line(exc)}") from None
    if not shapes:
        raise CheckpointError(f"transformer file {path} holds no tensors")
    weights, scales = _layout(path, shapes, metadata)

    with torch.device("meta"):
        model = WanTransformer(config)
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name, key in weights.items():
        if name not in expected:
            raise CheckpointError(f"unexpected tensor {key!r} in {path}: the model "
                                  f"({_describe(config)}) has no parameter {name!r}")
        if shapes[key] != expected[name]:
            raise CheckpointError(f"tensor {key!r} in {path} has shape {list(shapes[key])}, the "
                                  f"model ({_describe(config)}) expects {list(expected[name])}")
        scale = scales.get(key)
        if scale is not None and shapes[scale] not in ((), (1,), (expected[name][0],),
                                                       (expected[name][0], 1)):
            raise CheckpointError(f"scale tensor {scale!r} in {path} has shape "
                                  f"{list(shapes[scale])}; expected one value or one per output "
                                  f"channel ({expected[name][0]})")
    missing = [n for n in expected if n not in weights]
    if missing:
        shown = ", ".join(repr(diffusers_to_original_key(n) or n) for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"transformer file {path} lacks tensor(s) {shown}{more} of the model "
                              f"({_describe(config)})")
    return TransformerFile(path, config, weights, scales)


def load_transformer_file(path: str | PathLike | TransformerFile, config: WanConfig | str | Mapping | None = None,
                          dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"):
    """A :class:`~fastdit.models.wan.WanTransformer` with the weights of the single file
    ``path`` and the architecture ``config`` (a ``WanConfig``, a name in ``WAN_CONFIGS`` or a
    diffusers config dict); see the module doc for the layouts and quantised formats read.
    ``path`` may be the result of :func:`check_transformer_file` (then ``config`` is its)."""
    from fastdit.models.wan.transformer import WanTransformer

    checked = path if isinstance(path, TransformerFile) else check_transformer_file(path, config)
    path, config, weights, scales = checked.path, checked.config, checked.weights, checked.scales
    device = torch.device(device)
    with torch.device("meta"):
        model = WanTransformer(config)

    quantised = 0
    with _open(path) as handle:
        for name, key in weights.items():
            target = parameter_dtype(name, dtype)
            try:
                tensor = handle.get_tensor(key).to(device)
                scale = scales.get(key)
                if scale is not None:
                    tensor = dequantize_scaled(tensor, handle.get_tensor(scale), target, device)
                    quantised += 1
                else:
                    tensor = tensor.to(target)
            except Exception as exc:
                raise CheckpointError(f"cannot read tensor {key!r} from {path}: {_first_line(exc)}") from None
            _set_parameter(model, name, tensor)
    log.info("transformer: %s (%d tensors, %d dequantised with their scales) on %s in %s",
             path.name, len(weights), quantised, device, str(dtype).replace("torch.", ""))
    return model.eval().requires_grad_(False)


def dequantize_scaled(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                      device: torch.device | str) -> torch.Tensor:
    """A scaled fp8 / int8 weight as a dense one: ``W = weight * scale`` in fp32 on ``device``,
    stored in ``dtype``. ``weight [N, K...]``; ``scale`` one value, ``[N]`` or ``[N, 1]``."""
    weight = weight.to(device)
    scale = scale.to(device=device, dtype=torch.float32)
    shape = (-1,) + (1,) * (weight.dim() - 1) if scale.numel() > 1 else ()
    return (weight.float() * scale.reshape(shape)).to(dtype)


def _layout(path: Path, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]
            ) -> tuple[dict[str, str], dict[str, str]]:
    """``({parameter name: key}, {weight key: scale key})`` for the file's keys."""
    # ComfyUI's marker is "<prefix>scaled_fp8" (the prefix its weights carry, or none)
    markers = [k for k in shapes if k.rpartition(".")[2] == "scaled_fp8" and k.endswith("scaled_fp8")]
    names = [k for k in shapes if k not in markers]
    prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in names)), "")
    _check_quant_formats(path, shapes, metadata)
    keys = [k for k in names if not k.endswith(_DROPPED_SUFFIXES) and not IGNORED_KEYS.search(k)]
    scales = {}
    for key in keys:
        for suffix in _SCALES:
            if key.endswith(suffix):
                scales[key[: -len(suffix)] + ".weight"] = key
    weights_keys = [k for k in keys if k not in scales.values()]
    for weight, scale in scales.items():
        if weight not in shapes:
            raise CheckpointError(f"scale tensor {scale!r} in {path} has no weight {weight!r}")
    bare = {k: k[len(prefix):] for k in weights_keys}
    original = any(name.startswith("blocks.0.self_attn.") for name in bare.values())
    weights: dict[str, str] = {}
    for key, name in bare.items():
        mapped = original_to_diffusers_key(name) if original else name
        if mapped is None:
            raise CheckpointError(f"unexpected tensor {key!r} in {path}: not a Wan transformer "
                                  "tensor (official layout)")
        if mapped in weights:
            raise CheckpointError(f"tensors {weights[mapped]!r} and {key!r} in {path} both give "
                                  f"{mapped!r}")
        weights[mapped] = key
    return weights, scales


def _check_quant_formats(path: Path, shapes: Mapping[str, tuple[int, ...]],
                         metadata: Mapping[str, str]) -> None:
    """Refuse quantisation formats this loader cannot dequantise (NVFP4, MXFP, ...)."""
    layers = {}
    if metadata.get("_quantization_metadata"):
        try:
            layers = json.loads(metadata["_quantization_metadata"]).get("layers", {}) or {}
        except (ValueError, AttributeError):
            raise CheckpointError(f"{path}: unreadable _quantization_metadata") from None
    for name, conf in layers.items():
        fmt = conf.get("format") if isinstance(conf, dict) else None
        if fmt not in _FP8_FORMATS:
            raise CheckpointError(f"{path}: layer {name!r} is quantised as {fmt!r}; fastdit reads "
                                  "fp8 and int8 scaled weights only")
    for key in shapes:
        if key.endswith(("_global_scale", ".weight_scale_2")):
            raise CheckpointError(f"{path}: tensor {key!r} belongs to a block-scaled (NVFP4/MXFP) "
                                  "format; fastdit reads fp8 and int8 scaled weights only")

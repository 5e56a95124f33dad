"""What a Wan model folder is, read cheaply: task, strides, defaults, and whether its files are sound.

:func:`inspect_model` reads only JSON files and the headers of the weight files, so the CLI can
reject a bad request (wrong size, missing image, corrupt weights) before any heavy work.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastdit.errors import InputError, ModelFolderError  # re-exported: the folder and request errors
from fastdit.errors import first_line as _first_line

if TYPE_CHECKING:
    from fastdit.schedulers.presets import FewStep

log = logging.getLogger("fastdit.pipelines")

#: The tasks ``fastdit make-tiny-model`` can build (here, not in ``tiny``, which imports torch).
TINY_TASKS = ("t2v", "i2v", "ti2v", "a14b", "i2v-a14b")


# ---------------------------------------------------------------------------------------
# Known Wan models and their recommended settings
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelDefaults:
    """Recommended generation settings for one model (the official Wan configs)."""

    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None  # low-noise expert (Wan2.2 A14B)
    flow_shift: float | None = None  # recommended; the checkpoint's scheduler config wins
    fps: int = 16
    # a few-step schedule (a preset or timesteps given to fastdit.load): the sampler every
    # generation runs unless its request gives other timesteps; None: the model's scheduler
    few_step: FewStep | None = None


KNOWN_MODELS: dict[str, ModelDefaults] = {
    "Wan2.1-T2V-1.3B": ModelDefaults(480, 832, 81, 50, 5.0, None, 3.0, 16),
    "Wan2.1-T2V-14B": ModelDefaults(720, 1280, 81, 50, 5.0, None, 5.0, 16),
    "Wan2.1-I2V-14B-480P": ModelDefaults(480, 832, 81, 50, 5.0, None, 3.0, 16),
    "Wan2.1-I2V-14B-720P": ModelDefaults(720, 1280, 81, 50, 5.0, None, 5.0, 16),
    "Wan2.2-T2V-A14B": ModelDefaults(720, 1280, 81, 40, 4.0, 3.0, 12.0, 16),
    "Wan2.2-I2V-A14B": ModelDefaults(720, 1280, 81, 40, 3.5, 3.5, 5.0, 16),
    "Wan2.2-TI2V-5B": ModelDefaults(704, 1280, 121, 50, 5.0, None, 5.0, 24),
}

# Hub ids of the diffusers-format checkpoints (``huggingface-cli download <id> --local-dir ...``).
HUB_IDS = {name: f"Wan-AI/{name}-Diffusers" for name in KNOWN_MODELS}

# A folder may carry its own defaults (the tiny models do): same keys as ModelDefaults.
DEFAULTS_FILE = "fastdit_defaults.json"

PIPELINE_CLASSES = ("WanPipeline", "WanImageToVideoPipeline")


# ---------------------------------------------------------------------------------------
# The spec of one folder
# ---------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """Everything the pipeline needs to know before loading weights."""

    root: Path
    pipeline_class: str  # WanPipeline | WanImageToVideoPipeline
    task: str  # t2v | i2v | ti2v | t2v-a14b | i2v-a14b
    components: dict[str, tuple[str, str] | None]
    transformer_config: dict[str, Any]
    vae_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    boundary_ratio: float | None = None
    expand_timesteps: bool = False
    param_counts: dict[str, int] = field(default_factory=dict)  # elements per component
    name: str | None = None  # a KNOWN_MODELS key when recognised
    defaults: ModelDefaults = field(default_factory=ModelDefaults)

    # ---- derived facts ---------------------------------------------------------------
    @property
    def two_experts(self) -> bool:
        return self.boundary_ratio is not None and self.components.get("transformer_2") is not None

    @property
    def has_clip(self) -> bool:
        """Wan2.1 I2V: CLIP image tokens go into the transformer's cross-attention."""
        return (self.pipeline_class == "WanImageToVideoPipeline"
                and self.transformer_config.get("image_dim") is not None)

    @property
    def image_mode(self) -> str:
        """'required' (I2V), 'optional' (TI2V) or 'none' (T2V)."""
        if self.pipeline_class == "WanImageToVideoPipeline":
            return "required"
        return "optional" if self.expand_timesteps else "none"

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer_config.get("patch_size", (1, 2, 2)))  # type: ignore[return-value]

    @property
    def vae_stride_spatial(self) -> int:
        return int(self.vae_config.get("scale_factor_spatial") or 8)

    @property
    def vae_stride_temporal(self) -> int:
        return int(self.vae_config.get("scale_factor_temporal") or 4)

    @property
    def spatial_multiple(self) -> int:
        """Height and width must be multiples of this (16; 32 for TI2V-5B)."""
        return self.vae_stride_spatial * max(self.patch_size[1], self.patch_size[2])

    @property
    def latent_channels(self) -> int:
        return int(self.vae_config.get("z_dim", 16))

    @classmethod
    def from_configs(cls, transformer_config: dict[str, Any], vae_config: dict[str, Any],
                     scheduler_config: dict[str, Any], *, pipeline_class: str = "WanPipeline",
                     boundary_ratio: float | None = None, expand_timesteps: bool = False,
                     name: str | None = None, root: str | os.PathLike = "<in memory>") -> "ModelSpec":
        """A spec for components built in memory (benchmarks, tests): no folder behind it."""
        if pipeline_class not in PIPELINE_CLASSES:
            raise ValueError(f"pipeline_class must be one of {PIPELINE_CLASSES}, got {pipeline_class!r}")
        has = ("diffusers", "WanTransformer3DModel")
        components = {"tokenizer": ("transformers", "T5TokenizerFast"),
                      "text_encoder": ("transformers", "UMT5EncoderModel"),
                      "vae": ("diffusers", "AutoencoderKLWan"),
                      "scheduler": ("diffusers", "UniPCMultistepScheduler"), "transformer": has,
                      "transformer_2": has if boundary_ratio is not None else None}
        kind = "i2v" if pipeline_class == "WanImageToVideoPipeline" else "t2v"
        task = f"{kind}-a14b" if boundary_ratio is not None else ("ti2v" if expand_timesteps else kind)
        spec = cls(root=Path(root), pipeline_class=pipeline_class, task=task, components=components,
                   transformer_config=dict(transformer_config), vae_config=dict(vae_config),
                   scheduler_config=dict(scheduler_config), boundary_ratio=boundary_ratio,
                   expand_timesteps=expand_timesteps, name=name)
        spec.defaults = KNOWN_MODELS.get(name or "", ModelDefaults())
        return spec

    def describe(self) -> str:
        return f"{self.name or 'unrecognised Wan model'} ({self.task}) at {self.root}"


# ---------------------------------------------------------------------------------------
# Reading and checking files
# ---------------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ModelFolderError(f"missing file {path}") from None
    except PermissionError:
        raise ModelFolderError(f"cannot read {path}: permission denied") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"cannot parse {path}: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"cannot parse {path}: expected a JSON object")
    return data


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def check_safetensors(path: Path) -> int:
    """Check a .safetensors file's header and size (no tensor data is read); returns the
    number of elements it holds."""
    problem = None
    total = 0
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFolderError(f"corrupt weights file {path}: too short to be safetensors")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or n > min(size - 8, 1 << 28):
                raise ModelFolderError(f"corrupt weights file {path}: bad safetensors header")
            header = json.loads(f.read(n))
    except ModelFolderError:
        raise
    except PermissionError:
        raise ModelFolderError(f"cannot read weights file {path}: permission denied") from None
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"corrupt weights file {path}: {_first_line(exc)}") from None
    if not isinstance(header, dict):
        problem = "bad safetensors header"
    else:
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                start, stop = info["data_offsets"]
                numel = 1
                for d in info["shape"]:
                    numel *= int(d)
                nbytes = numel * _DTYPE_BYTES.get(info["dtype"], 0)
            except (KeyError, TypeError, ValueError):
                problem = f"bad header entry for tensor {name!r}"
                break
            if nbytes and stop - start != nbytes:
                problem = f"tensor {name!r} has {stop - start} bytes, its shape needs {nbytes}"
                break
            end = max(end, stop)
            total += numel
        if problem is None and 8 + n + end > size:
            problem = f"file is truncated ({size} bytes, the header needs {8 + n + end})"
    if problem:
        raise ModelFolderError(f"corrupt weights file {path}: {problem}")
    return total


def check_weights(folder: Path) -> tuple[list[Path], int]:
    """Check every weight file in a component folder; returns them and their element count.
    Sharded indexes are followed."""
    files: list[Path] = []
    numel = 0
    for index in sorted(folder.glob("*.safetensors.index.json")):
        data = read_json(index)
        for shard in sorted(set((data.get("weight_map") or {}).values())):
            if not (folder / shard).is_file():
                raise ModelFolderError(f"missing weights file {folder / shard} (listed in {index})")
    for path in sorted(folder.glob("*.safetensors")):
        numel += check_safetensors(path)
        files.append(path)
    for path in sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
        if not zipfile.is_zipfile(path):
            raise ModelFolderError(f"corrupt weights file {path}: not a torch checkpoint")
        files.append(path)
        numel += path.stat().st_size // 2  # rough: unknown dtype, assume 16-bit
    return files, numel


# ---------------------------------------------------------------------------------------
# Resolving and inspecting a folder
# ---------------------------------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A local folder as is; a Hub id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) is fetched when it
    is not a local path (needs the network, or the Hugging Face cache)."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelFolderError(f"model path {p} is not a folder")
        if not os.access(p, os.R_OK | os.X_OK):
            raise ModelFolderError(f"cannot read model folder {p}: permission denied")
        return p
    text = str(path)
    # "org/name" is a Hub id unless "org" is a local folder (then it is a mistyped local path)
    if _HUB_ID.match(text) and not text.startswith(".") and not Path(text.split("/")[0]).exists():
        try:
            from huggingface_hub import snapshot_download

            try:  # the local Hugging Face cache first, without the network
                return Path(snapshot_download(text, local_files_only=True))
            except Exception:
                pass
            log.info("%s is not a local folder: fetching it from the Hugging Face Hub", text)
            return Path(snapshot_download(text))
        except Exception as exc:  # network, auth, missing repo
            raise ModelFolderError(f"model folder not found: {text} (not a local folder, and fetching "
                                   f"it from the Hugging Face Hub failed: {_first_line(exc)})") from None
    raise ModelFolderError(f"model folder not found: {p}")


def _component_folder(root: Path, name: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {root} has no {name}/ folder (listed in model_index.json)")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise ModelFolderError(f"cannot read {folder}: permission denied")
    return folder


def inspect_model(path: str | os.PathLike, check_files: bool = True) -> ModelSpec:
    """Read a diffusers-format Wan folder's JSON files (and check weight headers)."""
    root = resolve_model_path(path)
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise ModelFolderError(f"{root} is not a diffusers-format model folder (no model_index.json)")
    index = read_json(index_path)
    cls = index.get("_class_name")
    if cls not in PIPELINE_CLASSES:
        raise ModelFolderError(f"{index_path}: pipeline {cls!r} is not supported "
                               f"(supported: {', '.join(PIPELINE_CLASSES)})")
    components: dict[str, tuple[str, str] | None] = {}
    for key, value in index.items():
        if key.startswith("_") or key in ("boundary_ratio", "expand_timesteps"):
            continue
        if isinstance(value, list) and len(value) == 2:
            components[key] = tuple(value) if value[0] is not None and value[1] is not None else None
    for needed in ("tokenizer", "text_encoder", "vae", "scheduler", "transformer"):
        if components.get(needed) is None:
            raise ModelFolderError(f"{index_path}: no {needed} component")
    boundary = index.get("boundary_ratio")
    expand = bool(index.get("expand_timesteps") or False)
    if boundary is not None and components.get("transformer_2") is None:
        raise ModelFolderError(f"{index_path}: boundary_ratio is set but there is no transformer_2")

    folders = {name: _component_folder(root, name) for name, value in components.items() if value}
    tcfg = read_json(folders["transformer"] / "config.json")
    vcfg = read_json(folders["vae"] / "config.json")
    scfg = read_json(folders["scheduler"] / "scheduler_config.json")
    for name in ("text_encoder", "image_encoder", "transformer_2"):
        if name in folders:
            read_json(folders[name] / "config.json")
    tok = folders["tokenizer"]
    if not any((tok / f).is_file() for f in ("tokenizer.json", "spiece.model", "tokenizer_config.json")):
        raise ModelFolderError(f"{tok} holds no tokenizer files")

    param_counts: dict[str, int] = {}
    if check_files:
        for name in ("text_encoder", "image_encoder", "vae", "transformer", "transformer_2"):
            if name in folders:
                files, param_counts[name] = check_weights(folders[name])
                if not files:
                    raise ModelFolderError(f"{folders[name]} holds no weights files")

    cls_task = "i2v" if cls == "WanImageToVideoPipeline" else "t2v"
    if boundary is not None:
        task = f"{cls_task}-a14b"
    elif expand:
        task = "ti2v"
    else:
        task = cls_task
    spec = ModelSpec(root=root, pipeline_class=cls, task=task, components=components,
                     transformer_config=tcfg, vae_config=vcfg, scheduler_config=scfg,
                     boundary_ratio=boundary, expand_timesteps=expand, param_counts=param_counts)
    spec.name = recognise(spec, str(path))
    spec.defaults = _defaults_for(spec)
    if spec.name is None and (root / DEFAULTS_FILE).is_file():
        spec.name = read_json(root / DEFAULTS_FILE).get("name") or None
    return spec


def recognise(spec: ModelSpec, given: str = "") -> str | None:
    """The KNOWN_MODELS name of a folder: by its name first, else by its architecture."""
    for text in (given, str(spec.root)):
        lowered = text.lower()
        for name in sorted(KNOWN_MODELS, key=len, reverse=True):
            if name.lower() in lowered:
                return name
    t = spec.transformer_config
    dim = int(t.get("num_attention_heads", 0)) * int(t.get("attention_head_dim", 0))
    layers = int(t.get("num_layers", 0))
    if spec.task == "t2v-a14b" and dim == 5120:
        return "Wan2.2-T2V-A14B"
    if spec.task == "i2v-a14b" and dim == 5120:
        return "Wan2.2-I2V-A14B"
    if spec.task == "ti2v" and dim == 3072 and layers == 30:
        return "Wan2.2-TI2V-5B"
    if spec.task == "i2v" and dim == 5120:
        return "Wan2.1-I2V-14B-480P"
    if spec.task == "t2v" and dim == 5120 and layers == 40:
        return "Wan2.1-T2V-14B"
    if spec.task == "t2v" and dim == 1536 and layers == 30:
        return "Wan2.1-T2V-1.3B"
    return None


def _defaults_for(spec: ModelSpec) -> ModelDefaults:
    base = KNOWN_MODELS.get(spec.name or "", ModelDefaults())
    own = spec.root / DEFAULTS_FILE
    if own.is_file():
        data = read_json(own)
        known = {f.name for f in dataclasses.fields(ModelDefaults)} - {"few_step"}
        base = dataclasses.replace(base, **{k: v for k, v in data.items() if k in known})
    return base

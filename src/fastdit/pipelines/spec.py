"""What a Wan model folder is, read cheaply: task, strides, defaults, and whether its files are sound.

:func:`inspect_model` reads only JSON files and the headers of the weight files, so the CLI can
reject a bad request (wrong size, missing image, corrupt weights) before any heavy work.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastdit import model_files
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

#: The highest frame rate fastdit writes (ffmpeg parses rates up to about 10^6; players far less).
MAX_FPS = 1000


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
    # the device a loaded pipeline runs on (a limits.DeviceBudget), for the request estimate;
    # set by load_pipeline (and the CLI before loading); None: sizes are checked against the
    # model's range only
    device_budget: Any = None

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
    """The JSON object in ``path`` (:class:`ModelFolderError` naming the file otherwise)."""
    return model_files.read_json(path, ModelFolderError)


def check_safetensors(path: Path) -> int:
    """Check a .safetensors file's header and size (no tensor data is read); returns the
    number of elements it holds."""
    header = model_files.read_safetensors_header(path, ModelFolderError)
    return sum(entry.numel for entry in header.values())


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
    check_values(index_path, index, INDEX_KEYS)
    boundary = index.get("boundary_ratio")
    expand = bool(index.get("expand_timesteps") or False)
    if boundary is not None and components.get("transformer_2") is None:
        raise ModelFolderError(f"{index_path}: boundary_ratio is set but there is no transformer_2")

    folders = {name: _component_folder(root, name) for name, value in components.items() if value}
    tcfg = read_json(folders["transformer"] / "config.json")
    vcfg = read_json(folders["vae"] / "config.json")
    scfg = read_json(folders["scheduler"] / "scheduler_config.json")
    check_values(folders["transformer"] / "config.json", tcfg, TRANSFORMER_KEYS)
    check_values(folders["vae"] / "config.json", vcfg, VAE_KEYS)
    check_values(folders["scheduler"] / "scheduler_config.json", scfg, SCHEDULER_KEYS)
    for name in ("text_encoder", "image_encoder", "transformer_2"):
        if name in folders:
            config = read_json(folders[name] / "config.json")
            if name == "transformer_2":
                check_values(folders[name] / "config.json", config, TRANSFORMER_KEYS)
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
    own = read_json(root / DEFAULTS_FILE) if (root / DEFAULTS_FILE).is_file() else None
    spec.defaults = _defaults_for(spec, own)
    if spec.name is None and own is not None:
        spec.name = own.get("name") or None
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


def _defaults_for(spec: ModelSpec, own: dict[str, Any] | None) -> ModelDefaults:
    """The known model's defaults, overridden by the folder's own :data:`DEFAULTS_FILE`
    (``own``: its JSON, already read; None when there is none)."""
    base = KNOWN_MODELS.get(spec.name or "", ModelDefaults())
    if own is not None:
        check_values(spec.root / DEFAULTS_FILE, own, DEFAULTS_KEYS)
        known = {f.name for f in dataclasses.fields(ModelDefaults)} - {"few_step"}
        base = dataclasses.replace(base, **{k: v for k, v in own.items() if k in known})
    return base


# ---------------------------------------------------------------------------------------
# The values fastdit reads from a folder's JSON files: types and ranges
# ---------------------------------------------------------------------------------------
def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_KINDS: dict[str, tuple[Any, str]] = {
    "positive int": (_positive_int, "a positive integer"),
    "optional positive int": (lambda v: v is None or _positive_int(v), "a positive integer or null"),
    "non-negative int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                         "an integer >= 0"),
    "number": (_number, "a finite number"),
    "positive number": (lambda v: _number(v) and v > 0, "a positive finite number"),
    "optional positive number": (lambda v: v is None or (_number(v) and v > 0),
                                 "a positive finite number or null"),
    "guidance": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "optional guidance": (lambda v: v is None or (_number(v) and v >= 0), "a finite number >= 0 or null"),
    "ratio": (lambda v: v is None or (_number(v) and 0 < v <= 1), "a number in (0, 1] or null"),
    "bool": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "patch": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_positive_int, v)),
              "three positive integers"),
    "int list": (lambda v: isinstance(v, list) and len(v) > 0 and all(map(_positive_int, v)),
                 "a list of positive integers"),
    "bool list": (lambda v: isinstance(v, list) and all(isinstance(x, bool) for x in v), "a list of booleans"),
    "number list": (lambda v: v is None or (isinstance(v, list) and all(map(_number, v))),
                    "a list of finite numbers"),
    "fps": (lambda v: _positive_int(v) and v <= MAX_FPS, f"an integer from 1 to {MAX_FPS}"),
    "text": (lambda v: v is None or isinstance(v, str), "a string"),
}

INDEX_KEYS = {"boundary_ratio": "ratio", "expand_timesteps": "bool"}
TRANSFORMER_KEYS = {
    "patch_size": "patch", "num_attention_heads": "positive int", "attention_head_dim": "positive int",
    "num_layers": "positive int", "in_channels": "positive int", "out_channels": "optional positive int",
    "ffn_dim": "positive int", "text_dim": "positive int", "freq_dim": "positive int",
    "rope_max_seq_len": "positive int", "image_dim": "optional positive int",
    "added_kv_proj_dim": "optional positive int", "pos_embed_seq_len": "optional positive int",
    "dim": "positive int", "num_heads": "positive int", "in_dim": "positive int", "out_dim": "positive int",
}
VAE_KEYS = {
    "z_dim": "positive int", "base_dim": "positive int", "decoder_base_dim": "optional positive int",
    "num_res_blocks": "positive int", "dim_mult": "int list", "temperal_downsample": "bool list",
    "scale_factor_spatial": "optional positive int", "scale_factor_temporal": "optional positive int",
    "patch_size": "optional positive int", "latents_mean": "number list", "latents_std": "number list",
}
SCHEDULER_KEYS = {
    "num_train_timesteps": "positive int", "flow_shift": "optional positive number",
    "shift": "optional positive number", "solver_order": "positive int", "beta_start": "number",
    "beta_end": "number", "steps_offset": "non-negative int",
}
DEFAULTS_KEYS = {
    "height": "positive int", "width": "positive int", "num_frames": "positive int",
    "num_inference_steps": "positive int", "guidance_scale": "guidance", "guidance_scale_2": "optional guidance",
    "flow_shift": "optional positive number", "fps": "fps", "name": "text",
}


def check_values(path: Path, data: dict[str, Any], kinds: dict[str, str]) -> None:
    """Every key of ``kinds`` present in ``data`` has a value of its kind, else one
    :class:`ModelFolderError` naming the file, the key and the value."""
    for key, kind in kinds.items():
        if key not in data:
            continue
        test, words = _KINDS[kind]
        if not test(data[key]):
            raise ModelFolderError(f"{path}: {key} must be {words}, got {json.dumps(data[key])[:60]}")

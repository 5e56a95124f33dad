"""``fastdit serve`` settings: :class:`ServeConfig`, and the model-loading options as one table.

:data:`LOAD_OPTIONS` mirrors the load-time options of ``fastdit generate`` (``--dtype``,
``--scheduler``, ...): each row becomes a ``fastdit serve`` flag and a keyword of
``fastdit.load`` in every worker. New ``LoadOptions`` fields (quantize, loras, cache, ...) are
one row each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fastdit.cli.generate import DTYPE_CHOICES, VAE_DECODER_CHOICES


@dataclass(frozen=True)
class LoadOption:
    """One ``fastdit serve`` flag passed to ``fastdit.load(path, **options)`` in the workers.

    ``kind``: ``str``, ``int``, ``float``, ``flag`` (store_true), ``list`` (repeatable, a tuple)
    or ``onoff`` (``on``/``off`` -> True/False); ``choices`` for str options; ``keyword``: the
    ``fastdit.load`` keyword (which takes the ``dtype`` names as they are).
    """

    flag: str
    keyword: str
    kind: str
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None


LOAD_OPTIONS: tuple[LoadOption, ...] = (
    LoadOption("--dtype", "dtype", "str", "default: bf16 on a GPU, fp32 on the CPU", choices=DTYPE_CHOICES),
    LoadOption("--scheduler", "scheduler", "str", "sampler", "unipc", ("unipc", "euler")),
    LoadOption("--flow-shift", "flow_shift", "float", "override the checkpoint's flow shift"),
    LoadOption("--offload", "offload", "str", "keep idle components in CPU memory", "auto",
               ("auto", "none", "experts", "model", "blocks")),
    LoadOption("--vae-tiling", "vae_tiling", "flag", "decode in tiles (less memory)", False),
    LoadOption("--vae-decoder", "vae_decoder", "str", "the VAE decode: diffusers' or fastdit's", None,
               VAE_DECODER_CHOICES),
    # memory (docs/offload.md)
    LoadOption("--max-gpu-memory", "max_gpu_memory", "str", "GPU memory budget per worker (24GB, 16GiB)"),
    LoadOption("--weights", "weights", "str", "fp8: e4m3 block weights (half the memory)", None,
               ("dense", "fp8")),
    LoadOption("--text-encoder-device", "text_encoder_device", "str", "where the text encoder runs", None,
               ("auto", "device", "cpu")),
    LoadOption("--prefetch", "prefetch", "int", "streamed blocks copied ahead"),
    # LoRAs, distilled transformers and few-step presets (docs/lora.md)
    LoadOption("--lora", "loras", "list", "a LoRA [high:|low:]PATH[:SCALE] (repeatable)"),
    LoadOption("--lora-2", "loras_2", "list", "a LoRA for Wan2.2 A14B's low-noise expert (repeatable)"),
    LoadOption("--lora-mode", "lora_mode", "str", "merge or runtime", None, ("merge", "runtime")),
    LoadOption("--lora-strict", "lora_strict", "onoff", "on: unknown LoRA keys are an error", None,
               ("on", "off")),
    LoadOption("--transformer", "transformer", "str", "a single .safetensors transformer file"),
    LoadOption("--transformer-2", "transformer_2", "str", "the same for the second expert"),
    LoadOption("--preset", "preset", "str", "few-step preset (lightx2v-4step, lightning-4step)"),
    # precision (docs/quantization.md)
    LoadOption("--quantize", "quantize", "str",
               "precision: none (exact) or fp8, with per-part overrides (fp8:attention=exact)"),
)

@dataclass(frozen=True)
class ServeConfig:
    """Everything a ``fastdit serve`` process is started with.

    ``devices``: one worker per entry (``"cuda:0"``, ``"cpu"``); ``job_timeout_s``: a job
    running longer is stopped (and its worker killed when it does not stop) and failed;
    ``max_attempts``: runs of a job whose worker died under it (2: retried once);
    ``keep_hours``: finished jobs and their videos are deleted this long after they end
    (0: kept); ``test_faults``: accept the test-only ``fault`` request field.
    """

    model: str
    state_dir: Path
    devices: tuple[str, ...] = ("cpu",)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_id: str | None = None
    max_queue: int = 256
    keep_hours: float = 24.0
    job_timeout_s: float = 3600.0
    max_attempts: int = 2
    heartbeat_timeout_s: float = 120.0
    cancel_grace_s: float = 30.0
    load_timeout_s: float = 1800.0
    max_body_bytes: int = 16 * 2**20
    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 4096
    cors_origins: tuple[str, ...] = ()
    load_options: Mapping[str, Any] = field(default_factory=dict)
    cpu_threads: int | None = None
    test_faults: bool = False
    log_level: str = "info"

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "load_options", dict(self.load_options))
        if not self.devices:
            raise ValueError("devices must name at least one device")
        for name in ("max_queue", "max_attempts", "max_body_bytes", "max_image_bytes", "max_prompt_chars"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("job_timeout_s", "heartbeat_timeout_s", "cancel_grace_s", "load_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.keep_hours < 0:
            raise ValueError(f"keep_hours must be >= 0, got {self.keep_hours}")

    @property
    def outputs_dir(self) -> Path:
        return self.state_dir / "outputs"

    @property
    def inputs_dir(self) -> Path:
        return self.state_dir / "inputs"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "jobs.sqlite"


def default_state_dir() -> Path:
    """``<user data dir>/serve`` (``~/.local/share/fastdit/serve``), never the working directory."""
    from fastdit.config import user_data_dir

    return user_data_dir() / "serve"

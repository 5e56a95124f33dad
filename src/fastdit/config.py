"""fastdit configuration: frozen dataclasses, and the only place environment variables are read.

Environment variables (read once, by :func:`get_config`, the first time it is called):

================================  =====================================================
``FASTDIT_PLATFORM``              force a platform: cuda, rocm, musa, npu, xpu, mps, cpu
``FASTDIT_OP_PROVIDERS``          ``"rms_norm=triton,rope_qk_=native"`` per op, or one
                                  provider name (``"triton"``) for every op
``FASTDIT_STRICT_OPS``            ``1``: raise instead of falling back to another provider
``FASTDIT_ATTENTION_BACKEND``     SDPA backend: auto, cudnn, flash, efficient, math
``FASTDIT_VAE_AUTOTUNE``          ``1``/``0``: cuDNN/MIOpen autotuning for the VAE
                                  (default: on for ROCm, off elsewhere)
``FASTDIT_FFN_CHUNK_TOKENS``      tokens per FFN chunk in the transformer blocks
                                  (default 8192; ``0``: the whole sequence at once)
``FASTDIT_LOG_LEVEL``             logging level of the ``fastdit`` logger (default INFO)
``FASTDIT_API_KEY``               ``fastdit serve``: the bearer token clients must send
                                  (read by :func:`serve_api_key`; ``--api-key`` wins)
``XDG_DATA_HOME``                 the user's data folder (default ``~/.local/share``);
                                  :func:`user_data_dir` is ``$XDG_DATA_HOME/fastdit``
``TRITON_INTERPRET``              ``1``: Triton kernels run on the CPU in the interpreter
================================  =====================================================

Code that wants another configuration builds one and installs it with :func:`set_config`
(or temporarily with :func:`override_config`); nothing reads ``os.environ`` elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterator, Mapping

ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class KernelConfig:
    """How ops pick their provider.

    ``op_providers`` maps an op name to the provider names to try first, in order;
    ``default_providers`` is tried first for ops that have no entry of their own.
    With ``strict`` a provider that was asked for but cannot take a call raises instead of
    falling back to the next one in the priority list.
    """

    op_providers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_providers: tuple[str, ...] = ()
    strict: bool = False
    attention_backend: str = "auto"
    triton_interpret: bool = False

    def __post_init__(self) -> None:
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}"
            )
        object.__setattr__(self, "op_providers", dict(self.op_providers))

    def __hash__(self) -> int:  # Mapping is not hashable; hash its items
        return hash((tuple(sorted(self.op_providers.items())), self.default_providers,
                     self.strict, self.attention_backend, self.triton_interpret))


@dataclass(frozen=True)
class PlatformConfig:
    """``platform`` forces a platform by name; ``vae_autotune`` None means the platform default."""

    platform: str | None = None
    vae_autotune: bool | None = None


@dataclass(frozen=True)
class CompileConfig:
    """torch.compile settings used by the ``compiled`` provider and by model compilation."""

    enabled: bool = True
    mode: str | None = None
    fullgraph: bool = True
    dynamic: bool = False


@dataclass(frozen=True)
class MemoryConfig:
    """Activation memory of the models.

    ``ffn_chunk_tokens``: the feed-forward layers of the transformer blocks run over this many
    tokens at a time, so their ``[tokens, ffn_dim]`` hidden state (587 MB per 1.3B layer at
    480p, 906 MB for 14B) is never whole; ``0`` runs the whole sequence at once.
    """

    ffn_chunk_tokens: int = 8192

    def __post_init__(self) -> None:
        if not isinstance(self.ffn_chunk_tokens, int) or self.ffn_chunk_tokens < 0:
            raise ValueError(f"ffn_chunk_tokens must be an integer >= 0, got {self.ffn_chunk_tokens!r}")


@dataclass(frozen=True)
class EngineConfig:
    kernel: KernelConfig = field(default_factory=KernelConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    log_level: str = "INFO"


def parse_op_providers(text: str) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """Parse ``"rms_norm=triton,rope_qk_=native"`` or ``"triton"``.

    Returns ``(per_op, default)``; an op may be named twice to give a list
    (``"rms_norm=triton,rms_norm=native"``), entries without ``=`` form the default list.
    """
    per_op: dict[str, tuple[str, ...]] = {}
    default: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item:
            op, _, provider = (s.strip() for s in item.partition("="))
            if not op or not provider:
                raise ValueError(f"FASTDIT_OP_PROVIDERS: cannot parse {item!r} (want op=provider)")
            per_op[op] = per_op.get(op, ()) + (provider,)
        else:
            default.append(item)
    return per_op, tuple(default)


def _parse_bool(name: str, value: str | None, default: bool | None) -> bool | None:
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name}: expected 1/0/true/false, got {value!r}")


def _parse_int(name: str, value: str | None, default: int) -> int:
    if value is None or not value.strip():
        return default
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None


def config_from_env(environ: Mapping[str, str] | None = None) -> EngineConfig:
    """Build an :class:`EngineConfig` from ``FASTDIT_*`` (and ``TRITON_INTERPRET``) variables."""
    env = os.environ if environ is None else environ
    per_op, default = parse_op_providers(env.get("FASTDIT_OP_PROVIDERS", ""))
    kernel = KernelConfig(
        op_providers=per_op,
        default_providers=default,
        strict=bool(_parse_bool("FASTDIT_STRICT_OPS", env.get("FASTDIT_STRICT_OPS"), False)),
        attention_backend=env.get("FASTDIT_ATTENTION_BACKEND", "auto").strip().lower() or "auto",
        triton_interpret=bool(_parse_bool("TRITON_INTERPRET", env.get("TRITON_INTERPRET"), False)),
    )
    platform = PlatformConfig(
        platform=(env.get("FASTDIT_PLATFORM") or "").strip().lower() or None,
        vae_autotune=_parse_bool("FASTDIT_VAE_AUTOTUNE", env.get("FASTDIT_VAE_AUTOTUNE"), None),
    )
    memory = MemoryConfig(ffn_chunk_tokens=_parse_int(
        "FASTDIT_FFN_CHUNK_TOKENS", env.get("FASTDIT_FFN_CHUNK_TOKENS"), MemoryConfig.ffn_chunk_tokens))
    return EngineConfig(kernel=kernel, platform=platform, memory=memory,
                        log_level=env.get("FASTDIT_LOG_LEVEL", "INFO").strip().upper() or "INFO")


_config: EngineConfig | None = None
_generation = 0


def get_config() -> EngineConfig:
    """The engine configuration; built from the environment on first use."""
    global _config
    if _config is None:
        _config = config_from_env()
    return _config


def config_generation() -> int:
    """A counter bumped on every :func:`set_config`; caches keyed on it stay valid."""
    return _generation


def set_config(config: EngineConfig) -> None:
    """Install ``config`` for the whole process (drops cached provider choices)."""
    global _config, _generation
    _config = config
    _generation += 1


@contextlib.contextmanager
def override_config(**changes: object) -> Iterator[EngineConfig]:
    """Temporarily replace parts of the config: ``override_config(kernel=KernelConfig(strict=True))``.

    Keyword names are :class:`EngineConfig` fields; a dict value for ``kernel``, ``platform``,
    ``compile`` or ``memory`` replaces only the named fields of that section.
    """
    previous = get_config()
    updates = {}
    for key, value in changes.items():
        if isinstance(value, dict):
            value = dataclasses.replace(getattr(previous, key), **value)
        updates[key] = value
    set_config(dataclasses.replace(previous, **updates))
    try:
        yield get_config()
    finally:
        set_config(previous)


# ---------------------------------------------------------------------------------------
# Paths and secrets for ``fastdit serve`` (read when asked, not cached: a server reads them once)
# ---------------------------------------------------------------------------------------
def user_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """fastdit's folder in the user's data directory: ``$XDG_DATA_HOME/fastdit``, else
    ``~/.local/share/fastdit`` (an unset, empty or relative ``XDG_DATA_HOME`` is ignored, as the
    XDG base directory specification says)."""
    env = os.environ if environ is None else environ
    base = (env.get("XDG_DATA_HOME") or "").strip()
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "fastdit"


def serve_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The ``FASTDIT_API_KEY`` bearer token for ``fastdit serve`` (None when unset or empty)."""
    env = os.environ if environ is None else environ
    return (env.get("FASTDIT_API_KEY") or "").strip() or None

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

The launcher's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``: set by ``torchrun`` or by ``fastdit generate --gpus N``) are
read here too, by :func:`distributed_env`, each time it is called.

Code that wants another configuration builds one and installs it for the whole process with
:func:`set_config`, or for one scope with :func:`override_config`: a ``contextvars`` scope, so
an override applies only to the code that runs inside it (its thread, its asyncio task) and two
threads overriding differently each see their own settings. Nothing reads ``os.environ``
elsewhere.

Configurations are frozen dataclasses compared and hashed by value: the op registry keys its
caches (provider priorities, dispatch plans) on the configuration itself, so equal overrides
share one cache entry and the caches stay bounded however many overrides a process makes.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from fastdit.errors import ConfigError

ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
# the names fastdit.platforms registers (kept here: the config must not import the platforms)
PLATFORM_NAMES = ("rocm", "cuda", "musa", "npu", "xpu", "mps", "cpu")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _names(names: str | tuple[str, ...]) -> tuple[str, ...]:
    """Provider names as a tuple: ``"triton"`` or ``["triton"]`` -> ``("triton",)``."""
    return (names,) if isinstance(names, str) else tuple(names)


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
        # values as tuples of names ("triton" or ["triton"] -> ("triton",)), so the config hashes
        object.__setattr__(self, "op_providers", {
            op: _names(names) for op, names in dict(self.op_providers).items()})
        object.__setattr__(self, "default_providers", _names(self.default_providers))

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
    """torch.compile settings used by the ``compiled`` provider and by model compilation.

    ``dynamic`` is torch.compile's: None (the default) compiles a shape as seen, then once more
    with symbolic sizes for the dimensions that changed (so a process serving many resolutions
    compiles each op about twice); True compiles symbolic sizes from the start; False compiles
    every shape anew (and soon hits torch's recompile limit, which the ``compiled`` provider
    answers with a logged fall-back to the native op for that shape). ``backend`` is the
    torch.compile backend (``"inductor"``; ``"eager"`` traces without generating code).
    """

    enabled: bool = True
    mode: str | None = None
    fullgraph: bool = True
    dynamic: bool | None = None
    backend: str = "inductor"


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
                raise ConfigError(f"FASTDIT_OP_PROVIDERS: cannot parse {item!r} (want op=provider)")
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
    raise ConfigError(f"{name}: expected 1/0/true/false, got {value!r}")


def _parse_int(name: str, value: str | None, default: int, minimum: int | None = None, setting: str = "") -> int:
    if value is None or not value.strip():
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}: {setting or 'the value'} must be an integer >= {minimum}, got {value!r}")
    return number


def _parse_choice(name: str, value: str | None, choices: tuple[str, ...], default: str | None,
                  setting: str) -> str | None:
    """``value`` lower-cased, which must be one of ``choices`` (unset or empty: ``default``)."""
    lowered = (value or "").strip().lower()
    if not lowered:
        return default
    if lowered not in choices:
        raise ConfigError(f"{name}: {setting} must be one of {', '.join(choices)}, got {value!r}")
    return lowered


def config_from_env(environ: Mapping[str, str] | None = None) -> EngineConfig:
    """Build an :class:`EngineConfig` from ``FASTDIT_*`` (and ``TRITON_INTERPRET``) variables."""
    env = os.environ if environ is None else environ
    per_op, default = parse_op_providers(env.get("FASTDIT_OP_PROVIDERS", ""))
    kernel = KernelConfig(
        op_providers=per_op,
        default_providers=default,
        strict=bool(_parse_bool("FASTDIT_STRICT_OPS", env.get("FASTDIT_STRICT_OPS"), False)),
        attention_backend=_parse_choice("FASTDIT_ATTENTION_BACKEND", env.get("FASTDIT_ATTENTION_BACKEND"),
                                        ATTENTION_BACKENDS, "auto", "attention_backend"),
        triton_interpret=bool(_parse_bool("TRITON_INTERPRET", env.get("TRITON_INTERPRET"), False)),
    )
    platform = PlatformConfig(
        platform=_parse_choice("FASTDIT_PLATFORM", env.get("FASTDIT_PLATFORM"), PLATFORM_NAMES, None, "platform"),
        vae_autotune=_parse_bool("FASTDIT_VAE_AUTOTUNE", env.get("FASTDIT_VAE_AUTOTUNE"), None),
    )
    memory = MemoryConfig(ffn_chunk_tokens=_parse_int(
        "FASTDIT_FFN_CHUNK_TOKENS", env.get("FASTDIT_FFN_CHUNK_TOKENS"), MemoryConfig.ffn_chunk_tokens, minimum=0,
        setting="ffn_chunk_tokens"))
    return EngineConfig(kernel=kernel, platform=platform, memory=memory,
                        log_level=env.get("FASTDIT_LOG_LEVEL", "INFO").strip().upper() or "INFO")


@dataclass(frozen=True)
class DistributedEnv:
    """The process's place in a torchrun-style launch (all None when not launched so).

    ``rank``/``world_size``: this process and the number of processes; ``local_rank`` /
    ``local_world_size``: the same on this host (the GPU index is ``local_rank``);
    ``master_addr``/``master_port``: the rendezvous of rank 0.
    """

    rank: int | None = None
    world_size: int | None = None
    local_rank: int | None = None
    local_world_size: int | None = None
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def launched(self) -> bool:
        """True when a launcher set ``RANK`` and ``WORLD_SIZE``."""
        return self.rank is not None and self.world_size is not None


def distributed_env(environ: Mapping[str, str] | None = None) -> DistributedEnv:
    """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` (the variables torchrun sets); absent ones are None. ``LOCAL_RANK`` defaults
    to ``RANK`` and ``LOCAL_WORLD_SIZE`` to ``WORLD_SIZE`` (one host)."""
    env = os.environ if environ is None else environ

    def number(name: str) -> int | None:
        value = env.get(name)
        return None if value is None or not value.strip() else _parse_int(name, value, 0)

    rank, world = number("RANK"), number("WORLD_SIZE")
    local_rank, local_world = number("LOCAL_RANK"), number("LOCAL_WORLD_SIZE")
    return DistributedEnv(rank=rank, world_size=world,
                          local_rank=rank if local_rank is None else local_rank,
                          local_world_size=world if local_world is None else local_world,
                          master_addr=(env.get("MASTER_ADDR") or "").strip() or None,
                          master_port=number("MASTER_PORT"))


def child_environment(updates: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with ``updates`` applied: for the processes fastdit starts
    (the ranks of ``fastdit generate --gpus N``)."""
    return {**os.environ, **updates}


_config: EngineConfig | None = None  # the process-wide configuration (set_config)
_generation = 0
# the configuration of the current scope (override_config), None outside any override
_scoped: contextvars.ContextVar[EngineConfig | None] = contextvars.ContextVar(
    "fastdit_config", default=None)


def get_config() -> EngineConfig:
    """The configuration in effect here: the innermost :func:`override_config` scope's, else the
    process-wide one (built from the environment on first use). A context-variable read: cheap
    enough for every op call."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    global _config
    if _config is None:
        _config = config_from_env()
    return _config


def set_config(config: EngineConfig) -> None:
    """Install ``config`` for the whole process (drops cached provider choices). Code inside an
    :func:`override_config` scope keeps seeing its override."""
    global _config, _generation
    if not isinstance(config, EngineConfig):
        raise TypeError(f"set_config takes an EngineConfig, got {type(config).__name__}")
    _config = config
    _generation += 1


def reset_config() -> None:
    """Forget the process-wide configuration: the next :func:`get_config` reads the environment
    again (tests that change ``FASTDIT_*`` variables use this)."""
    global _config, _generation
    _config = None
    _generation += 1


@contextlib.contextmanager
def override_config(**changes: object) -> Iterator[EngineConfig]:
    """Replace parts of the config for the code inside the ``with`` block, and only there:
    ``override_config(kernel=KernelConfig(strict=True))``.

    Keyword names are :class:`EngineConfig` fields; a dict value for ``kernel``, ``platform``,
    ``compile`` or ``memory`` replaces only the named fields of that section. The override is
    a ``contextvars`` scope: other threads (and asyncio tasks) keep their own configuration,
    overrides nest, and the previous configuration of this scope is restored on exit.
    """
    previous = get_config()
    updates = {}
    for key, value in changes.items():
        if isinstance(value, dict):
            value = dataclasses.replace(getattr(previous, key), **value)
        updates[key] = value
    config = dataclasses.replace(previous, **updates)
    token = _scoped.set(config)
    try:
        yield config
    finally:
        _scoped.reset(token)


@contextlib.contextmanager
def use_config(config: EngineConfig) -> Iterator[EngineConfig]:
    """Install a prebuilt ``config`` for the code inside the ``with`` block (the same
    ``contextvars`` scope as :func:`override_config`, without building a new configuration per
    entry: a model that runs part of its forward under its own settings keeps one object)."""
    if not isinstance(config, EngineConfig):
        raise TypeError(f"use_config takes an EngineConfig, got {type(config).__name__}")
    token = _scoped.set(config)
    try:
        yield config
    finally:
        _scoped.reset(token)


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

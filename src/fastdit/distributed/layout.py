"""The parallel layout: how many ranks split the sequence (Ulysses, Ring), the guidance
branches (CFG) and the VAE decode, and the checks that run before any weights load.

The rank mesh is ``cfg x ring x ulysses`` with Ulysses the fastest-varying coordinate
(neighbouring ranks, which share the fastest links, do the all-to-all)::

    rank = c * (ring * ulysses) + r * ulysses + u
    sequence-parallel rank (within one CFG half) = r * ulysses + u

Rank 0 is the writer: it saves the video and prints the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from fastdit.errors import UserError

#: ``parallel="auto"``: the layout :meth:`ParallelConfig.auto` picks for the processes started
AUTO = "auto"
DEGREES = ("ulysses", "ring", "cfg", "vae")


@dataclass(frozen=True)
class ParallelConfig:
    """Degrees of parallelism of one generation.

    * ``ulysses``: ranks that split the sequence and trade it for heads with an all-to-all
      around each self-attention; must divide the number of attention heads (12 for Wan2.1-1.3B,
      40 for 14B).
    * ``ring``: ranks that split the sequence and pass K/V around a ring (any head count).
    * ``cfg``: 1, or 2 to run the conditional and unconditional guidance branches on two rank
      groups (needs guidance).
    * ``vae``: ranks that decode the video together (split along its height); None: all of them.
    * ``world_size``: the number of processes; None: ``cfg * ring * ulysses``.

    Sequence parallelism spans ``ulysses * ring`` ranks (USP when both are above 1).
    """

    ulysses: int = 1
    ring: int = 1
    cfg: int = 1
    vae: int | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("ulysses", "ring", "cfg"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"parallel layout: {name} must be a whole number >= 1, got {value!r}")
        for name in ("vae", "world_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"parallel layout: {name} must be a whole number >= 1 or None, "
                                f"got {value!r}")
        if self.cfg not in (1, 2):
            raise UserError(f"parallel layout: cfg must be 1 or 2 (two guidance branches), got {self.cfg}")
        if self.world_size is not None and self.product != self.world_size:
            raise UserError(self._product_message(self.world_size))
        if self.vae is not None and self.vae > self.world:
            raise UserError(f"parallel layout: vae={self.vae} ranks, but the world has only "
                            f"{self.world} process(es)")

    # ---- derived sizes ---------------------------------------------------------------
    @property
    def product(self) -> int:
        """``cfg * ring * ulysses``: the ranks the layout uses."""
        return self.cfg * self.ring * self.ulysses

    @property
    def world(self) -> int:
        """The number of processes (``world_size``, or the product of the degrees)."""
        return self.world_size if self.world_size is not None else self.product

    @property
    def sequence(self) -> int:
        """Ranks that split the sequence: ``ulysses * ring``."""
        return self.ulysses * self.ring

    @property
    def vae_ranks(self) -> int:
        """Ranks that decode the video together."""
        return self.world if self.vae is None else self.vae

    @property
    def is_parallel(self) -> bool:
        return self.world > 1

    def describe(self) -> str:
        """``"ulysses 2 x ring 2 x cfg 2 (8 ranks), vae 8"``: for the generation summary."""
        parts = [f"{name} {getattr(self, name)}" for name in ("ulysses", "ring", "cfg")
                 if getattr(self, name) > 1] or ["1 rank"]
        return f"{' x '.join(parts)} ({self.world} ranks), vae {self.vae_ranks}"

    def coordinates(self, rank: int) -> tuple[int, int, int]:
        """``(cfg, ring, ulysses)`` coordinates of a global rank."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} is outside a world of {self.world}")
        sequence = self.sequence
        return rank // sequence, (rank % sequence) // self.ulysses, rank % self.ulysses

    def rank_of(self, cfg: int, ring: int, ulysses: int) -> int:
        """The global rank at mesh coordinates ``(cfg, ring, ulysses)``."""
        return cfg * self.sequence + ring * self.ulysses + ulysses

    @classmethod
    def auto(cls, world_size: int, *, heads: int, guided: bool) -> "ParallelConfig":
        """A default layout for ``world_size`` ranks: CFG 2 when guided and the world is even,
        then as much Ulysses as the heads allow (the largest divisor of both), Ring for the rest."""
        if world_size < 1:
            raise UserError(f"parallel layout: world size must be >= 1, got {world_size}")
        cfg = 2 if guided and world_size % 2 == 0 else 1
        sequence = world_size // cfg
        ulysses = max(d for d in range(1, sequence + 1) if sequence % d == 0 and heads % d == 0)
        return cls(ulysses=ulysses, ring=sequence // ulysses, cfg=cfg, world_size=world_size)

    @classmethod
    def parse(cls, spec: str) -> "ParallelConfig":
        """``"ulysses=2,ring=2,cfg=2,vae=4"`` (any subset, any order; omitted degrees are 1,
        ``vae`` all ranks) -> a ParallelConfig; a clear :class:`UserError` otherwise."""
        values: dict[str, int] = {}
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            name, sep, text = (piece.strip() for piece in item.partition("="))
            name = name.lower()
            if not sep or name not in DEGREES:
                raise UserError(f"parallel layout {spec!r}: expected name=value pairs with names "
                                f"{', '.join(DEGREES)} (e.g. \"ulysses=2,cfg=2\"), got {item!r}")
            if name in values:
                raise UserError(f"parallel layout {spec!r}: {name} given twice")
            try:
                values[name] = int(text)
            except ValueError:
                raise UserError(f"parallel layout {spec!r}: {name} must be a whole number, "
                                f"got {text!r}") from None
        return cls(**values)

    def _product_message(self, world_size: int) -> str:
        return (f"parallel layout: ulysses={self.ulysses} x ring={self.ring} x cfg={self.cfg} = "
                f"{self.product} rank(s), but {world_size} process(es) were started; the degrees "
                f"must multiply to the number of processes")


def check_layout(config: ParallelConfig, *, world_size: int | None = None,
                 heads: int | None = None, guided: bool | None = None,
                 model: str = "the model") -> ParallelConfig:
    """Check ``config`` against the launch and the model before any weights load.

    ``world_size``: the processes started (torchrun's ``WORLD_SIZE`` or ``--gpus``); ``heads``:
    the transformer's ``num_attention_heads`` (from its ``config.json``); ``guided``: whether
    any step runs classifier-free guidance. Raises :class:`fastdit.errors.UserError` with the
    fix in the message; returns the config with ``world_size`` filled in.
    """
    if world_size is not None:
        if config.product != world_size:
            raise UserError(config._product_message(world_size))
        if config.world_size is None:
            config = replace(config, world_size=world_size)
    if heads is not None and heads % config.ulysses:
        allowed = [d for d in range(1, heads + 1) if heads % d == 0]
        raise UserError(f"parallel layout: ulysses={config.ulysses} does not divide the "
                        f"{heads} attention heads of {model}; Ulysses splits the heads, so its "
                        f"degree must be one of {allowed} (use ring for the remaining ranks)")
    if guided is False and config.cfg == 2:
        raise UserError("parallel layout: cfg=2 runs the two classifier-free guidance branches "
                        "on two rank groups, but this generation has no guidance "
                        "(guidance_scale <= 1 or no negative branch); use cfg=1")
    return config


def parallel_option(value: Any) -> "ParallelConfig | str | None":
    """The ``parallel=`` option of :func:`fastdit.load` in its canonical form.

    Accepts None (one process, or ``"auto"`` when launched with several), a
    :class:`ParallelConfig`, a dict of its fields, ``"auto"``, or a spec string
    ``"ulysses=2,cfg=2"`` (:meth:`ParallelConfig.parse`). Returns a ParallelConfig,
    :data:`AUTO` or None; raises :class:`UserError` for anything else.
    """
    if value is None or isinstance(value, ParallelConfig):
        return value
    if isinstance(value, str):
        text = value.strip()
        return AUTO if text.lower() == AUTO else ParallelConfig.parse(text)
    if isinstance(value, Mapping):
        known = {f.name for f in fields(ParallelConfig)}
        unknown = sorted(set(map(str, value)) - known)
        if unknown:
            raise UserError(f"parallel layout: unknown field(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(known))}")
        return ParallelConfig(**value)
    raise UserError(f"parallel must be a ParallelConfig, a dict, \"auto\" or a spec such as "
                    f"\"ulysses=2,cfg=2\", got {type(value).__name__}")

"""One generation's step cache: the step clock, the policy of each expert, the branch states.

How the Wan pipeline uses it (:mod:`fastdit.cache.wiring` builds it)::

    session = CacheSession(config, num_steps, expert_plan=plan, model=name, has_image=...)
    session.prepare(num_blocks, wan_config)              # every expert's policy, settings checked
    expert.guidance = CachedGuidance(expert.guidance, session)   # per expert, same session
    ... stages.denoise(...) ...                          # begin_step(i) comes from the strategy
    result.stats["cache"] = session.finish().to_dict()

``expert_plan[i]`` is the expert that runs step i (all 0 for one transformer). The state of
every (expert, branch) lives here; it is emptied when the plan switches expert, so each expert
starts from a clean state with its own settings (``key_1`` / ``key_2`` in the config).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from fastdit.cache.base import BranchState, Policy, StepInfo
from fastdit.cache.blockcache import BlockCache
from fastdit.cache.calibration import RatioTable, load_ratio_file, model_fingerprint
from fastdit.cache.config import CacheConfig
from fastdit.cache.magcache import MAGCACHE_PRESETS, Calibration, MagCache, published_table, table_name
from fastdit.cache.stats import CacheStats
from fastdit.cache.teacache import TeaCache
from fastdit.errors import CacheError

log = logging.getLogger("fastdit.cache")


def _segments(plan: Sequence[int]) -> list[tuple[int, int, int]]:
    """Per step: (expert, step within its contiguous segment, length of the segment)."""
    out: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(plan) + 1):
        if i == len(plan) or plan[i] != plan[start]:
            out += [(plan[start], j - start, i - start) for j in range(start, i)]
            start = i
    return out


class CacheSession:
    """The step cache of one generation (build a new one per generation)."""

    def __init__(self, config: CacheConfig, num_steps: int, expert_plan: Sequence[int] | None = None,
                 *, model: str | None = None, has_image: bool = False,
                 all_reduce: Callable[[Any], None] | None = None) -> None:
        if not isinstance(config, CacheConfig):
            raise TypeError(f"CacheSession needs a CacheConfig, got {type(config).__name__}")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise CacheError(f"cache: num_steps must be a positive integer, got {num_steps!r}")
        plan = [0] * num_steps if expert_plan is None else [int(e) for e in expert_plan]
        if len(plan) != num_steps or any(e not in (0, 1) for e in plan):
            raise ValueError(f"CacheSession: expert_plan must give expert 0 or 1 for each of the "
                             f"{num_steps} steps, got {list(expert_plan or [])}")
        self.config, self.num_steps, self.plan = config, num_steps, plan
        self.model, self.has_image = model, has_image
        self.all_reduce = all_reduce  # sums a tensor in place over sequence-parallel ranks
        self.stats = CacheStats(config.policy, config.spec())
        self._segments = _segments(plan)
        self._policies: dict[int, Policy] = {}
        self._states: dict[tuple[int, int], BranchState] = {}
        self._step: StepInfo | None = None
        self._table: RatioTable | None = None
        self._calibration: Calibration | None = None
        self._check_steps = True
        self._finished = False

    # ---- the clock -----------------------------------------------------------------------
    def begin_step(self, step: int) -> StepInfo:
        """Call before each denoising step; empties the states when the expert changes."""
        if not 0 <= step < self.num_steps:
            raise ValueError(f"CacheSession.begin_step: step {step} outside 0..{self.num_steps - 1}")
        expert, local, length = self._segments[step]
        if self._step is not None and (self._step.expert != expert or local == 0):
            self._states.clear()
        self._step = StepInfo(step, self.num_steps, expert, local, length)
        return self._step

    def current_step(self, expert: int) -> StepInfo:
        if self._step is None:
            raise RuntimeError("CacheSession: begin_step(i) must be called before each step")
        if self._step.expert != expert:
            raise RuntimeError(f"CacheSession: step {self._step.step} belongs to expert "
                               f"{self._step.expert + 1}, but the model of expert {expert + 1} "
                               f"was called")
        return self._step

    # ---- policies and states -------------------------------------------------------------
    def wrap(self, branch_model: Any, expert: int = 0):
        """The cached model for one expert: same call signature as ``branch_model``."""
        from fastdit.cache.model import CachedBranchModel

        self.policy(expert, branch_model.transformer)  # settle the settings now: errors come early
        return CachedBranchModel(branch_model, self, expert)

    def prepare(self, num_blocks: int, model_config: Any = None, *, check_steps: bool = True) -> None:
        """Build every expert's policy before any weights are loaded, so that bad settings
        (no constants for the model, a ratio file that does not match, n + m too large) fail
        early. ``model_config``: the transformer's WanConfig (for the ratio-file check).
        ``check_steps=False``: the step count is not known yet (a check at load time): a ratio
        file is checked for everything but its step count, and this session is for checking
        only (do not run it)."""
        self._check_steps = check_steps
        for expert in sorted(set(self.plan)):
            self._build(expert, num_blocks, model_config)

    def policy(self, expert: int, transformer: Any) -> Policy:
        if expert not in self._policies:
            self._build(expert, len(transformer.blocks), getattr(transformer, "config", None))
        return self._policies[expert]

    def _build(self, expert: int, num_blocks: int, model_config: Any) -> None:
        if expert in self._policies:
            return
        self._policies[expert] = self._make_policy(expert, num_blocks, model_config)
        self.stats.settings[expert] = self._policies[expert].describe()
        log.debug("cache %s, expert %d: %s", self.config.policy, expert + 1,
                  self.stats.settings[expert])

    def state(self, expert: int, branch: int) -> BranchState:
        key = (expert, branch)
        if key not in self._states:
            self._states[key] = self._policies[expert].new_state(branch)
        return self._states[key]

    @property
    def live_states(self) -> list[tuple[int, int]]:
        """The (expert, branch) pairs that hold state now."""
        return sorted(self._states)

    def finish(self) -> CacheStats:
        """End of the generation: writes the calibration file (magcache:calibrate, once) and
        returns the stats."""
        if self._calibration is not None and not self._finished:
            self._calibration.write()
            log.info("cache magcache: calibration written to %s", self._calibration.path)
        self._finished = True
        self._states.clear()
        return self.stats

    # ---------------------------------------------------------------------------------------
    def _make_policy(self, expert: int, num_blocks: int, model_config: Any) -> Policy:
        config, name = self.config, self.config.policy
        if name == "teacache":
            return TeaCache(config.resolve(expert, {}), self.model)
        if name in ("fbcache", "dbcache"):
            return BlockCache(name, config.resolve(expert, {}), num_blocks)
        model = config.get("model") or self.model
        self._magcache_table(model, model_fingerprint(model_config))
        preset = MAGCACHE_PRESETS.get(model, {})
        return MagCache(config.resolve(expert, preset), self._table, expert, self._calibration, model)

    def _magcache_table(self, model: str | None, fingerprint: str | None) -> None:
        if self._table is not None or self._calibration is not None:
            return
        path = self.config.get("calibrate")
        if path is not None:
            self._calibration = Calibration(path, list(self.plan), model, fingerprint)
        elif self.config.get("table") is not None:
            steps = self.num_steps if self._check_steps else None
            self._table = load_ratio_file(self.config.get("table"), num_steps=steps,
                                          model=model, fingerprint=fingerprint)
        elif model is None:
            raise CacheError("cache magcache: this model is not one with a published ratio table; "
                            "pass model=NAME, or record a table with magcache:calibrate=FILE and "
                            "use magcache:table=FILE")
        else:
            self._table = published_table(table_name(model, self.has_image), self.num_steps)


class CachedGuidance:
    """A guidance strategy behind a step cache: ``strategy(model, x, t, step)`` as before, but
    it starts the session's step and hands the strategy the cached model of the expert that
    runs the step (``model`` is that expert's plain ``BranchModel``). After the last step it
    calls ``session.finish()``. This is the only change the denoise loop needs."""

    def __init__(self, strategy: Callable[..., Any], session: CacheSession) -> None:
        self.strategy, self.session = strategy, session

    def __repr__(self) -> str:
        return f"CachedGuidance({self.strategy!r}, cache={self.session.config.spec()!r})"

    def __call__(self, model: Any, x: Any, t: Any, step: int) -> Any:
        info = self.session.begin_step(step)
        noise = self.strategy(self.session.wrap(model, expert=info.expert), x, t, step)
        if info.is_last:
            self.session.finish()
        return noise

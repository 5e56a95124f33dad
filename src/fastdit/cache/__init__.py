"""Step caching for the Wan denoise loop: TeaCache, MagCache, first-block cache and DBCache.

``CacheConfig.parse("teacache:threshold=0.08")`` names a policy and its settings;
``CacheSession(config, num_steps, expert_plan)`` is one generation's cache; ``session.wrap(
branch_model, expert)`` gives a model with ``BranchModel``'s call signature that reuses cached
residuals; ``CachedGuidance(strategy, session)`` wires it into a guidance strategy. The pipeline
side (which model a folder is, checks before loading, one session per generation) is in
:mod:`fastdit.cache.wiring`. See docs/caching.md.

The names below are imported on first use: ``fastdit.cache.config`` (the option parsing, used
to build the CLI's help) does not import torch.
"""

from __future__ import annotations

_EXPORTS = {
    "KNOBS": "config", "POLICY_NAMES": "config", "CacheConfig": "config", "as_cache_config": "config",
    "policy_help": "config", "CachedBranchModel": "model", "identify_model": "models",
    "CachedGuidance": "session", "CacheSession": "session", "CacheStats": "stats",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"fastdit.cache.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fastdit.cache' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)

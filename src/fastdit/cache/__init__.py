"""Step caching for the Wan denoise loop: TeaCache, MagCache, first-block cache and DBCache.

``CacheConfig.parse("teacache:threshold=0.08")`` names a policy and its settings;
``CacheSession(config, num_steps, expert_plan)`` is one generation's cache; ``session.wrap(
branch_model, expert)`` gives a model with ``BranchModel``'s call signature that reuses cached
residuals; ``CachedGuidance(strategy, session)`` wires it into a guidance strategy.
``GuidanceUntil`` and ``CFGZeroStar`` are guidance shortcuts (not caches). See docs/caching.md.
"""

from fastdit.cache.config import KNOBS, POLICY_NAMES, CacheConfig, as_cache_config
from fastdit.cache.guidance import CFGZeroStar, GuidanceUntil
from fastdit.cache.model import CachedBranchModel
from fastdit.cache.models import identify_model
from fastdit.cache.session import CachedGuidance, CacheSession
from fastdit.cache.stats import CacheStats

__all__ = ["KNOBS", "POLICY_NAMES", "CacheConfig", "CacheSession", "CacheStats", "CachedBranchModel",
           "CachedGuidance", "CFGZeroStar", "GuidanceUntil", "as_cache_config", "identify_model"]

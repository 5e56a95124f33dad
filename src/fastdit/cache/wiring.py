"""The step cache as the Wan pipeline uses it: which published model a folder is, the checks
that run before anything heavy, and one :class:`CacheSession` per generation.

* :func:`resolve_cache` (from ``resolve_request``): the request's ``cache`` (None: the
  pipeline's default from ``load(..., cache=...)``; ``"none"``: off) as a :class:`CacheConfig`,
  checked against the model folder: the policy's constants exist for the model, ``n + m`` fit
  in its blocks, a ratio file matches it and the step count.
* :func:`check_cache` (from ``load``): the same checks before any weights are read, for the
  folder's default step count and size (a ratio file's step count is checked per request).
* :func:`new_session`: the generation's session, with the real expert plan.

The model name for the published constants is ``spec.name`` when it is a known model, else
what the architecture says (:func:`~fastdit.cache.models.identify_model`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from fastdit.cache.config import CacheConfig, as_cache_config
from fastdit.cache.models import identify_model
from fastdit.cache.session import CacheSession
from fastdit.errors import ModelFolderError

log = logging.getLogger("fastdit.cache")


def wan_config_of(spec: Any):
    """The folder's transformer architecture (a :class:`WanConfig`)."""
    from fastdit.models.wan.configs import WanConfig

    try:
        return WanConfig.from_diffusers_config(spec.transformer_config)
    except (TypeError, ValueError) as exc:
        raise ModelFolderError(f"{spec.root}/transformer/config.json: {exc}") from None


def model_name(spec: Any, wan_config: Any, *, height: int | None = None,
               width: int | None = None) -> str | None:
    """The published model whose constants apply: ``spec.name`` if known, else by architecture."""
    from fastdit.pipelines.spec import KNOWN_MODELS

    known = spec.name if spec.name in KNOWN_MODELS else None
    return identify_model(known, wan_config, two_experts=spec.two_experts, height=height, width=width)


def _check_plan(num_steps: int, two_experts: bool) -> list[int]:
    """A plan with every expert in it, for checks (the real plan needs the scheduler)."""
    if not two_experts or num_steps < 2:
        return [0] * num_steps
    return [0] * (num_steps - num_steps // 2) + [1] * (num_steps // 2)


def check_cache(config: CacheConfig, spec: Any, *, num_steps: int | None = None,
                height: int | None = None, width: int | None = None, has_image: bool = False) -> None:
    """Raise the :class:`~fastdit.errors.CacheError` that running ``config`` on this folder would
    raise, without loading weights. ``num_steps=None``: not known yet (a ratio file's step
    count is then not checked; the folder's default step count stands in for the rest)."""
    wan = wan_config_of(spec)
    d = spec.defaults
    steps = num_steps if num_steps is not None else d.num_inference_steps
    name = model_name(spec, wan, height=height or d.height, width=width or d.width)
    session = CacheSession(config, steps, _check_plan(steps, spec.two_experts), model=name,
                           has_image=has_image)
    session.prepare(wan.num_layers, wan, check_steps=num_steps is not None)


def resolve_cache(value: Any, default: CacheConfig | None, spec: Any, *, num_steps: int, height: int,
                  width: int, has_image: bool) -> CacheConfig | None:
    """The cache a request runs with (checked): ``value`` None takes ``default``; ``"none"`` is off."""
    config = default if value is None else as_cache_config(value)
    if config is not None:
        check_cache(config, spec, num_steps=num_steps, height=height, width=width, has_image=has_image)
    return config


def new_session(config: CacheConfig, spec: Any, transformer: Any, plan: Sequence[int], *,
                height: int, width: int, has_image: bool) -> CacheSession:
    """One generation's session for ``plan`` (the expert of each step), its policies built."""
    name = model_name(spec, transformer.config, height=height, width=width)
    session = CacheSession(config, len(plan), list(plan), model=name, has_image=has_image)
    session.prepare(len(transformer.blocks), transformer.config)
    model = f" (model {name}{'' if name == spec.name else ', by its architecture'})" if name else ""
    for expert, settings in sorted(session.stats.settings.items()):
        log.info("cache %s%s%s: %s", config.policy, model,
                 f", expert {expert + 1}" if spec.two_experts else "", settings)
    return session

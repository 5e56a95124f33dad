"""Guidance shortcuts (separate options, not cache policies), as guidance strategies.

A strategy is called once per step as ``strategy(model, x, t, step) -> noise`` with ``model`` a
``BranchModel`` (branch 0 the prompt, branch 1 the negative prompt): the seam of
``fastdit.pipelines.guidance`` (``NoGuidance``, ``CFG``).

* :class:`GuidanceUntil`: classifier-free guidance for the first ``until`` fraction of the
  steps, then the prompt branch alone (half the forwards on the rest).
* :class:`CFGZeroStar`: CFG-Zero* (Fan et al. 2025, arXiv:2503.18886; WeichenFan/CFG-Zero-star
  ``models/wan/wan_pipeline.py``, commit 3162be1fba5dd0129ac8423ad6919d928f420a8d): the first
  steps predict zero velocity (zero-init; the published pipeline still runs the model and
  multiplies by 0, here the forward is skipped), the others use the optimised scale
  ``alpha = <v_c, v_u> / (||v_u||^2 + 1e-8)`` per sample:
  ``v = alpha v_u + g (v_c - alpha v_u)``.
"""

from __future__ import annotations

from typing import Any

import torch

from fastdit.errors import UserError

MODES = ("batched", "sequential")


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def optimized_scale(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s ``alpha = <v_c, v_u> / (||v_u||^2 + 1e-8)`` per sample, in at least fp32,
    shaped ``(B, 1, ..., 1)`` to broadcast over ``cond`` ``(B, ...)``."""
    c, u = _wide(cond).flatten(1), _wide(uncond).flatten(1)  # (B, N)
    alpha = (c * u).sum(dim=1) / (u.square().sum(dim=1) + 1e-8)  # (B,)
    return alpha.view(-1, *([1] * (cond.dim() - 1)))


def _both(model: Any, x: torch.Tensor, t: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    if mode == "batched":
        cond, uncond = model(x, t, [0, 1])
    else:
        (cond,), (uncond,) = model(x, t, [0]), model(x, t, [1])
    return cond, uncond


def _check(scale: float, mode: str, num_steps: int) -> None:
    if mode not in MODES:
        raise UserError(f"guidance mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise UserError(f"guidance: num_steps must be a positive integer, got {num_steps!r}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise UserError(f"guidance scale must be a number, got {scale!r}")


class GuidanceUntil:
    """CFG on the steps ``step < until * num_steps``, the prompt branch alone after."""

    def __init__(self, scale: float, until: float, num_steps: int, mode: str = "batched") -> None:
        _check(scale, mode, num_steps)
        if not isinstance(until, (int, float)) or isinstance(until, bool) or not 0.0 <= until <= 1.0:
            raise UserError(f"guidance_until must be a fraction of the steps in [0, 1], got {until!r}")
        self.scale, self.until, self.num_steps, self.mode = float(scale), float(until), num_steps, mode

    def guided(self, step: int) -> bool:
        return step < self.until * self.num_steps

    def __call__(self, model: Any, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        if not self.guided(step):
            return model(x, t, [0])[0]
        return cfg(*_both(model, x, t, self.mode), self.scale)


class CFGZeroStar:
    """CFG-Zero*: zero velocity on the first ``zero_init_steps`` steps (no forward), then CFG
    with the optimised scale (``optimized=False``: plain CFG). The published ``zero_steps=z``
    (steps ``i <= z`` zeroed) is ``zero_init_steps=z + 1``."""

    def __init__(self, scale: float, num_steps: int, zero_init_steps: int = 1, optimized: bool = True,
                 mode: str = "batched") -> None:
        _check(scale, mode, num_steps)
        if not isinstance(zero_init_steps, int) or not 0 <= zero_init_steps <= num_steps:
            raise UserError(f"zero_init_steps must be an integer in 0..{num_steps}, got "
                            f"{zero_init_steps!r}")
        self.scale, self.num_steps, self.mode = float(scale), num_steps, mode
        self.zero_init_steps, self.optimized = zero_init_steps, bool(optimized)

    def __call__(self, model: Any, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        if step < self.zero_init_steps:
            channels = getattr(getattr(model.transformer, "config", None), "out_channels", x.shape[1])
            return x.new_zeros(x.shape[0], channels, *x.shape[2:])
        cond, uncond = _both(model, x, t, self.mode)
        if not self.optimized:
            return cfg(cond, uncond, self.scale)
        alpha = optimized_scale(cond, uncond)
        scaled = _wide(uncond) * alpha
        return (scaled + self.scale * (_wide(cond) - scaled)).to(cond.dtype)


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))

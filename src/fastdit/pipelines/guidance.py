"""Guidance as a strategy, and the model as the denoise loop sees it.

:class:`BranchModel` is a transformer plus the conditioning of each guidance branch (branch 0:
the prompt; branch 1: the negative prompt). ``model(x, t, which)`` runs the branches named in
``which`` as ONE batch and returns one noise prediction per branch. A strategy turns those into
the step's noise prediction:

* :class:`NoGuidance`: ``v = model(x, t, [0])``;
* :class:`CFG`: ``v = v_u + g (v_c - v_u)`` with the two branches batched (one forward of batch
  2, the default) or sequential (two forwards of batch 1: less activation memory);
* guidance shortcuts (not caches; they change the output, so they are opt-in):
  :class:`GuidanceUntil` (guidance for the first steps only, the prompt branch alone after) and
  :class:`CFGZeroStar` (zero-init of the first steps, optimised guidance scale).

A step cache wraps a ``BranchModel`` with the same call signature (it keeps its state per
branch); CFG-parallel runs the branches on two rank groups. Neither needs to change the loop.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from fastdit.errors import UserError

GUIDANCE_MODES = ("batched", "sequential")


class BranchModel:
    """``transformer`` with per-branch text embeddings ``texts[i] (B, S, D)`` and the image
    tokens ``image`` (shared by every branch, or None)."""

    def __init__(self, transformer, texts: Sequence[torch.Tensor], image: torch.Tensor | None = None):
        self.transformer = transformer
        self.texts = list(texts)
        self.image = image
        self._text_batches: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def num_branches(self) -> int:
        return len(self.texts)

    def inputs(self, x: torch.Tensor, t: torch.Tensor, which: Sequence[int]):
        """``(latents, timestep, text, image)`` for the branches ``which``, batched in that order:
        ``x (B, C, F, H, W) -> (n B, C, F, H, W)``, ``t (B[, T]) -> (n B[, T])``."""
        which = tuple(which)
        n = len(which)
        if n == 0 or any(not 0 <= i < self.num_branches for i in which):
            raise ValueError(f"BranchModel: branches {which} not in 0..{self.num_branches - 1}")
        text = self._text_batches.get(which)
        if text is None:  # built once per generation and branch set
            text = self.texts[which[0]] if n == 1 else torch.cat([self.texts[i] for i in which])
            self._text_batches[which] = text
        image = self.image
        if n > 1:
            x, t = torch.cat([x] * n), torch.cat([t] * n)
            image = None if image is None else torch.cat([image] * n)
        return x, t, text, image

    def __call__(self, x: torch.Tensor, t: torch.Tensor, which: Sequence[int]) -> list[torch.Tensor]:
        out = self.transformer(*self.inputs(x, t, which))
        return list(out.chunk(len(which))) if len(which) > 1 else [out]


class NoGuidance:
    """The prompt alone: ``v = model(x, t, [0])``."""

    branches = (0,)

    def __call__(self, model, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        return model(x, t, (0,))[0]

    def __repr__(self) -> str:
        return "NoGuidance()"


class CFG:
    """Classifier-free guidance: ``v = v_u + scale * (v_c - v_u)`` (diffusers' formula)."""

    branches = (0, 1)

    def __init__(self, scale: float, mode: str = "batched") -> None:
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance mode must be one of {GUIDANCE_MODES}, got {mode!r}")
        self.scale, self.mode = float(scale), mode

    def __call__(self, model, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        return combine_cfg(*_both(model, x, t, self.mode), self.scale)

    def __repr__(self) -> str:
        return f"CFG(scale={self.scale}, mode={self.mode!r})"


def combine_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``, in that order of operations (as diffusers)."""
    return uncond + scale * (cond - uncond)


# ---------------------------------------------------------------------------------------
# Guidance shortcuts (issue 12): separate options, not cache policies
# ---------------------------------------------------------------------------------------
def _both(model, x: torch.Tensor, t: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    if mode == "batched":
        cond, uncond = model(x, t, (0, 1))
    else:
        (cond,), (uncond,) = model(x, t, (0,)), model(x, t, (1,))
    return cond, uncond


def _check_shortcut(scale: Any, mode: str, num_steps: Any) -> None:
    if mode not in GUIDANCE_MODES:
        raise UserError(f"guidance mode must be one of {', '.join(GUIDANCE_MODES)}, got {mode!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise UserError(f"guidance: num_steps must be a positive integer, got {num_steps!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise UserError(f"guidance scale must be a number, got {scale!r}")


class GuidanceUntil:
    """Guidance on the steps ``step < until * num_steps``, the prompt branch alone after
    (``until=0.8``: the last 20% of the steps run one forward of batch 1).

    ``guided``: the strategy of the guided steps (default ``CFG(scale, mode)``; e.g. a
    :class:`CFGZeroStar`). ``step`` is the global step index (over both Wan2.2 experts)."""

    def __init__(self, scale: float, until: float, num_steps: int, mode: str = "batched",
                 guided: Any = None) -> None:
        _check_shortcut(scale, mode, num_steps)
        if isinstance(until, bool) or not isinstance(until, (int, float)) or not 0.0 <= until <= 1.0:
            raise UserError(f"guidance_until must be a fraction of the steps in [0, 1], got {until!r}")
        self.scale, self.until, self.num_steps, self.mode = float(scale), float(until), num_steps, mode
        self.inner = guided if guided is not None else CFG(scale, mode)

    def guided(self, step: int) -> bool:
        return step < self.until * self.num_steps

    def __call__(self, model, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        if not self.guided(step):
            return model(x, t, (0,))[0]
        return self.inner(model, x, t, step)

    def __repr__(self) -> str:
        return f"GuidanceUntil(until={self.until:g}, num_steps={self.num_steps}, guided={self.inner!r})"


def optimized_scale(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s ``alpha = <v_c, v_u> / (||v_u||^2 + 1e-8)`` per sample, in at least fp32,
    shaped ``(B, 1, ..., 1)`` to broadcast over ``cond (B, ...)``."""
    c, u = _wide(cond).flatten(1), _wide(uncond).flatten(1)  # (B, N)
    alpha = (c * u).sum(dim=1) / (u.square().sum(dim=1) + 1e-8)  # (B,)
    return alpha.view(-1, *([1] * (cond.dim() - 1)))


class CFGZeroStar:
    """CFG-Zero* (Fan et al. 2025, arXiv:2503.18886; WeichenFan/CFG-Zero-star
    ``models/wan/wan_pipeline.py``, commit 3162be1fba5dd0129ac8423ad6919d928f420a8d).

    Steps ``step < zero_init_steps`` predict zero velocity and run no forward (the published
    pipeline runs the model and multiplies by 0; its ``zero_steps=z`` zeroes ``z + 1`` steps);
    the others use the optimised scale ``alpha`` (:func:`optimized_scale`):
    ``v = alpha v_u + g (v_c - alpha v_u)`` (``optimized=False``: plain CFG)."""

    def __init__(self, scale: float, num_steps: int, zero_init_steps: int = 1, optimized: bool = True,
                 mode: str = "batched") -> None:
        _check_shortcut(scale, mode, num_steps)
        if isinstance(zero_init_steps, bool) or not isinstance(zero_init_steps, int) \
                or not 0 <= zero_init_steps <= num_steps:
            raise UserError(f"zero_init_steps must be an integer in 0..{num_steps}, got "
                            f"{zero_init_steps!r}")
        self.scale, self.num_steps, self.mode = float(scale), num_steps, mode
        self.zero_init_steps, self.optimized = zero_init_steps, bool(optimized)

    def __call__(self, model, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        if step < self.zero_init_steps:
            channels = getattr(getattr(model.transformer, "config", None), "out_channels", x.shape[1])
            return x.new_zeros(x.shape[0], channels, *x.shape[2:])  # (B, C_out, T, H, W)
        cond, uncond = _both(model, x, t, self.mode)
        if not self.optimized:
            return combine_cfg(cond, uncond, self.scale)
        scaled = _wide(uncond) * optimized_scale(cond, uncond)
        return (scaled + self.scale * (_wide(cond) - scaled)).to(cond.dtype)

    def __repr__(self) -> str:
        return (f"CFGZeroStar(scale={self.scale}, zero_init_steps={self.zero_init_steps}, "
                f"optimized={self.optimized}, mode={self.mode!r})")


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))

"""Guidance as a strategy, and the model as the denoise loop sees it.

:class:`BranchModel` is a transformer plus the conditioning of each guidance branch (branch 0:
the prompt; branch 1: the negative prompt). ``model(x, t, which)`` runs the branches named in
``which`` as ONE batch and returns one noise prediction per branch. A strategy turns those into
the step's noise prediction:

* :class:`NoGuidance`: ``v = model(x, t, [0])``;
* :class:`CFG`: ``v = v_u + g (v_c - v_u)`` with the two branches batched (one forward of batch
  2, the default) or sequential (two forwards of batch 1: less activation memory).

A step cache wraps a ``BranchModel`` with the same call signature (it keeps its state per
branch); CFG-parallel runs the branches on two rank groups. Neither needs to change the loop.
"""

from __future__ import annotations

from typing import Sequence

import torch

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
        if self.mode == "batched":
            cond, uncond = model(x, t, (0, 1))
        else:
            cond, = model(x, t, (0,))
            uncond, = model(x, t, (1,))
        return combine_cfg(cond, uncond, self.scale)

    def __repr__(self) -> str:
        return f"CFG(scale={self.scale}, mode={self.mode!r})"


def combine_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``, in that order of operations (as diffusers)."""
    return uncond + scale * (cond - uncond)

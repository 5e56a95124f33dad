"""3D rotary position embedding (Wan): the head dimension is split into frame, height and
width parts, each rotated by its own axis position.

Frequencies are computed in fp64 and their cos/sin stored in fp32, as the official Wan code
and diffusers do; the tables are built once per (F, H, W) grid and device and cached.
"""

from __future__ import annotations

import torch
from torch import nn


def axis_frequencies(dim: int, length: int, theta: float) -> torch.Tensor:
    """Angles ``pos / theta**(2i/dim)`` for ``pos < length``, ``i < dim/2``: ``(length, dim/2)`` fp64."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # (dim/2,)
    return torch.outer(torch.arange(length), inv_freq)  # (length, dim/2)


class RotaryEmbedding3D(nn.Module):
    """cos/sin tables ``(F*H*W, head_dim/2)`` in fp32 for tokens laid out frame-major.

    The head dimension ``D`` is split as ``h = w = 2 * (D // 6)``, ``t = D - h - w``; pair ``i``
    of the frame part turns by ``f * theta**(-2i/t)``, and likewise for height and width. The
    tables are meant for :func:`fastdit.ops.rope_qk_` with ``interleaved=True``.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, max_cached: int = 8) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding3D: head_dim must be even, got {head_dim}")
        hw = 2 * (head_dim // 6)
        self.axes_dims = (head_dim - 2 * hw, hw, hw)
        self.head_dim, self.theta, self.max_cached = head_dim, theta, max_cached
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, ``(F*H*W, D/2)`` fp32 on the CPU."""
        grid = (frames, height, width)
        parts = []
        for axis, (length, dim) in enumerate(zip(grid, self.axes_dims)):
            angles = axis_frequencies(dim, length, self.theta)  # (n, dim/2)
            shape = [1, 1, 1, dim // 2]
            shape[axis] = length
            parts.append(angles.view(shape).expand(*grid, dim // 2))
        angles = torch.cat(parts, dim=-1).reshape(frames * height * width, self.head_dim // 2)
        return angles.cos().float(), angles.sin().float()  # (L, D/2) each

    def forward(self, frames: int, height: int, width: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (frames, height, width, torch.device(device))
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            cos, sin = self.tables(frames, height, width)
            cached = self._cache[key] = (cos.to(device), sin.to(device))
        return cached

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, axes_dims={self.axes_dims}, theta={self.theta}"

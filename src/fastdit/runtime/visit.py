"""A module's visit to the device: its tensors there for a while, its host tensors kept.

Inference never changes a model's parameters or buffers, so a module that goes back to the
host after running on the device needs no copy back: each tensor gets its host data again.
That saves the device-to-host copy of every visit (the UMT5-XXL encoder: 11.4 GB a video) and
keeps host tensors what they were at load; a tensor memory-mapped from a safetensors file stays
mapped, so it is file-backed memory the kernel can reclaim, not anonymous memory.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def visiting(module: nn.Module, device: torch.device | str,
             move: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[nn.Module]:
    """``module`` with every parameter and buffer on ``device`` inside the block; after it
    (also when the block raises) each tensor holds its previous data again, the same storage,
    and the device copies are dropped. ``move(tensor) -> tensor`` replaces the default copy
    (``tensor.to(device, non_blocking=tensor.is_pinned())``). The block must not change the
    module's tensors in place: those changes would stay on the device copy.
    """
    if move is None:
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device, non_blocking=tensor.is_pinned())
    tensors = list(itertools.chain(module.parameters(), module.buffers()))
    host = [t.data for t in tensors]
    try:
        for tensor, data in zip(tensors, host):
            tensor.data = move(data)
        yield module
    finally:
        for tensor, data in zip(tensors, host):
            tensor.data = data

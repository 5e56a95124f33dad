"""The host store: every block's tensors in host memory, one flat byte range per block.

The store is where the blocks live between uses (the master copy): pinned (page-locked) when
the platform can pin, so that a block's copy to the device is one asynchronous DMA transfer,
plain host memory otherwise (the CPU, tests). torch's pinned allocator rounds every request up
to a power of two, so blocks are packed several to a chunk whose size is close to one
(a 0.70 GB 14B block alone would take 1.07 GB; three take 2.11 of 2.15 GB).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from fastdit.layers import Linear
from fastdit.runtime.fp8 import block_linears, quantize_per_channel
from fastdit.runtime.layout import BlockLayout

log = logging.getLogger("fastdit.runtime")

#: The largest pinned chunk requested at once (bytes).
MAX_PINNED_CHUNK = 1 << 33


def _pow2ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def pack_counts(block_bytes: int, num_blocks: int, pinned: bool) -> list[int]:
    """How many blocks go in each host allocation: one each for plain memory (exact sizes);
    for pinned memory, the count whose total is closest below a power of two, greedily."""
    if not pinned:
        return [1] * num_blocks
    counts, left = [], num_blocks
    while left:
        limit = max(1, min(left, MAX_PINNED_CHUNK // max(block_bytes, 1)))
        best = max(range(1, limit + 1),
                   key=lambda k: (k * block_bytes / _pow2ceil(k * block_bytes), k))
        counts.append(best)
        left -= best
    return counts


def storage_specs(block: nn.Module, dtype_of: Callable[[str], torch.dtype], weights: str,
                  fp8_dtype: torch.dtype) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """``(name, shape, storage dtype)`` of every tensor a block stores, in layout order.

    ``weights="dense"``: each tensor in ``dtype_of(name)`` (a Linear that already holds fp8
    weights keeps them, with its ``weight_scale``); ``"fp8"``: every Linear weight in
    ``fp8_dtype`` followed by its ``weight_scale [N]`` fp32 (after the Linear's bias).
    """
    quantized = {f"{name}.weight" if name else "weight" for name, _ in block_linears(block)} \
        if weights == "fp8" else set()
    specs = []
    for prefix, module in block.named_modules():
        def full(leaf: str) -> str:
            return f"{prefix}.{leaf}" if prefix else leaf

        for leaf, param in module._parameters.items():
            if param is not None:
                name = full(leaf)
                if name in quantized and not _is_fp8(param.dtype):
                    specs.append((name, tuple(param.shape), fp8_dtype))
                else:
                    specs.append((name, tuple(param.shape), dtype_of(name)))
        for leaf, buf in module._buffers.items():
            if buf is not None:
                specs.append((full(leaf), tuple(buf.shape), buf.dtype))
        if (isinstance(module, Linear) and full("weight") in quantized
                and module._buffers.get("weight_scale") is None):
            specs.append((full("weight_scale"), (module.out_features,), torch.float32))
    return specs


def _is_fp8(dtype: torch.dtype) -> bool:
    return dtype.itemsize == 1 and dtype.is_floating_point


class HostStore:
    """``num_blocks`` host buffers of ``layout.nbytes`` bytes and their typed views.

    ``store.blocks[i]``: block i's bytes (``uint8 [layout.nbytes]``); ``store.views[i][j]``:
    its tensor ``layout.tensors[j]``. ``nbytes`` counts what was allocated.
    """

    def __init__(self, layout: BlockLayout, num_blocks: int, pinned: bool) -> None:
        self.layout, self.pinned = layout, pinned
        self.chunks: list[torch.Tensor] = []
        self.blocks: list[torch.Tensor] = []
        size = layout.nbytes
        for count in pack_counts(size, num_blocks, pinned):
            chunk = torch.empty(count * size, dtype=torch.uint8, pin_memory=pinned)
            self.chunks.append(chunk)
            self.blocks.extend(chunk[k * size:(k + 1) * size] for k in range(count))
        self.views = [layout.views(b) for b in self.blocks]
        log.info("host store: %d blocks of %s in %d %s allocation(s), %.2f GB", num_blocks,
                 layout.describe(), len(self.chunks), "pinned" if pinned else "plain", self.nbytes / 1e9)

    @property
    def nbytes(self) -> int:
        """Bytes held (pinned chunks as requested; the pinned allocator may round them up)."""
        return sum(c.numel() for c in self.chunks)

    @property
    def allocated_bytes(self) -> int:
        """Bytes the allocator actually holds (pinned requests rounded up to a power of two)."""
        return sum(_pow2ceil(c.numel()) if self.pinned else c.numel() for c in self.chunks)

    def view(self, index: int, name: str) -> torch.Tensor:
        return self.views[index][self.layout.index(name)]

    @torch.no_grad()
    def fill(self, index: int, source: Callable[[str], torch.Tensor],
             work_device: torch.device | None = None) -> None:
        """Write block ``index`` from ``source(name) -> tensor`` (any device and float dtype).

        Tensors stored in fp8 whose source is not fp8 are quantised per output channel
        (:func:`~fastdit.runtime.fp8.quantize_per_channel`) on ``work_device`` (default: where
        the source is), which also fills the following ``weight_scale`` entry.
        """
        slots, views = self.layout.tensors, self.views[index]
        done: set[str] = set()
        for slot, view in zip(slots, views):
            if slot.name in done:
                continue
            value = source(slot.name)
            if _is_fp8(slot.dtype) and not _is_fp8(value.dtype):
                device = work_device if work_device is not None else value.device
                q, scale = quantize_per_channel(value.to(device), slot.dtype)
                view.copy_(q)
                scale_name = slot.name[: -len("weight")] + "weight_scale"
                self.view(index, scale_name).copy_(scale)
                done.add(scale_name)
            else:
                view.copy_(value)


def quantized_names(layout: BlockLayout) -> list[tuple[int, int]]:
    """``(weight index, scale index)`` in ``layout`` for every fp8 weight with a scale."""
    pairs = []
    for i, slot in enumerate(layout.tensors):
        if _is_fp8(slot.dtype) and slot.name.endswith("weight"):
            pairs.append((i, layout.index(slot.name[: -len("weight")] + "weight_scale")))
    return pairs

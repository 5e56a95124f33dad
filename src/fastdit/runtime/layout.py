"""The byte layout of one transformer block: every tensor of the block at an aligned offset in
one flat ``uint8`` buffer.

All Wan blocks of a model have the same parameters (names, shapes, dtypes), so one
:class:`BlockLayout` describes every block; a host copy of block ``i`` and a device pool slot
are both buffers of ``layout.nbytes`` bytes, and the block's tensors are typed views into them::

    views = layout.views(buffer)      # one view per layout.tensors entry, no new memory
    views[j].shape == layout.tensors[j].shape, views[j].dtype == layout.tensors[j].dtype

so moving a whole block is ONE copy of ``nbytes`` bytes, and pointing a block at a buffer is
setting each tensor's ``.data`` to its view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

#: Every tensor starts at a multiple of this many bytes (vector loads, cuBLAS alignment).
ALIGN = 256


def align(nbytes: int, to: int = ALIGN) -> int:
    """``nbytes`` rounded up to a multiple of ``to``."""
    return -(-nbytes // to) * to


@dataclass(frozen=True)
class TensorSlot:
    """One tensor of a block: its dotted name inside the block, shape, dtype and byte range."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class BlockLayout:
    """The tensors of one block, in order, at aligned offsets; ``nbytes`` is the buffer size."""

    tensors: tuple[TensorSlot, ...]
    nbytes: int

    @classmethod
    def build(cls, specs: Iterable[tuple[str, Sequence[int], torch.dtype]]) -> "BlockLayout":
        """A layout for ``(name, shape, dtype)`` entries, packed in the order given."""
        tensors, offset = [], 0
        for name, shape, dtype in specs:
            shape = tuple(int(s) for s in shape)
            nbytes = math.prod(shape) * dtype.itemsize
            tensors.append(TensorSlot(name, shape, dtype, offset, nbytes))
            offset = align(offset + nbytes)
        return cls(tuple(tensors), max(offset, ALIGN))

    @classmethod
    def of_module(cls, block: nn.Module) -> "BlockLayout":
        """The layout of ``block``'s parameters and (non-None) buffers as they are now."""
        return cls.build((name, t.shape, t.dtype) for name, t in block_tensors(block))

    def index(self, name: str) -> int:
        for i, slot in enumerate(self.tensors):
            if slot.name == name:
                return i
        raise KeyError(name)

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Typed views of ``buffer`` (``uint8 [nbytes]``), one per tensor; no memory is allocated."""
        if buffer.dtype != torch.uint8 or buffer.dim() != 1 or buffer.numel() < self.nbytes:
            raise ValueError(f"BlockLayout.views: need a uint8 buffer of {self.nbytes} bytes, got "
                             f"{buffer.dtype} {list(buffer.shape)}")
        return [buffer[s.offset:s.offset + s.nbytes].view(s.dtype).view(s.shape) for s in self.tensors]

    def describe(self) -> str:
        return f"{len(self.tensors)} tensors, {self.nbytes / 1e6:.1f} MB"


def block_tensors(block: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every parameter and non-None buffer of ``block``, in a fixed order
    (module order, parameters before buffers)."""
    out = []
    for prefix, module in block.named_modules():
        for leaf, param in module._parameters.items():
            if param is not None:
                out.append((f"{prefix}.{leaf}" if prefix else leaf, param))
        for leaf, buf in module._buffers.items():
            if buf is not None:
                out.append((f"{prefix}.{leaf}" if prefix else leaf, buf))
    return out


def resolve(block: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding tensor ``name`` of ``block`` and the tensor's attribute name."""
    module_name, _, leaf = name.rpartition(".")
    return (block.get_submodule(module_name) if module_name else block), leaf

"""Lazy host loading: a transformer checkpoint read block by block into the host store.

The safetensors files are memory-mapped; each block's tensors are copied from the mapping
straight into the block's host buffer (converted to the storage dtype, or quantised to fp8 on
the device), then the pages the block touched are released (``madvise(MADV_DONTNEED)``), so
host memory holds the store plus about one block, never a second copy of the model. The
embeddings and head (the other tensors, ~3% of a 14B model) are read into ordinary tensors.

Key names and checks are those of :mod:`fastdit.models.wan.checkpoint` (diffusers and the
official Wan layout); a bad checkpoint raises the same :class:`~fastdit.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastdit.errors import CheckpointError
from fastdit.models.wan.checkpoint import (
    CONFIG_NAME,
    IGNORED_KEYS,
    config_for_checkpoint,
    diffusers_to_original_key,
    find_model_dir,
    original_to_diffusers_key,
    parameter_dtype,
    read_json,
    weight_files,
)
from fastdit.runtime.fp8 import check_weights
from fastdit.runtime.host import HostStore
from fastdit.runtime.layout import resolve
from fastdit.runtime.model import StreamedTransformer, block_layout, make_region, use_pinned
from fastdit.runtime.streamer import BlockStreamer, DeviceRegion, StreamPlan

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
           "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


@dataclass(frozen=True)
class StoredTensor:
    """Where a tensor's bytes are: ``file``, absolute byte ``start``, ``nbytes``, dtype, shape."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


def read_header(file: Path) -> dict[str, StoredTensor]:
    """The tensors of one safetensors file (its JSON header only)."""
    try:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        size = file.stat().st_size
    except (OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"cannot read safetensors file {file}: {exc}") from None
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in info["data_offsets"])
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"cannot read safetensors file {file}: bad header entry for {key!r}") from None
        stored = StoredTensor(file, dtype, shape, 8 + length + begin, end - begin)
        if stored.nbytes != dtype.itemsize * math.prod(shape) or stored.start + stored.nbytes > size:
            raise CheckpointError(f"safetensors file {file}: tensor {key!r} does not fit its header "
                                  f"(truncated or corrupt file)")
        tensors[key] = stored
    return tensors


class MappedFiles:
    """Memory maps of safetensors files, read tensor by tensor; :meth:`release` drops the
    pages read so far from this process (they stay in the page cache)."""

    def __init__(self) -> None:
        self._maps: dict[Path, mmap.mmap] = {}
        self._staging = torch.empty(0, dtype=torch.uint8)

    def _map(self, file: Path) -> mmap.mmap:
        found = self._maps.get(file)
        if found is None:
            with open(file, "rb") as handle:  # a private mapping: writable buffer, never written
                found = self._maps[file] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        return found

    def read(self, stored: StoredTensor) -> torch.Tensor:
        """The tensor, as a view of the mapping (or of an aligned staging copy when its offset
        is not a multiple of its element size). Valid until the next :meth:`read`."""
        raw = torch.frombuffer(self._map(stored.file), dtype=torch.uint8, count=stored.nbytes,
                               offset=stored.start)
        if stored.start % stored.dtype.itemsize:
            if self._staging.numel() < stored.nbytes:
                self._staging = torch.empty(stored.nbytes, dtype=torch.uint8)
            raw = self._staging[:stored.nbytes].copy_(raw)
        return raw.view(stored.dtype).view(stored.shape)

    def release(self) -> None:
        for mapped in self._maps.values():
            if hasattr(mmap, "MADV_DONTNEED"):
                mapped.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.release()
        for mapped in self._maps.values():
            try:
                mapped.close()
            except BufferError:  # a tensor still views it: the mapping goes with the tensor
                pass
        self._maps.clear()


def index_checkpoint(folder: Path):
    """``(config, {parameter name: StoredTensor})`` of a transformer checkpoint folder, with
    every tensor checked against the model's parameters (names and shapes)."""
    from fastdit.models.wan import WanTransformer

    files, weight_map = weight_files(folder)
    stored: dict[str, StoredTensor] = {}
    for file in files:
        for key, tensor in read_header(file).items():
            if key in stored:
                raise CheckpointError(f"tensor {key!r} appears in both {stored[key].file} and {file}")
            stored[key] = tensor
    for key, file in (weight_map or {}).items():
        if key in stored and stored[key].file != file:
            raise CheckpointError(f"the safetensors index of {folder} puts tensor {key!r} in "
                                  f"{file.name}, which does not hold it")
    config, original = config_for_checkpoint(
        read_json(folder / CONFIG_NAME), {k: (t.file, t.shape) for k, t in stored.items()},
        folder / CONFIG_NAME)
    with torch.device("meta"):
        expected = {name: tuple(p.shape) for name, p in WanTransformer(config).named_parameters()}
    by_name: dict[str, StoredTensor] = {}
    for key, tensor in stored.items():
        if IGNORED_KEYS.search(key):
            continue
        name = original_to_diffusers_key(key) if original else key
        if name is None or name not in expected:
            raise CheckpointError(f"unexpected tensor {key!r} in {tensor.file}: not a parameter of "
                                  f"this Wan transformer")
        if tensor.shape != expected[name]:
            raise CheckpointError(f"tensor {key!r} in {tensor.file} has shape {list(tensor.shape)}, "
                                  f"the model expects {list(expected[name])}")
        by_name[name] = tensor
    missing = [n for n in expected if n not in by_name]
    if missing:
        shown = [diffusers_to_original_key(n) or n for n in missing] if original else missing
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"checkpoint {folder} lacks tensor(s) "
                              f"{', '.join(repr(m) for m in shown[:5])}{more}")
    return config, by_name


def _set(module: nn.Module, leaf: str, tensor: torch.Tensor) -> None:
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[leaf] = tensor


@torch.no_grad()
def load_streamed(path: str | os.PathLike, plan: StreamPlan, device: torch.device | str, *,
                  dtype: torch.dtype = torch.bfloat16, subfolder: str | None = None,
                  weights: str = "dense", region: DeviceRegion | None = None,
                  dequantize: str = "slot", pinned: bool | None = None) -> StreamedTransformer:
    """Load a transformer checkpoint (as :meth:`WanTransformer.from_pretrained` finds it) with
    its blocks in a host store and streaming by ``plan``; ``weights="fp8"`` quantises the block
    Linear weights on the way (on ``device`` when it is a GPU)."""
    from fastdit.models.wan import WanTransformer

    check_weights(weights)
    device = torch.device(device)
    folder = find_model_dir(path, subfolder)
    config, tensors = index_checkpoint(folder)
    with torch.device("meta"):
        model = WanTransformer(config)
    blocks = getattr(model, model.PLAN.blocks)
    maps = MappedFiles()
    try:
        for name, param in list(model.named_parameters()):
            if not name.startswith(f"{model.PLAN.blocks}."):
                module, leaf = resolve(model, name)
                value = torch.empty(param.shape, dtype=parameter_dtype(name, dtype))
                _set(module, leaf, value.copy_(maps.read(tensors[name])))
        maps.release()
        layout = block_layout(blocks[0], lambda n: parameter_dtype(f"{model.PLAN.blocks}.0.{n}", dtype),
                              weights)
        store = HostStore(layout, len(blocks), pinned=use_pinned(device) if pinned is None else pinned)
        work = device if device.type != "cpu" else None
        for index, block in enumerate(blocks):
            prefix = f"{model.PLAN.blocks}.{index}."
            store.fill(index, lambda n: maps.read(tensors[prefix + n]), work_device=work)
            for slot, view in zip(layout.tensors, store.views[index]):
                _set(*resolve(block, slot.name), view)
            maps.release()
    finally:
        maps.close()
    model.eval()
    if region is None:
        region = make_region(layout, device, plan, dtype, dequantize)
    streamer = BlockStreamer(model, blocks, store, region, plan, dequantize=dequantize)
    return StreamedTransformer(model, streamer, device)

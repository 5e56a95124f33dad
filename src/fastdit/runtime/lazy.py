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

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fastdit.errors import CheckpointError
from fastdit.model_files import TensorEntry, read_safetensors_header
from fastdit.models.wan.checkpoint import (
    CONFIG_NAME,
    check_index,
    config_for_checkpoint,
    find_model_dir,
    index_entries,
    parameter_dtype,
    parameter_names,
    read_json,
    weight_files,
)
from fastdit.runtime.fp8 import check_weights
from fastdit.runtime.host import HostStore
from fastdit.runtime.layout import resolve
from fastdit.runtime.model import StreamedTransformer, block_layout, make_region, use_pinned
from fastdit.runtime.streamer import BlockStreamer, DeviceRegion, StreamPlan

#: ``transform(parameter name, tensor as read, the parameter's dtype) -> tensor to store``
Transform = Callable[[str, torch.Tensor, torch.dtype], torch.Tensor]

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


def _stored(file: Path, entry: TensorEntry) -> StoredTensor:
    dtype = _DTYPES.get(entry.dtype)
    if dtype is None:
        raise CheckpointError(f"safetensors file {file}: unsupported dtype {entry.dtype}")
    return StoredTensor(file, dtype, entry.shape, entry.start, entry.nbytes)


def read_header(file: Path) -> dict[str, StoredTensor]:
    """The tensors of one safetensors file (its JSON header only, checked against the file by
    :func:`fastdit.model_files.read_safetensors_header`)."""
    header = read_safetensors_header(file, CheckpointError, what="cannot read safetensors file")
    return {key: _stored(file, entry) for key, entry in header.items()}


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
    every tensor checked against the model's parameters (names and shapes) as the eager
    loader checks them (:func:`~fastdit.models.wan.checkpoint.parameter_names`)."""
    from fastdit.models.wan import WanTransformer

    files, weight_map = weight_files(folder)
    entries = index_entries(files)
    stored = {key: (file, entry.shape) for key, (file, entry) in entries.items()}
    check_index(folder, stored, weight_map)
    config, original = config_for_checkpoint(read_json(folder / CONFIG_NAME), stored,
                                             folder / CONFIG_NAME)
    with torch.device("meta"):
        model = WanTransformer(config)
    names = parameter_names(model, folder, files, stored, original)
    return config, {name: _stored(*entries[key]) for key, name in names.items()}


def index_file(checked) -> tuple[Any, dict[str, StoredTensor], dict[str, StoredTensor]]:
    """``(config, {parameter name: StoredTensor}, {parameter name: its scale's StoredTensor})``
    of a single-file transformer already checked against its config
    (:func:`fastdit.models.wan.single_file.check_transformer_file`)."""
    header = read_header(checked.path)
    tensors = {name: header[key] for name, key in checked.weights.items()}
    scales = {name: header[checked.scales[key]] for name, key in checked.weights.items() if key in checked.scales}
    return checked.config, tensors, scales


def _set(module: nn.Module, leaf: str, tensor: torch.Tensor) -> None:
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[leaf] = tensor


@torch.no_grad()
def load_streamed(path: str | os.PathLike, plan: StreamPlan, device: torch.device | str, *,
                  dtype: torch.dtype = torch.bfloat16, subfolder: str | None = None,
                  weights: str = "dense", region: DeviceRegion | None = None,
                  dequantize: str = "slot", pinned: bool | None = None,
                  transform: Transform | None = None, file=None) -> StreamedTransformer:
    """Load a transformer checkpoint (as :meth:`WanTransformer.from_pretrained` finds it) with
    its blocks in a host store and streaming by ``plan``; ``weights="fp8"`` quantises the block
    Linear weights on the way (on ``device`` when it is a GPU). ``transform(name, tensor,
    dtype)``, when given, sees every parameter as it is read (``dtype``: the parameter's) and
    returns what to store instead, e.g. LoRAs merged
    (:class:`fastdit.models.wan.lora.LoraMerger`); it runs before the fp8 quantisation.
    ``file``: a checked single-file transformer (a distilled checkpoint,
    :class:`~fastdit.models.wan.single_file.TransformerFile`) read instead of the folder, its
    scaled fp8 / int8 weights dequantised as the single-file loader does (``path`` unused)."""
    from fastdit.models.wan import WanTransformer
    from fastdit.models.wan.single_file import dequantize_scaled

    check_weights(weights)
    device = torch.device(device)
    scales: dict[str, StoredTensor] = {}
    if file is not None:
        config, tensors, scales = index_file(file)
    else:
        config, tensors = index_checkpoint(find_model_dir(path, subfolder))
    with torch.device("meta"):
        model = WanTransformer(config)
    blocks = getattr(model, model.PLAN.blocks)
    maps = MappedFiles()
    try:
        def read(name: str) -> torch.Tensor:
            value, target = maps.read(tensors[name]), parameter_dtype(name, dtype)
            if name in scales:  # a view valid until the next read: copied before the scale's
                value = dequantize_scaled(value.to(device, copy=True), maps.read(scales[name]), target, device)
            elif file is not None:
                value = value.to(target)  # as the single-file loader does (an unscaled fp8 file: a cast)
            return value if transform is None else transform(name, value, target)

        for name, param in list(model.named_parameters()):
            if not name.startswith(f"{model.PLAN.blocks}."):
                module, leaf = resolve(model, name)
                value = torch.empty(param.shape, dtype=parameter_dtype(name, dtype))
                _set(module, leaf, value.copy_(read(name)))
        maps.release()
        layout = block_layout(blocks[0], lambda n: parameter_dtype(f"{model.PLAN.blocks}.0.{n}", dtype),
                              weights)
        store = HostStore(layout, len(blocks), pinned=use_pinned(device) if pinned is None else pinned)
        work = device if device.type != "cpu" else None
        for index, block in enumerate(blocks):
            prefix = f"{model.PLAN.blocks}.{index}."
            store.fill(index, lambda n: read(prefix + n), work_device=work)
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

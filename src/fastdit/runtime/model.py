"""A transformer whose blocks stream: :class:`StreamedTransformer`, and how to make one.

    streamed = stream_model(model, StreamPlan.spread(40, resident=10, prefetch=2), "cuda",
                            weights="fp8")
    out = streamed(latents, timestep, text_embeds)        # == model(...) (bf16 weights: exactly)

The wrapper has the transformer's interface (``__call__``, ``embed`` / ``run_blocks`` /
``head``, and every other attribute through the model), so the pipeline, guidance and step
caches use it unchanged: ``embed`` activates the streamer and puts it in
``WanContext.block_hooks``. ``.to(device)`` / ``.to("cpu")`` activate and deactivate it (the
pipeline moves the idle Wan2.2 expert this way): the host store always keeps every block, so
deactivating copies nothing back.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from fastdit.runtime.fp8 import check_weights
from fastdit.runtime.host import HostStore, quantized_names, storage_specs
from fastdit.runtime.layout import BlockLayout, block_tensors
from fastdit.runtime.streamer import BlockStreamer, DeviceRegion, StreamPlan

log = logging.getLogger("fastdit.runtime")


class StreamedTransformer:
    """``model`` (a :class:`~fastdit.models.wan.WanTransformer`) run through ``streamer``."""

    def __init__(self, model: nn.Module, streamer: BlockStreamer, device: torch.device) -> None:
        self.model, self.streamer, self.home = model, streamer, torch.device(device)

    # ---- the transformer's interface -------------------------------------------------
    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, text_embeds: torch.Tensor,
                 image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        x, ctx = self.embed(latents, timestep, text_embeds, image_embeds)
        return self.model.head(self.model.run_blocks(x, ctx), ctx)

    forward = __call__

    def embed(self, *args: Any, **kwargs: Any):
        self.streamer.activate()
        x, ctx = self.model.embed(*args, **kwargs)
        return x, dataclasses.replace(ctx, block_hooks=self.streamer)

    def run_blocks(self, x: torch.Tensor, ctx, start: int = 0, stop: int | None = None) -> torch.Tensor:
        if ctx.block_hooks is None:  # a context the bare model built
            self.streamer.activate()
            ctx = dataclasses.replace(ctx, block_hooks=self.streamer)
        return self.model.run_blocks(x, ctx, start, stop)

    def head(self, x: torch.Tensor, ctx) -> torch.Tensor:
        return self.model.head(x, ctx)

    def to(self, device: torch.device | str, *args: Any, **kwargs: Any) -> "StreamedTransformer":
        """``to(<the device>)`` activates, ``to("cpu")`` deactivates (blocks stay in the host store)."""
        if args or kwargs or not isinstance(device, (str, torch.device)):
            raise TypeError("StreamedTransformer.to takes only a device")
        device = torch.device(device)
        if device.type == "cpu" and self.home.type != "cpu":
            self.streamer.deactivate()
        else:
            self.streamer.activate()
        return self

    @property
    def stats(self) -> dict[str, int]:
        """Copies and bytes moved host -> device so far, and the pool's allocations."""
        return {"copies": self.streamer.copies, "bytes_copied": self.streamer.bytes_copied,
                "pool_buffers": self.streamer.region.buffers_created,
                "host_bytes": self.streamer.store.nbytes, "pool_bytes": self.streamer.region.nbytes}

    def __getattr__(self, name: str) -> Any:
        if name in ("model", "streamer", "home"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"StreamedTransformer({self.streamer.plan.describe()}, on {self.home})"


def compute_dtype_of(model: nn.Module) -> torch.dtype:
    return model.patch_embedding.weight.dtype


def make_region(layout: BlockLayout, device: torch.device | str, plan: StreamPlan,
                compute_dtype: torch.dtype, dequantize: str = "slot") -> DeviceRegion:
    """The device pool ``plan`` needs for blocks of ``layout`` (shared by experts that take turns)."""
    pairs = quantized_names(layout) if dequantize == "slot" else []
    dense = BlockLayout.build((layout.tensors[w].name, layout.tensors[w].shape, compute_dtype)
                              for w, _ in pairs) if pairs else None
    return DeviceRegion(layout, torch.device(device), resident=len(plan.resident), slots=plan.slots,
                        dense=dense)


def block_layout(block: nn.Module, dtype_of, weights: str, fp8_dtype: torch.dtype | None = None) -> BlockLayout:
    """The storage layout of one block for ``weights`` ("dense" or "fp8")."""
    if fp8_dtype is None:
        from fastdit.platforms import current_platform

        fp8_dtype = current_platform().fp8_dtype()
    return BlockLayout.build(storage_specs(block, dtype_of, weights, fp8_dtype))


def use_pinned(device: torch.device) -> bool:
    from fastdit.platforms import current_platform

    return torch.device(device).type != "cpu" and current_platform().pin_memory_available()


@torch.no_grad()
def stream_model(model: nn.Module, plan: StreamPlan, device: torch.device | str, *,
                 weights: str = "dense", region: DeviceRegion | None = None,
                 dequantize: str = "slot", pinned: bool | None = None) -> StreamedTransformer:
    """Move an in-memory transformer's blocks into a host store (quantised with
    ``weights="fp8"``) and return it wrapped for streaming. The blocks' old storage is freed;
    the other tensors go to the host until the first forward activates the model."""
    check_weights(weights)
    device = torch.device(device)
    blocks = getattr(model, model.PLAN.blocks)
    dtypes = {name: t.dtype for name, t in block_tensors(blocks[0])}
    layout = block_layout(blocks[0], dtypes.__getitem__, weights)
    for block in blocks[1:]:
        own = {name: t.dtype for name, t in block_tensors(block)}
        if block_layout(block, own.__getitem__, weights) != layout:  # names, shapes, dtypes
            raise ValueError("stream_model: the blocks differ in their parameters; one layout must fit all")
    store = HostStore(layout, len(blocks), pinned=use_pinned(device) if pinned is None else pinned)
    for index, block in enumerate(blocks):
        store.fill(index, dict(block_tensors(block)).__getitem__)
    if region is None:
        region = make_region(layout, device, plan, compute_dtype_of(model), dequantize)
    streamer = BlockStreamer(model, blocks, store, region, plan, dequantize=dequantize)
    log.info("streaming %s: %s, weights %s", type(model).__name__, plan.describe(), weights)
    return StreamedTransformer(model, streamer, device)

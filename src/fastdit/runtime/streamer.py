"""Streamed block offload: the device pool and the block hooks that stream weights through it.

A :class:`DeviceRegion` is a FIXED set of device buffers, allocated once: ``resident`` block
buffers, ``slots`` staging buffers for streamed blocks, and (fp8 storage) one dense buffer
that the block running now dequantises into. A :class:`BlockStreamer` is the
:class:`~fastdit.models.wan.transformer.BlockHooks` of one transformer:

* ``before_block(i)``: a resident block binds its tensors to its resident buffer; a streamed
  block waits (on the device, through an event) for its copy into a slot, and binds to the
  slot. Binding is setting each parameter's ``.data`` to a prepared view: no memory is
  allocated, nothing syncs with the host. With fp8 storage the block's ``Linear`` weights are
  first dequantised into the dense buffer (``dense.copy_(q); dense.mul_(scale)``) and bound
  there, their ``weight_scale`` set to None while the block runs.
* ``after_block(i)``: the tensors go back to their host views, an event marks the slot free,
  and the next streamed blocks (``prefetch`` ahead, cyclically, so the next forward's first
  blocks load during this forward's last) are copied into free slots on a side stream, each
  copy waiting for its slot's "free" event.

Streamed blocks are predicted in order; a block asked for out of turn (a step cache skipping
blocks, a partial ``run_blocks``) drops the stale prefetches and restarts from it.

On the CPU there are no streams or events: the same code copies into the slots synchronously.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from fastdit.models.wan.transformer import BlockHooks
from fastdit.runtime.host import HostStore, quantized_names
from fastdit.runtime.layout import BlockLayout, block_tensors, resolve

log = logging.getLogger("fastdit.runtime")

DEQUANTIZE_MODES = ("slot", "linear")


@dataclass(frozen=True)
class StreamPlan:
    """Which blocks stay on the device (``resident``) and which stream (``streamed``, in run
    order); ``prefetch``: streamed blocks copied ahead of the one computing (0: no overlap)."""

    resident: tuple[int, ...]
    streamed: tuple[int, ...]
    prefetch: int = 1

    def __post_init__(self) -> None:
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        if set(self.resident) & set(self.streamed):
            raise ValueError("a block cannot be both resident and streamed")

    @property
    def slots(self) -> int:
        """Staging buffers needed: the block computing plus ``prefetch`` in flight."""
        return min(self.prefetch + 1, len(self.streamed)) if self.streamed else 0

    @classmethod
    def spread(cls, num_blocks: int, resident: int, prefetch: int = 1) -> "StreamPlan":
        """``resident`` blocks kept, the others streamed, evenly spaced among them (each
        resident block gives the copy engine a block's compute time to catch up)."""
        resident = max(0, min(resident, num_blocks))
        count = num_blocks - resident
        streamed = sorted({min(num_blocks - 1, int((j + 0.5) * num_blocks / count))
                           for j in range(count)}) if count else []
        for index in range(num_blocks):  # rounding collisions: fill from the front
            if len(streamed) >= count:
                break
            if index not in streamed:
                streamed.append(index)
        streamed = sorted(streamed[:count])
        kept = tuple(i for i in range(num_blocks) if i not in set(streamed))
        return cls(resident=kept, streamed=tuple(streamed), prefetch=prefetch)

    def describe(self) -> str:
        n = len(self.resident) + len(self.streamed)
        if not self.streamed:
            return f"all {n} blocks resident"
        return (f"{len(self.resident)} of {n} blocks resident, {len(self.streamed)} streamed "
                f"(prefetch {self.prefetch}, {self.slots} slot(s))")


class _Streams:
    """The side stream and events of ``device``, or no-ops on the CPU."""

    def __init__(self, device: torch.device) -> None:
        from fastdit.platforms import current_platform

        self.platform = current_platform()
        self.side = self.platform.stream(device) if device.type != "cpu" else None
        self.module = torch.get_device_module(device) if self.side is not None else None

    def event(self):
        return self.platform.event() if self.side is not None else None

    def compute(self):
        return self.module.current_stream() if self.side is not None else None

    def on_side(self):
        return self.module.stream(self.side) if self.side is not None else contextlib.nullcontext()

    @staticmethod
    def wait(stream, event) -> None:
        if event is not None:
            stream.wait_event(event)

    @staticmethod
    def record(event, stream) -> None:
        if event is not None:
            event.record(stream)


class DeviceRegion:
    """Device buffers for one transformer's blocks at a time (experts take turns).

    ``resident`` buffers of ``layout.nbytes``, ``slots`` staging buffers of the same size and,
    with ``dense`` (the fp8 weights' dequantised layout), one dense buffer. Allocated on the
    first :meth:`allocate`, never again: ``buffers_created`` counts the allocations.
    """

    def __init__(self, layout: BlockLayout, device: torch.device, resident: int, slots: int,
                 dense: BlockLayout | None = None) -> None:
        self.layout, self.device, self.dense_layout = layout, torch.device(device), dense
        self.num_resident, self.num_slots = resident, slots
        self.resident: list[torch.Tensor] = []
        self.slots: list[torch.Tensor] = []
        self.dense: torch.Tensor | None = None
        self.buffers_created = 0
        self.owner = None
        self.streams = _Streams(self.device)
        self.ready = [self.streams.event() for _ in range(slots)]  # copy into slot s done
        self.free = [self.streams.event() for _ in range(slots)]  # compute on slot s done
        self.released = None  # the previous owner's last compute, before its buffers are reused
        self.ring = 0  # staging slots are filled in ring order

    @property
    def nbytes(self) -> int:
        dense = self.dense_layout.nbytes if self.dense_layout is not None else 0
        return (self.num_resident + self.num_slots) * self.layout.nbytes + dense

    def _new(self, nbytes: int) -> torch.Tensor:
        self.buffers_created += 1
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def allocate(self) -> None:
        if self.buffers_created:
            return
        self.resident = [self._new(self.layout.nbytes) for _ in range(self.num_resident)]
        self.slots = [self._new(self.layout.nbytes) for _ in range(self.num_slots)]
        if self.dense_layout is not None:
            self.dense = self._new(self.dense_layout.nbytes)
        log.info("device pool on %s: %d resident + %d staging block buffer(s)%s, %.2f GB", self.device,
                 self.num_resident, self.num_slots, " + 1 dense" if self.dense is not None else "",
                 self.nbytes / 1e9)

    def acquire(self, owner) -> None:
        """Make ``owner`` the user of the buffers (the previous one is deactivated first)."""
        if self.owner is not None and self.owner is not owner:
            self.owner.deactivate()
        self.owner = owner
        self.allocate()


class BlockStreamer(BlockHooks):
    """Block hooks streaming ``model``'s blocks from ``store`` through ``region`` (see the
    module docstring); also moves the model's other tensors (embeddings, head) to the device
    on :meth:`activate` and back to the host on :meth:`deactivate`.

    ``dequantize="slot"`` (default) dequantises fp8 weights into the dense buffer once per
    block; ``"linear"`` binds the fp8 weights and their scales and lets each ``Linear``
    dequantise (or an fp8 product use them directly).
    """

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, store: HostStore, region: DeviceRegion,
                 plan: StreamPlan, dequantize: str = "slot") -> None:
        if dequantize not in DEQUANTIZE_MODES:
            raise ValueError(f"dequantize must be one of {DEQUANTIZE_MODES}, got {dequantize!r}")
        if len(plan.resident) + len(plan.streamed) != len(blocks) or \
                sorted(plan.resident + plan.streamed) != list(range(len(blocks))):
            raise ValueError(f"StreamPlan must cover blocks 0..{len(blocks) - 1} once each")
        if len(plan.resident) > region.num_resident or plan.slots > region.num_slots:
            raise ValueError(f"the device region holds {region.num_resident} resident block(s) and "
                             f"{region.num_slots} slot(s); the plan needs {len(plan.resident)} and {plan.slots}")
        self.model, self.blocks, self.store, self.region, self.plan = model, blocks, store, region, plan
        layout = store.layout
        pairs = quantized_names(layout) if dequantize == "slot" else []
        self._pairs = pairs  # (weight index, scale index) dequantised into the dense buffer
        scale_indices = {s for _, s in pairs}
        self._swap = [i for i in range(len(layout.tensors)) if i not in scale_indices]
        self._dense_of = {w: k for k, (w, _) in enumerate(pairs)}
        self._tensors = [self._attach(block, layout, store.views[b]) for b, block in enumerate(blocks)]
        self._swapped = [[tensors[i] for i in self._swap] for tensors in self._tensors]
        self._host = [[store.views[b][i] for i in self._swap] for b in range(len(blocks))]
        self._linears = [[resolve(block, layout.tensors[w].name)[0] for w, _ in pairs] for block in blocks]
        self._scales = [[tensors[s] for _, s in pairs] for tensors in self._tensors]
        self._where = {b: ("r", k) for k, b in enumerate(plan.resident)}
        self._where.update({b: ("s", p) for p, b in enumerate(plan.streamed)})
        self._others = _other_tensors(model, blocks)
        self._others_host = [t.data if t.device.type == "cpu" else t.data.cpu() for t in self._others]
        for tensor, host in zip(self._others, self._others_host):  # inactive: on the host
            tensor.data = host
        self._views_built = False
        self.active = False
        self._issued: deque[tuple[int, int]] = deque()  # (block, slot) copies in flight, in order
        self._next = 0  # position in plan.streamed of the next block to copy
        self._current: int | None = None  # the slot of the streamed block computing now
        self.copies = 0
        self.bytes_copied = 0

    # ---- set-up ----------------------------------------------------------------------
    @staticmethod
    def _attach(block: nn.Module, layout: BlockLayout, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The block's tensor objects in layout order, each pointed at its host view."""
        found = dict(block_tensors(block))
        tensors = []
        for slot, view in zip(layout.tensors, views):
            name = slot.name
            tensor = found.get(name)
            if tensor is None:  # a weight_scale the fp8 store adds
                module, leaf = resolve(block, name)
                tensor = torch.empty(0)
                module._buffers[leaf] = tensor
            tensor.data = view
            tensors.append(tensor)
        return tensors

    def _build_views(self) -> None:
        region, layout = self.region, self.store.layout
        dense_views = layout_views(region.dense_layout, region.dense) if region.dense is not None else []

        def compute_views(buffer):
            views = layout.views(buffer)
            bound = [dense_views[self._dense_of[i]] if i in self._dense_of else views[i] for i in self._swap]
            work = [(dense_views[k], views[w], views[s].view(-1, 1)) for k, (w, s) in enumerate(self._pairs)]
            return bound, work

        self._resident_views = [compute_views(b) for b in region.resident]
        self._slot_views = [compute_views(b) for b in region.slots]
        self._views_built = True

    # ---- activation ------------------------------------------------------------------
    def activate(self) -> None:
        """Put the resident blocks and the other tensors on the device; start prefetching."""
        if self.active:
            return
        region, streams = self.region, self.region.streams
        region.acquire(self)
        if not self._views_built:
            self._build_views()
        device = region.device
        for tensor, host in zip(self._others, self._others_host):
            tensor.data = host.to(device, non_blocking=host.is_pinned())
        compute = streams.compute()
        with streams.on_side():
            if compute is not None:
                streams.wait(streams.side, region.released)
            for k, b in enumerate(self.plan.resident):
                region.resident[k].copy_(self.store.blocks[b], non_blocking=True)
            done = streams.event()
            streams.record(done, streams.side)
        if compute is not None:
            streams.wait(compute, done)
        self.copies += len(self.plan.resident)
        self.bytes_copied += len(self.plan.resident) * self.store.layout.nbytes
        self.active = True
        self._issued.clear()
        self._next, self._current = 0, None
        self._fill()

    def deactivate(self) -> None:
        """Give the device buffers up (the host store keeps every block) and move the other
        tensors back to the host."""
        if not self.active:
            return
        region, streams = self.region, self.region.streams
        compute = streams.compute()
        if compute is not None:
            region.released = streams.event()
            streams.record(region.released, compute)
        for tensor, host in zip(self._others, self._others_host):
            tensor.data = host
        if region.owner is self:
            region.owner = None
        self._issued.clear()
        self.active = False

    # ---- the hooks -------------------------------------------------------------------
    def before_block(self, index: int) -> None:
        kind, k = self._where[index]
        if kind == "r":
            bound, work = self._resident_views[k]
        else:
            if self._current is not None:  # the last streamed block never finished (it raised)
                self._release_slot()
            issued = self._issued
            while issued and issued[0][0] != index:  # out of turn: drop stale prefetches
                issued.popleft()
            if not issued:
                self._next = k
            self._fill()
            _, slot = issued.popleft()
            streams = self.region.streams
            compute = streams.compute()
            if compute is not None:
                compute.wait_event(self.region.ready[slot])
            self._current = slot
            bound, work = self._slot_views[slot]
        for dense, q, scale in work:  # fp8: dequantise into the dense buffer, in place
            dense.copy_(q)
            dense.mul_(scale)
        for tensor, view in zip(self._swapped[index], bound):
            tensor.data = view
        for linear in self._linears[index]:
            linear._buffers["weight_scale"] = None

    def after_block(self, index: int) -> None:
        for tensor, view in zip(self._swapped[index], self._host[index]):
            tensor.data = view
        for linear, scale in zip(self._linears[index], self._scales[index]):
            linear._buffers["weight_scale"] = scale
        if self._current is not None:
            self._release_slot()
            self._fill()

    def _release_slot(self) -> None:
        """Mark the computing block's slot free once the compute stream is past it."""
        compute = self.region.streams.compute()
        if compute is not None:
            self.region.free[self._current].record(compute)
        self._current = None

    # ---- prefetch --------------------------------------------------------------------
    def _fill(self) -> None:
        """Copy streamed blocks ahead (cyclically) until ``plan.slots`` are in flight."""
        order = self.plan.streamed
        while len(self._issued) < self.plan.slots:
            block = order[self._next]
            self._next = (self._next + 1) % len(order)
            self._issue(block)

    def _issue(self, block: int) -> None:
        region, streams = self.region, self.region.streams
        slot = region.ring % self.plan.slots
        region.ring += 1
        with streams.on_side():
            if streams.side is not None:
                streams.side.wait_event(region.free[slot])
            region.slots[slot].copy_(self.store.blocks[block], non_blocking=True)
            if streams.side is not None:
                region.ready[slot].record(streams.side)
        self._issued.append((block, slot))
        self.copies += 1
        self.bytes_copied += self.store.layout.nbytes


def layout_views(layout: BlockLayout | None, buffer: torch.Tensor | None) -> list[torch.Tensor]:
    return [] if layout is None or buffer is None else layout.views(buffer)


def _other_tensors(model: nn.Module, blocks: nn.ModuleList) -> list[torch.Tensor]:
    """Every parameter and buffer of ``model`` outside ``blocks`` (embeddings, head, tables)."""
    inside = {id(t) for _, t in block_tensors(blocks)}
    return [t for _, t in block_tensors(model) if id(t) not in inside]

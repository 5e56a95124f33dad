"""Pinned host memory for a generation's frames, allocated on a side thread while it denoises.

The decode stage copies the video (float32 ``[F, H, W, 3]``) from the GPU into pinned host
memory (:func:`fastdit.pipelines.stages.host_array`): 8 ms for a 480x832x81 video on the H200
machine when torch's pinned cache holds a free block, 0.22-0.30 s when the block has to be
allocated first, as in a process's first generation (``benchmarks/vae.py --frames-stage``,
h200-run16). :class:`FramesBuffer` starts that allocation when the generation starts, on a
daemon thread, so that it is done by the time the decode needs it; the frames' values are the
same either way.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import torch

log = logging.getLogger("fastdit.pipelines")


class FramesBuffer:
    """One pinned float32 host tensor of ``shape``, allocated on a side thread.

    ``FramesBuffer(shape, device)`` starts the allocation when ``device`` is a GPU (nothing for
    the CPU, whose frames need no copy); :meth:`take` waits for it and hands the tensor over
    once (None when nothing was allocated or the allocation failed, which is logged)."""

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.shape = tuple(shape)
        self.device = device
        self._buffer: torch.Tensor | None = None
        self._thread: threading.Thread | None = None
        if device.type != "cpu":
            self._thread = threading.Thread(target=self._allocate, name="fastdit-frames-buffer",
                                            daemon=True)
            self._thread.start()

    def _allocate(self) -> None:
        # a new thread's current CUDA device is 0: name the frames' device (no context elsewhere)
        guard = (torch.cuda.device(self.device) if self.device.type == "cuda" and self.device.index is not None
                 else contextlib.nullcontext())
        try:
            with guard:
                self._buffer = torch.empty(self.shape, dtype=torch.float32, pin_memory=True)
        except RuntimeError as exc:  # the decode then allocates (or copies to pageable memory)
            log.warning("no pinned buffer for the frames %s: %s", self.shape, str(exc).splitlines()[0])

    def take(self) -> torch.Tensor | None:
        """The buffer (waiting for its allocation), at most once; None without one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        buffer, self._buffer = self._buffer, None
        return buffer

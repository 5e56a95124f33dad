"""Pinned host memory for a generation's frames, allocated on a side thread while it denoises.

The decode stage copies the video (float32 ``[F, H, W, 3]``) from the GPU into pinned host
memory (:func:`host_array`): 8 ms for a 480x832x81 video on the H200
machine when torch's pinned cache holds a free block, 0.22-0.30 s when the block has to be
allocated first, as in a process's first generation (``benchmarks/vae.py --frames-stage``,
h200-run16). :class:`FramesBuffer` starts that allocation when the generation starts, on a
daemon thread, so that it is done by the time the decode needs it; the frames' values are the
same either way.
"""

from __future__ import annotations

import contextlib
import logging
import math
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
        with guard:  # on failure the decode allocates (or copies to pageable memory)
            self._buffer = pinned_empty(self.shape, torch.float32, "no pinned buffer for the frames")

    def take(self) -> torch.Tensor | None:
        """The buffer (waiting for its allocation), at most once; None without one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        buffer, self._buffer = self._buffer, None
        return buffer


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype, what: str) -> torch.Tensor | None:
    """An uninitialised pinned host tensor, or None (logged with ``what``) when no pinned memory
    can be allocated."""
    try:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    except RuntimeError as exc:
        size = math.prod(shape) * dtype.itemsize
        log.warning("%s: pinned allocation of %.0f MB failed: %s", what, size / 1e6, str(exc).splitlines()[0])
        return None


def host_array(frames: torch.Tensor, host: torch.Tensor | None = None):
    """A device tensor as a numpy array over pinned host memory (one copy): ``host`` when it has
    the frames' shape and dtype, else newly allocated; when no pinned memory can be allocated,
    through pageable memory with a warning."""
    if host is not None and (host.shape != frames.shape or host.dtype != frames.dtype):
        log.debug("frames buffer %s does not fit frames %s: allocating", tuple(host.shape), tuple(frames.shape))
        host = None
    if host is None:
        host = pinned_empty(tuple(frames.shape), frames.dtype, "frames copied to pageable memory")
    if host is None:
        return frames.cpu().numpy()
    host.copy_(frames)
    return host.numpy()

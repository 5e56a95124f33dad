"""The result of one generation, and writing it (videos and frames: :mod:`.video_io`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastdit.pipelines.atomic import umask as _umask  # noqa: F401  (older imports)
from fastdit.pipelines.video_io import (  # noqa: F401  (re-exported)
    VIDEO_SUFFIXES,
    FfmpegEncoder,
    VideoEncoder,
    check_fps,
    save_frames_atomically,
    to_uint8,
    write_frames,
    write_video,
)


@dataclass
class GenerationResult:
    """``frames``: float32 ``[F, H, W, 3]`` in [0, 1] (or a tensor / latents, per output_type);
    ``timings``: seconds per stage (text, image, latents, denoise, decode, total) and per step;
    ``peak_memory``: peak bytes allocated on the GPU during generation (None on the CPU);
    ``stats``: what the opt-in features did, e.g. ``stats["cache"]`` (forwards run and reused
    per branch and expert, :meth:`fastdit.cache.CacheStats.to_dict`)."""

    frames: Any
    timings: dict[str, float] = field(default_factory=dict)
    fps: int = 16
    peak_memory: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def video_fps(self, fps: float | None = None) -> float:
        """The frame rate :meth:`save` writes: ``fps``, or the model's when None (or 0)."""
        return fps or self.fps

    def save(self, path: str | os.PathLike, fps: float | None = None,
             encoder: VideoEncoder | None = None) -> Path:
        """Write the frames as an H.264 mp4 (``fps`` defaults to the model's; at most 1000).

        Atomic: an existing file is replaced only by a complete, checked video; on an encoder
        failure, Ctrl-C or SIGTERM nothing is left behind. Raises ``ValueError`` for bad
        arguments, :class:`~fastdit.errors.OutputError` (an ``OSError``) when writing fails.
        ``encoder``: another :class:`~fastdit.pipelines.video_io.VideoEncoder` (default ffmpeg).
        """
        if not isinstance(self.frames, np.ndarray):
            raise ValueError("save() needs output_type='np' frames")
        return write_video(path, self.frames, fps=self.video_fps(fps), encoder=encoder)

    def save_frames(self, directory: str | os.PathLike) -> Path:
        """Write the frames as ``frame_00000.png ...`` into ``directory`` (atomically: the old
        ``frame_*.png`` there are replaced only once every new one is written)."""
        if not isinstance(self.frames, np.ndarray):
            raise ValueError("save_frames() needs output_type='np' frames")
        return save_frames_atomically(self.frames, directory)

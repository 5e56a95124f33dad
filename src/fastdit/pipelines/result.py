"""The result of one generation, and writing videos (H.264 mp4 through imageio-ffmpeg)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float frames in [0, 1] -> uint8 (rounded)."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _partial_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the video gets the usual mode
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 16, quality: float = 8) -> Path:
    """Write ``frames`` (``[F, H, W, 3]``, float in [0, 1] or uint8) as an H.264 video.

    The video is written to a temporary file next to ``path`` and renamed at the end, so an
    interruption never leaves a partial file under ``path``.
    """
    import imageio_ffmpeg

    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"video path must end in {', '.join(VIDEO_SUFFIXES)}: {path}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got shape {frames.shape}")
    data = frames if frames.dtype == np.uint8 else to_uint8(frames)
    height, width = data.shape[1:3]
    tmp = _partial_path(path)
    try:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", quality=quality,
            pix_fmt_out="yuv420p", macro_block_size=1 if (height % 2 == 0 and width % 2 == 0) else 16,
            output_params=["-movflags", "+faststart"], ffmpeg_log_level="error")
        writer.send(None)  # start ffmpeg
        for frame in data:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_frames(directory: str | os.PathLike, frames: np.ndarray) -> Path:
    """Write frames as ``frame_00000.png ...`` into ``directory`` (created if needed)."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = frames if frames.dtype == np.uint8 else to_uint8(frames)
    for i, frame in enumerate(data):
        Image.fromarray(frame).save(directory / f"frame_{i:05d}.png")
    return directory


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

    def save(self, path: str | os.PathLike, fps: float | None = None) -> Path:
        """Write the frames as an H.264 mp4 (``fps`` defaults to the model's)."""
        if not isinstance(self.frames, np.ndarray):
            raise ValueError("save() needs output_type='np' frames")
        return write_video(path, self.frames, fps=fps or self.fps)

    def save_frames(self, directory: str | os.PathLike) -> Path:
        if not isinstance(self.frames, np.ndarray):
            raise ValueError("save_frames() needs output_type='np' frames")
        return write_frames(directory, self.frames)

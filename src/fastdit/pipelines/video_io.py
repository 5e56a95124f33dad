"""Videos and frames on disk: H.264 through ffmpeg, checked, atomic.

:func:`write_video` pipes raw RGB frames to an encoder (:class:`FfmpegEncoder`: imageio-ffmpeg's
binary, or ``IMAGEIO_FFMPEG_EXE``, or the ``executable`` given) that writes a hidden temporary
file next to the target; the file is renamed into place only when the encoder exited with
status 0 and wrote a non-empty file. On any failure, Ctrl-C or SIGTERM the encoder is ended,
the temporary removed and an existing video under the target name is untouched; failures are
:class:`~fastdit.errors.OutputError` (an ``OSError``) with the encoder's own last words.

The encoder is a seam: anything with ``encode(path, frames, width, height, fps)`` will do (tests
pass a failing one; another codec is another class).
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from fastdit.errors import OutputError
from fastdit.pipelines.atomic import PartialFile, PartialFolder, terminate_cleanly
from fastdit.pipelines.spec import MAX_FPS

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
KILL_WAIT_S = 5.0  # how long an ended encoder gets to exit before it is killed


class VideoEncoder(Protocol):
    def encode(self, path: Path, frames: Iterable[np.ndarray], width: int, height: int,
               fps: Fraction) -> None:
        """Write ``frames`` (uint8 ``[H, W, 3]`` each) to ``path``; raise OutputError on failure."""


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float frames in [0, 1] -> uint8 (rounded)."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def check_fps(fps) -> Fraction:
    """A frame rate ffmpeg and players accept: a finite number in (0, MAX_FPS], as a fraction
    (so 24000/1001 stays exact)."""
    if isinstance(fps, bool):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a positive number, got {fps!r}") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_FPS:
        raise ValueError(f"fps must be a positive number up to {MAX_FPS}, got {fps!r}")
    return fps if isinstance(fps, Fraction) else Fraction(value).limit_denominator(1001)


class FfmpegEncoder:
    """H.264 (``libx264``, yuv420p, ``+faststart``) through an ffmpeg process, the same command
    line imageio-ffmpeg builds. ``quality`` 0-10 maps to crf ``int((1 - q / 10) * 51)`` (8 -> 10)."""

    def __init__(self, executable: str | None = None, codec: str = "libx264", quality: float = 8) -> None:
        self.executable = executable
        self.codec = codec
        self.quality = quality

    def command(self, path: Path, width: int, height: int, fps: Fraction) -> list[str]:
        import imageio_ffmpeg

        exe = self.executable or imageio_ffmpeg.get_ffmpeg_exe()
        cmd = [exe, "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
               "-pix_fmt", "rgb24", "-r", str(fps), "-i", "-", "-an", "-vcodec", self.codec,
               "-pix_fmt", "yuv420p", "-crf", str(int((1 - self.quality / 10.0) * 51))]
        if width % 2 or height % 2:  # yuv420p needs even sizes: round up to 16, as imageio does
            cmd += ["-vf", f"scale={-(-width // 16) * 16}:{-(-height // 16) * 16}"]
        return cmd + ["-v", "error", "-movflags", "+faststart", str(path)]

    def encode(self, path: Path, frames: Iterable[np.ndarray], width: int, height: int,
               fps: Fraction) -> None:
        with tempfile.TemporaryFile() as log:
            try:
                proc = subprocess.Popen(self.command(path, width, height, fps), stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=log,
                                        start_new_session=True)  # our signals reach us, not it
            except OSError as exc:
                raise OutputError(f"cannot start ffmpeg: {exc.strerror or exc}") from None
            try:
                _feed(proc, frames)
                returncode = proc.wait()
            except BaseException:
                _end(proc)
                raise
            if returncode != 0:
                log.seek(0)
                raise OutputError(f"ffmpeg failed ({_status(returncode)}): {_last_line(log.read())}")


def _feed(proc: subprocess.Popen, frames: Iterable[np.ndarray]) -> None:
    try:
        for frame in frames:
            proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        proc.stdin.close()
    except BrokenPipeError:  # ffmpeg stopped reading: its exit status and log say why
        pass


def _end(proc: subprocess.Popen) -> None:
    """Stop an encoder that is still running (we are being interrupted)."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        pass
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass


def _status(returncode: int) -> str:
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


def _last_line(log: bytes) -> str:
    lines = [line.strip() for line in log.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"


def frames_uint8(frames: np.ndarray) -> np.ndarray:
    """``[F, H, W, 3]`` frames as uint8 (float ones through :func:`to_uint8`; uint8 as they
    are); ``ValueError`` for another shape."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must be [F, H, W, 3] with F, H, W >= 1, got shape {frames.shape}")
    return frames if frames.dtype == np.uint8 else to_uint8(frames)


def check_video_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not str(path):
        raise ValueError("video path is empty")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"video path must end in {', '.join(VIDEO_SUFFIXES)}: {path}")
    return path


def encode_video(part: PartialFile, frames: np.ndarray, fps, encoder: VideoEncoder | None = None) -> None:
    """Encode ``frames`` into the temporary ``part`` and check the result (not yet published)."""
    data = frames_uint8(frames)
    rate = check_fps(fps)
    height, width = data.shape[1:3]
    try:
        (encoder or FfmpegEncoder()).encode(part.path, iter(data), width, height, rate)
    except OutputError as exc:  # the encoder's reason; name the user's path, not the temporary
        raise OutputError(f"cannot write {part.target}: {str(exc).replace(str(part.path), str(part.target))}") \
            from None
    try:
        size = part.path.stat().st_size
    except OSError:
        size = 0
    if size == 0:
        raise OutputError(f"cannot write {part.target}: the encoder exited normally but wrote nothing")


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 16, quality: float = 8,
                encoder: VideoEncoder | None = None) -> Path:
    """Write ``frames`` (``[F, H, W, 3]``, float in [0, 1] or uint8) as an H.264 video at
    ``fps`` (a positive number up to 1000).

    Atomic and checked (see the module docstring); raises ``ValueError`` for bad arguments and
    :class:`~fastdit.errors.OutputError` when the video cannot be written.
    """
    path = check_video_path(path)
    data = frames_uint8(frames)
    check_fps(fps)
    encoder = encoder or FfmpegEncoder(quality=quality)
    with terminate_cleanly(), PartialFile(path) as part:
        encode_video(part, data, fps, encoder)
        return part.publish()


def write_frames(directory: str | os.PathLike, frames: np.ndarray) -> Path:
    """Write frames as ``frame_00000.png ...`` into ``directory`` (created if needed)."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = frames_uint8(frames)
    try:
        for i, frame in enumerate(data):
            Image.fromarray(frame).save(directory / f"frame_{i:05d}.png")
    except OSError as exc:
        raise OutputError(f"cannot write frames to {directory}: {exc.strerror or exc}") from None
    return directory


def save_frames_atomically(frames: np.ndarray, target: str | os.PathLike) -> Path:
    """:func:`write_frames` into a hidden folder, then published into ``target`` (see
    :class:`~fastdit.pipelines.atomic.PartialFolder`)."""
    target = Path(target)
    with terminate_cleanly(), PartialFolder(target) as part:
        _write_into(part, frames)
        part.publish()
    return target


def _write_into(part: PartialFolder, frames: np.ndarray) -> None:
    try:
        write_frames(part.path, frames)
    except OutputError as exc:
        raise OutputError(str(exc).replace(str(part.path), str(part.target))) from None

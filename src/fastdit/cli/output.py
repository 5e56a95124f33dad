"""``fastdit generate``'s outputs: checked before the model loads, written atomically after.

Up front (:func:`check_output`, :func:`check_frames_dir`): the suffix, the folder (exists, is
one, writable: probed with a temporary of the same kind as the real one), the name's length,
that an existing output can be replaced, and that ``--save-frames`` is not the video itself.
At the end (:func:`write_outputs`): the video is encoded into a hidden temporary and checked
(encoder exit status, non-empty file), the frames are written into a hidden folder, and only
then are both published, with signals held for those few renames; if the video cannot be
put in place the frames are rolled back. Nothing is left behind on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fastdit.cli import UsageError
from fastdit.errors import OutputError
from fastdit.pipelines.atomic import PartialFile, PartialFolder, describe_os_error, signals_deferred


def name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return 255


def _check_name(path: Path, what: str) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    size, limit = len(os.fsencode(path.name)), name_max(folder) if folder.is_dir() else 255
    if size > limit:
        raise UsageError(f"cannot write {what}: the file name is {size} bytes long, the limit here is {limit}")


def check_writable_dir(folder: Path, what: str, probe: type = PartialFile, target: Path | None = None) -> None:
    """``folder`` exists, is a folder, and a temporary like the real one can be made there."""
    folder = folder if str(folder) else Path(".")
    try:
        if not folder.exists():
            raise UsageError(f"cannot write {what}: folder {folder} does not exist")
        if not folder.is_dir():
            raise UsageError(f"cannot write {what}: {folder} is not a folder")
        part = probe(target if target is not None else folder / "probe.mp4")
        part.discard()
    except OutputError as exc:
        raise UsageError(f"cannot write {what}: {str(exc).rpartition(': ')[2]}") from None
    except OSError as exc:
        raise UsageError(f"cannot write {what}: {describe_os_error(exc)}") from None


def check_replaceable(path: Path, what: str) -> None:
    """An existing file under ``path`` can be replaced by a rename (not read-only or immutable,
    and not another user's in a sticky folder such as /tmp)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):  # the rename replaces the link itself
        return
    if not os.access(path, os.W_OK):
        raise UsageError(f"cannot replace {what}: the existing file is read-only or immutable "
                         "(remove it, or choose another name)")
    folder = path.parent if str(path.parent) else Path(".")
    parent = folder.stat()
    euid = os.geteuid() if hasattr(os, "geteuid") else 0
    if parent.st_mode & stat.S_ISVTX and euid != 0 and euid not in (info.st_uid, parent.st_uid):
        raise UsageError(f"cannot replace {what}: it belongs to another user in a sticky folder "
                         f"({folder})")


def check_output(text: str) -> Path:
    """The video path: suffix, folder, name length, replaceable; raises :class:`UsageError`."""
    from fastdit.pipelines.video_io import VIDEO_SUFFIXES

    if not text:
        raise UsageError("--output is empty (give a file name such as video.mp4)")
    path = Path(text)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UsageError(f"output must end in {', '.join(VIDEO_SUFFIXES)}: {path}")
    what = f"output {path}"
    try:
        _check_name(path, what)
        if path.is_dir():
            raise UsageError(f"output {path} is a folder")
        check_writable_dir(path.parent, what, target=path)
        check_replaceable(path, what)
    except OSError as exc:  # a path the system refuses outright (ENAMETOOLONG, ELOOP, ...)
        raise UsageError(f"cannot write {what}: {describe_os_error(exc)}") from None
    return path


def check_frames_dir(text: str, output: Path) -> Path:
    """The ``--save-frames`` folder: not the video, a folder if it exists, writable parent."""
    if not text:
        raise UsageError("--save-frames is empty (give a folder name)")
    folder = Path(text)
    what = f"frames to {folder}"
    try:
        if folder.resolve() == output.resolve():
            raise UsageError(f"--save-frames {folder} is the video's own path (--output): choose a folder")
        _check_name(folder, what)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--save-frames {folder} exists and is not a folder")
        check_writable_dir(folder.parent, what, probe=PartialFolder, target=folder)
    except OSError as exc:
        raise UsageError(f"cannot write {what}: {describe_os_error(exc)}") from None
    return folder


def write_outputs(frames, output: Path, fps, frames_dir: Path | None = None, encoder=None,
                  frame_writer=None) -> None:
    """Encode the video and write the frames (both hidden), then publish them together.
    ``encoder`` / ``frame_writer(folder, frames)``: other writers than ffmpeg and PIL's PNGs."""
    from fastdit.pipelines.video_io import encode_video, frames_uint8, write_frames

    frame_writer = frame_writer or write_frames
    with PartialFile(output) as video:
        frames = frames_uint8(frames)  # once: the video and the PNGs take the same 8-bit frames
        encode_video(video, frames, fps, encoder)
        if frames_dir is None:
            with signals_deferred():
                video.publish()
            return
        with PartialFolder(frames_dir) as folder:
            try:
                frame_writer(folder.path, frames)
            except OutputError as exc:
                raise OutputError(str(exc).replace(str(folder.path), str(frames_dir))) from None
            with signals_deferred():  # the frames and the video appear together, or neither
                folder.publish()
                try:
                    video.publish()
                except OutputError:
                    folder.undo()
                    raise
                folder.commit()

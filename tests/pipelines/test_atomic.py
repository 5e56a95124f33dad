"""Atomic, checked writes (pipelines/atomic.py, video_io.py): temporaries never show under the
real name, an existing file survives every failure, interruptions (Ctrl-C, SIGTERM) end the
encoder and remove the temporaries, and a publication of video + frames can be undone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastdit.errors import OutputError, Terminated
from fastdit.pipelines.atomic import PartialFile, PartialFolder, signals_deferred, terminate_cleanly
from tests.cli.fakes import fake_ffmpeg, hidden_leftovers


def test_partial_file_publishes_or_leaves_nothing(tmp_path):
    target = tmp_path / ("v" * 250 + ".mp4")  # the temporary's name stays short
    target.write_bytes(b"old")
    with PartialFile(target) as part:
        assert part.path.parent == tmp_path and part.path.name.startswith(".") and len(part.path.name) < 80
        part.path.write_bytes(b"new")
        part.publish()
    assert target.read_bytes() == b"new" and hidden_leftovers(tmp_path) == [target.name]
    with pytest.raises(KeyboardInterrupt):
        with PartialFile(target) as part:
            part.path.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"new" and hidden_leftovers(tmp_path) == [target.name]


def test_partial_file_that_cannot_replace_its_target(tmp_path):
    target = tmp_path / "a.mp4"
    target.mkdir()
    (target / "keep").write_text("x")
    with PartialFile(target) as part:
        part.path.write_bytes(b"new")
        with pytest.raises(OutputError, match=f"cannot replace {target}: "):
            part.publish()
    assert hidden_leftovers(tmp_path) == ["a.mp4", "a.mp4/keep"]


def test_partial_folder_new_merge_and_undo(tmp_path):
    target = tmp_path / "frames"
    with PartialFolder(target) as part:
        (part.path / "frame_00000.png").write_text("1")
        part.publish()
    assert hidden_leftovers(tmp_path) == ["frames", "frames/frame_00000.png"]
    (target / "notes.txt").write_text("mine")
    with PartialFolder(target) as part:  # into an existing folder: old frames replaced, the rest kept
        (part.path / "frame_00000.png").write_text("2")
        part.publish()
        assert (target / "frame_00000.png").read_text() == "2"
        part.undo()  # a later step failed: back to before
        assert (target / "frame_00000.png").read_text() == "1"
    assert hidden_leftovers(tmp_path) == ["frames", "frames/frame_00000.png", "frames/notes.txt"]
    with pytest.raises(Terminated):
        with PartialFolder(target) as part:
            (part.path / "frame_00000.png").write_text("3")
            part.publish()
            raise Terminated(signal.SIGTERM)  # before the commit: undone and removed
    assert (target / "frame_00000.png").read_text() == "1"
    assert hidden_leftovers(tmp_path) == ["frames", "frames/frame_00000.png", "frames/notes.txt"]


def test_signals_are_held_while_publishing():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append("delivered"))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            seen.append("inside")
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["inside", "delivered"]


def _frames(n=3):
    return np.random.default_rng(0).random((n, 16, 16, 3)).astype(np.float32)


def test_ctrl_c_while_encoding_ends_ffmpeg(tmp_path, monkeypatch):
    from fastdit.pipelines.video_io import write_video

    pid_file = tmp_path / "pid"
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake_ffmpeg(tmp_path, "slow")))
    monkeypatch.setenv("FAKE_FFMPEG_PID", str(pid_file))
    out = tmp_path / "out"
    out.mkdir()

    def frames():  # the encoder is running when Ctrl-C comes
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        yield np.zeros((16, 16, 3), np.uint8)
        raise KeyboardInterrupt

    from fastdit.pipelines.video_io import FfmpegEncoder

    encoder = FfmpegEncoder()
    with pytest.raises(KeyboardInterrupt):
        with PartialFile(out / "a.mp4") as part:
            encoder.encode(part.path, frames(), 16, 16, 8)
    assert hidden_leftovers(out) == []
    assert _gone(int(pid_file.read_text()))
    with pytest.raises(ValueError):  # and write_video itself refuses bad frames before starting
        write_video(out / "b.mp4", np.zeros((0, 16, 16, 3)))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


API_SAVE = """
import sys, numpy as np
from fastdit.pipelines.result import GenerationResult
GenerationResult(frames=np.zeros((4, 16, 16, 3), np.float32), fps=8).save(sys.argv[1])
print("saved")
"""


def test_d7_sigterm_during_api_save_cleans_up_then_ends_the_process(tmp_path):
    """The API does not install handlers for good: during save() SIGTERM removes the temporary
    and ends ffmpeg, then ends the process as SIGTERM does (status -15)."""
    pid_file = tmp_path / "pid"
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, IMAGEIO_FFMPEG_EXE=str(fake_ffmpeg(tmp_path, "slow")), FAKE_FFMPEG_PID=str(pid_file),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", API_SAVE, str(out / "a.mp4")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM, stderr
    assert "saved" not in stdout
    assert hidden_leftovers(out) == []
    assert _gone(int(pid_file.read_text()))


def test_terminate_cleanly_leaves_other_handlers_alone():
    def mine(signum, frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(Terminated):
            with terminate_cleanly():
                assert signal.getsignal(signal.SIGTERM) is mine
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)

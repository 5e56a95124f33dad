"""Stand-ins for ffmpeg (through imageio-ffmpeg's ``IMAGEIO_FFMPEG_EXE``, which the real
encoder honours), to make encoder failures and slow writes deterministic:

* ``full-disk``: reads the frames, writes 12 KB of junk, says "No space left on device", exits 1
  (what a full disk does to ffmpeg);
* ``empty``: reads the frames, writes nothing, exits 0;
* ``slow``: writes its pid to ``$FAKE_FFMPEG_PID``, some bytes, then sleeps (a long encode);
* ``steal``: writes a valid-looking file, but first puts a folder where the output goes
  (``$FAKE_FFMPEG_TARGET``): the output cannot be replaced at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = r'''#!{python}
import os, sys, time
mode = {mode!r}
out = sys.argv[-1]
if mode == "slow":
    with open(os.environ["FAKE_FFMPEG_PID"] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.environ["FAKE_FFMPEG_PID"] + ".tmp", os.environ["FAKE_FFMPEG_PID"])
    with open(out, "wb") as f:
        f.write(b"\0" * 4096)
    time.sleep(120)
    sys.exit(0)
data = sys.stdin.buffer.read()
if mode == "full-disk":
    with open(out, "wb") as f:
        f.write(b"\1" * 12288)
    sys.stderr.write("[out#0/mp4] Error writing trailer: No space left on device\n")
    sys.exit(1)
if mode == "empty":
    sys.exit(0)
if mode == "steal":
    target = os.environ["FAKE_FFMPEG_TARGET"]
    os.mkdir(target)
    with open(os.path.join(target, "keep.txt"), "w") as f:
        f.write("keep")
    with open(out, "wb") as f:
        f.write(b"\2" * 2048)
    sys.exit(0)
sys.exit(3)
'''


def fake_ffmpeg(folder: Path, mode: str) -> Path:
    """An executable stand-in for ffmpeg in ``folder`` (see the module docstring)."""
    path = folder / f"fake-ffmpeg-{mode}"
    path.write_text(SCRIPT.format(python=sys.executable, mode=mode))
    path.chmod(0o755)
    return path


def hidden_leftovers(folder: Path) -> list[str]:
    """Every entry of ``folder`` (recursively), hidden ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))

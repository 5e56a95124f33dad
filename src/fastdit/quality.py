"""Video comparison: PSNR, SSIM and (when its weights are on this machine) LPIPS.

``compare(a, b)`` takes two videos as mp4 (or .mov/.mkv) paths, folders of frame images, or
float arrays ``[F, H, W, 3]`` in [0, 1] (numpy or torch), and returns::

    {"frames": F, "psnr": dB, "psnr_worst_frame": dB, "ssim": s, "lpips": d or None,
     "lpips_reason": "..." (only when lpips is None)}

* ``psnr``: ``10 log10(1 / MSE)`` over all frames' pixels (``data_range`` 1; ``inf`` for
  identical videos), scikit-image's ``peak_signal_noise_ratio``; ``psnr_worst_frame``: the
  lowest per-frame value;
* ``ssim``: the mean over frames of scikit-image's ``structural_similarity`` (7x7 windows,
  colour channels averaged);
* ``lpips``: the mean over frames of LPIPS (AlexNet) from the ``lpips`` package, only when the
  package and its weights (the backbone's torchvision checkpoint) are already on disk: nothing
  is downloaded. Otherwise None and a one-line ``lpips_reason``.

Frames are compared at 8 bits when read from files (what the files hold) and as given for
arrays. Mismatched frame counts or sizes, unreadable or missing inputs raise
:class:`fastdit.errors.InputError` naming the input.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fastdit.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet, LPIPS's backbone
SSIM_MIN_SIDE = 7  # scikit-image's default window


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------
def _read_video(path: Path, name: str) -> np.ndarray:
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3) for raw in reader]
    except (OSError, RuntimeError, StopIteration, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name}: cannot read the video {path}: {first}") from None
    if not frames:
        raise InputError(f"{name}: the video {path} has no frames")
    return np.stack(frames)


def _read_folder(path: Path, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{name}: the folder {path} holds no frame images "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except (OSError, UnidentifiedImageError) as exc:
            raise InputError(f"{name}: cannot read the frame {file}: {exc}") from None
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise InputError(f"{name}: the frames in {path} differ in size: "
                         f"{', '.join(f'{s[1]}x{s[0]}' for s in sorted(sizes))}")
    return np.stack(frames)


def load_frames(video: Any, name: str = "video") -> np.ndarray:
    """``video`` (path, folder or array) as float64 ``[F, H, W, 3]`` in [0, 1]."""
    if isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if path.is_dir():
            return _read_folder(path, name).astype(np.float64) / 255.0
        if not path.exists():
            raise InputError(f"{name}: no such file or folder: {path}")
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise InputError(f"{name}: {path} is neither a folder of frames nor a video "
                             f"({', '.join(VIDEO_SUFFIXES)})")
        return _read_video(path, name).astype(np.float64) / 255.0
    if hasattr(video, "detach"):  # a torch tensor
        video = video.detach().float().cpu().numpy()
    if not isinstance(video, np.ndarray):
        raise InputError(f"{name}: expected a path, a folder or an array [F, H, W, 3], got "
                         f"{type(video).__name__}")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise InputError(f"{name}: frames must be [F, H, W, 3], got shape {list(video.shape)}")
    if not np.issubdtype(video.dtype, np.floating):
        raise InputError(f"{name}: frame arrays must be float in [0, 1], got {video.dtype}")
    frames = video.astype(np.float64)
    if not np.isfinite(frames).all() or frames.min() < 0.0 or frames.max() > 1.0:
        raise InputError(f"{name}: frame values must be finite and in [0, 1] (got "
                         f"{np.nanmin(frames):.3g} ... {np.nanmax(frames):.3g})")
    return frames


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise InputError(f"the videos have different frame counts: A has {a.shape[0]}, "
                         f"B has {b.shape[0]}")
    if a.shape[1:3] != b.shape[1:3]:
        raise InputError(f"the videos have different frame sizes: A is {a.shape[2]}x{a.shape[1]}, "
                         f"B is {b.shape[2]}x{b.shape[1]} (width x height)")
    if a.shape[0] == 0:
        raise InputError("the videos have no frames")
    if min(a.shape[1:3]) < SSIM_MIN_SIDE:
        raise InputError(f"frames of {a.shape[2]}x{a.shape[1]} are too small for SSIM "
                         f"(at least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE})")


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(a, b):
        return math.inf
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(np.mean([structural_similarity(fa, fb, data_range=1.0, channel_axis=-1)
                          for fa, fb in zip(a, b)]))


def lpips_model():
    """``(model, None)`` when LPIPS can run from files already on disk, else ``(None, reason)``."""
    try:
        import lpips  # noqa: F401  (optional)
        import torch
    except ImportError:
        return None, "the lpips package is not installed"
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT
    if not checkpoint.is_file():
        return None, f"LPIPS backbone weights are not on this machine ({checkpoint}); nothing is downloaded"
    linear = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    if not linear.is_file():
        return None, f"the lpips package lacks its layer weights ({linear})"
    return lpips.LPIPS(net="alex", verbose=False).eval(), None


def _lpips(model, a: np.ndarray, b: np.ndarray, batch: int = 8) -> float:
    import torch

    values = []
    with torch.no_grad():
        for start in range(0, a.shape[0], batch):
            def nchw(x):  # [F, H, W, 3] in [0, 1] -> [F, 3, H, W] in [-1, 1]
                return torch.from_numpy(x[start:start + batch]).float().permute(0, 3, 1, 2) * 2 - 1
            values.append(model(nchw(a), nchw(b)).flatten())
    return float(torch.cat(values).mean())


def compare(a: Any, b: Any) -> dict:
    """PSNR / SSIM / LPIPS of video ``b`` against video ``a`` (see the module docstring)."""
    frames_a, frames_b = load_frames(a, "A"), load_frames(b, "B")
    _check_pair(frames_a, frames_b)
    result: dict[str, Any] = {
        "frames": int(frames_a.shape[0]),
        "psnr": _psnr(frames_a, frames_b),
        "psnr_worst_frame": min(_psnr(fa, fb) for fa, fb in zip(frames_a, frames_b)),
        "ssim": _ssim(frames_a, frames_b),
    }
    model, reason = lpips_model()
    result["lpips"] = None if model is None else _lpips(model, frames_a, frames_b)
    if model is None:
        result["lpips_reason"] = reason
    return result

"""MagCache ratio files: what ``magcache:calibrate=FILE`` writes and ``magcache:table=FILE`` reads.

The file is JSON::

    {"format": "fastdit-magcache", "version": 1,
     "model": "Wan2.1-T2V-1.3B" | null, "fingerprint": "dim=1536,layers=30,...",
     "num_steps": 50, "experts": [0, 0, ..., 1],            # which expert ran each step
     "ratios": [[1.0, r_1, ...], [1.0, u_1, ...]],           # per branch (cond, uncond), one per step
     "std": [...], "cos_dis": [...]}                        # same layout, for inspection

``ratios[b][s]`` is ``mean_t ||R_s|| / ||R_{s-1}||`` for branch b (MagCache's calibration,
``magcache_calibration`` in Zehong-Ma/MagCache), 1.0 where there is no previous residual (step
0, each expert's first step, or a branch that did not run). A file is used only for the model
it was recorded on (same fingerprint, and same name when both are known) and the same number
of steps.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastdit.errors import CacheError

FORMAT = "fastdit-magcache"
VERSION = 1


@dataclass(frozen=True)
class RatioTable:
    """Per-branch ratios, one per step: ``ratios[branch][step]``."""

    ratios: tuple[tuple[float, ...], ...]
    num_steps: int
    model: str | None = None
    fingerprint: str | None = None
    source: str = ""

    def ratio(self, branch: int, step: int) -> float:
        return self.ratios[min(branch, len(self.ratios) - 1)][step]


def model_fingerprint(config: Any) -> str | None:
    """The architecture facts a ratio file must match (a WanConfig-like object), or None."""
    if config is None:
        return None
    fields = {}
    for name in ("dim", "num_layers", "in_channels", "out_channels", "image_dim", "patch_size"):
        value = getattr(config, name, None)
        if value is not None:
            fields[name] = "x".join(map(str, value)) if isinstance(value, (tuple, list)) else value
    return ",".join(f"{k}={v}" for k, v in fields.items()) or None


def save_ratio_file(path: str | os.PathLike, *, model: str | None, fingerprint: str | None,
                    num_steps: int, experts: list[int], ratios: list[list[float]],
                    std: list[list[float]], cos_dis: list[list[float]]) -> Path:
    """Write the file (atomically: a temporary file renamed into place)."""
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION, "model": model, "fingerprint": fingerprint,
            "num_steps": num_steps, "experts": experts, "ratios": ratios, "std": std,
            "cos_dis": cos_dis}
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CacheError(f"cache magcache: cannot write the calibration file {path}: {exc}") from None
    return path


def load_ratio_file(path: str | os.PathLike, *, num_steps: int | None, model: str | None,
                    fingerprint: str | None) -> RatioTable:
    """Read and check a ratio file for this model and step count (``None``: any, the file's
    own); CacheError otherwise."""
    path = Path(path)
    where = f"cache magcache: table {path}"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{where}: no such file (write one with magcache:calibrate={path})") from None
    except (OSError, ValueError) as exc:
        raise CacheError(f"{where}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CacheError(f"{where}: not a fastdit MagCache calibration file (format must be {FORMAT!r})")
    if data.get("version") != VERSION:
        raise CacheError(f"{where}: version {data.get('version')!r}, this fastdit reads {VERSION}")
    file_fp, file_model = data.get("fingerprint"), data.get("model")
    if fingerprint and file_fp and file_fp != fingerprint:
        raise CacheError(f"{where}: recorded on another model ({file_fp}); this model is "
                        f"{fingerprint}. Calibrate this model with magcache:calibrate=FILE")
    if model and file_model and file_model != model:
        raise CacheError(f"{where}: recorded on {file_model}, this model is {model}")
    steps = data.get("num_steps")
    if num_steps is None:  # a check before the step count is known (at load): the file's own
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise CacheError(f"{where}: num_steps must be a positive integer, got {steps!r}")
        num_steps = steps
    if steps != num_steps:
        raise CacheError(f"{where}: calibrated with {steps} steps, this generation runs {num_steps}; "
                        f"calibrate with the step count you use")
    ratios = data.get("ratios")
    if not isinstance(ratios, list) or not 1 <= len(ratios) <= 2:
        raise CacheError(f"{where}: 'ratios' must hold one list per branch (1 or 2)")
    for branch, row in enumerate(ratios):
        if not isinstance(row, list) or len(row) != num_steps:
            length = len(row) if isinstance(row, list) else type(row).__name__
            raise CacheError(f"{where}: the ratios of branch {branch} have length {length}, "
                            f"expected {num_steps} (one per step)")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   and v > 0 for v in row):
            raise CacheError(f"{where}: the ratios of branch {branch} must be positive finite numbers")
    return RatioTable(tuple(tuple(float(v) for v in row) for row in ratios), num_steps,
                      file_model, file_fp, str(path))

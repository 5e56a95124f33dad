"""The quantities step caches decide with, as plain functions (each checked against float64).

* :func:`relative_l1_sums` / :func:`relative_l1`: ``mean|a - b| / mean|b|`` (TeaCache's input
  change, first-block / DBCache residual change), as two sums so that a sharded tensor needs
  one all-reduce before the division.
* :func:`rescale`: TeaCache's polynomial ``np.poly1d(c)(x)`` (highest degree first).
* :func:`nearest_interp`: MagCache's resampling of a ratio table to another step count.
* :func:`magnitude_stats`: MagCache's calibration statistics of two residuals.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def relative_l1_sums(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``[sum|current - previous|, sum|previous|]`` in fp32, shape ``(2,)``.

    ``current`` and ``previous`` have the same shape (any); their ratio is
    :func:`relative_l1`. Sums (not means) add up across sequence shards.
    """
    if current.shape != previous.shape:
        raise ValueError(f"relative_l1: shapes differ, {list(current.shape)} vs {list(previous.shape)}")
    cur, prev = current.float(), previous.float()
    return torch.stack(((cur - prev).abs().sum(), prev.abs().sum()))


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """``mean|current - previous| / mean|previous|`` (0 when both are 0); one host sync."""
    diff, ref = relative_l1_sums(current, previous).tolist()
    return ratio(diff, ref)


def ratio(diff: float, ref: float) -> float:
    """``diff / ref`` with ``0 / 0 = 0`` and ``x / 0 = inf``."""
    if ref == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / ref


def rescale(coefficients: Sequence[float], x: float) -> float:
    """TeaCache's rescaling polynomial, ``sum_i c[i] * x**(len(c) - 1 - i)`` (Horner, float64),
    the value of ``np.poly1d(coefficients)(x)``."""
    value = 0.0
    for c in coefficients:
        value = value * x + float(c)
    return value


def nearest_interp(values: Sequence[float], length: int) -> np.ndarray:
    """MagCache's ``nearest_interp``: ``values[round(i * (n - 1) / (length - 1))]`` for
    ``i < length`` (numpy's round, half to even); ``length == 1`` takes the last value."""
    src = np.asarray(values, dtype=np.float64)
    if length < 1 or src.size == 0:
        raise ValueError(f"nearest_interp: need values and length >= 1, got {src.size} and {length}")
    if length == 1:
        return np.array([src[-1]])
    scale = (src.size - 1) / (length - 1)
    return src[np.round(np.arange(length) * scale).astype(int)]


def magnitude_stats(residual: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """MagCache calibration statistics of two residuals ``[..., L, D]`` of the same branch:
    ``[mean_t rho_t, std_t rho_t, mean_t (1 - cos_t)]`` with ``rho_t = ||r_t|| / ||p_t||``
    (norms over D, one value per token t) and ``cos_t`` the cosine of ``r_t`` and ``p_t``
    (eps 1e-8, as ``F.cosine_similarity``); fp32, shape ``(3,)``; std is unbiased."""
    if residual.shape != previous.shape:
        raise ValueError(f"magnitude_stats: shapes differ, {list(residual.shape)} vs "
                         f"{list(previous.shape)}")
    r, p = residual.float(), previous.float()
    rho = (r.norm(dim=-1) / p.norm(dim=-1)).flatten()  # (B * L,)
    cos = torch.nn.functional.cosine_similarity(r, p, dim=-1, eps=1e-8).flatten()
    std = rho.std() if rho.numel() > 1 else rho.new_zeros(())
    return torch.stack((rho.mean(), std, (1 - cos).mean()))

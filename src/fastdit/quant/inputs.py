"""Synthetic inputs for accuracy figures of the 8-bit paths (tests and ``benchmarks/quant.py``
use the same ones), and the two error measures the figures report.

``gaussian``: q, k, v ~ N(0, 1). ``outlier`` (what smoothing and fine scales are for):

* K with per-channel offsets: ``k += 4 * o[h, d]``, ``o ~ N(0, 1)``, the same for every token;
* heavy-tailed channels: the first eighth of the channels of k and v are Student-t with
  3 degrees of freedom (rare values 10-30x the typical one);
* peaky logits: q times 6 (logits with a standard deviation of about 7 instead of 1).
"""

from __future__ import annotations

import torch

KINDS = ("gaussian", "outlier")


def _student_t(shape, df: float, generator: torch.Generator) -> torch.Tensor:
    """Student-t samples: ``N(0, 1) / sqrt(chi2(df) / df)``, chi2 as 2 * Gamma(df / 2)."""
    normal = torch.randn(shape, generator=generator)
    gamma = torch._standard_gamma(torch.full(shape, df / 2.0), generator=generator) * 2.0
    return normal / torch.sqrt(gamma / df)


def attention_inputs(kind: str, shape, dtype=torch.bfloat16, seed: int = 0, device="cpu"):
    """``(q, k, v)`` of ``shape = (B, L, H, D)`` (q, k and v alike) of the given kind."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    if kind == "outlier":
        _, _, heads, dim = shape
        heavy = slice(0, max(1, dim // 8))
        for t in (k, v):
            t[..., heavy] = _student_t(t[..., heavy].shape, 3.0, gen)
        k += 4.0 * torch.randn((heads, dim), generator=gen)
        q *= 6.0
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors (float64)."""
    a64, b64 = a.detach().double().flatten(), b.detach().double().flatten()
    return float(a64 @ b64 / (a64.norm() * b64.norm()).clamp_min(1e-300))


def relative_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """``sum |a - b| / sum |b|`` (b is the reference), float64."""
    a64, b64 = a.detach().double(), b.detach().double()
    return float((a64 - b64).abs().sum() / b64.abs().sum().clamp_min(1e-300))

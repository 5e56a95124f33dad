"""Quantisation formulas, in plain torch: the definition every kernel reproduces bit for bit.

Symmetric scaling with fp32 scales, one scale per *row* of the reduced dimension(s):

    amax  = max(max |x| over the row, FLOOR)                      (fp32, exact)
    scale = amax / QMAX                                           (IEEE division)
    inv   = QMAX / amax                                           (IEEE division, not 1/scale)
    q     = clamp(round(x * inv), -QMAX, QMAX)     int8: round half to even, then int8
          = clamp(x * inv, -QMAX, QMAX) -> e4m3    fp8: the cast rounds to nearest even
    x    ~= q * scale

QMAX is 127 for int8 and 448 for float8_e4m3fn. FLOOR (1e-12) keeps an all-zero row finite:
its values stay 0. Kernels compute ``inv`` with a correctly rounded division
(``tl.math.div_rn``) and ``x * inv`` without fused multiply-add, so that their bits equal
these. Note that torch's ``number / tensor`` and, on CUDA, ``tensor / number`` multiply by a
reciprocal: the helpers below divide two tensors.

Granularities used by fastdit:

* activations of an fp8 product: per token (a row of ``[..., K]``), :func:`quantize_fp8_rows`;
* weights ``[N, K]``: per output channel (a row), :func:`quantize_fp8_weight`;
* attention Q and K ``[B, L, H, D]``: INT8 per token and head (a row of D),
  :func:`quantize_int8_rows`; K first smoothed by its mean over the tokens
  (``softmax(q (k - m)^T) = softmax(q k^T)`` for any vector ``m``) and its channels balanced
  against Q's (:func:`key_smoothing`);
* attention V: FP8 per channel, the amax over the tokens (:func:`quantize_v_fp8`), optionally
  as two e4m3 terms (value and rounding residual, :func:`quantize_v_fp8_split`); V first
  smoothed by its mean over the tokens (:func:`value_smoothing`: the attention weights of a
  query sum to one, so ``P V = P (V - m) + m``), which the attention adds back exactly.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
INT8_MAX = 127.0
SCALE_FLOOR = 1e-12


def _amax(x32: torch.Tensor, dims) -> torch.Tensor:
    """``max(max |x| over dims, FLOOR)`` in fp32, dims kept (for broadcasting)."""
    return x32.abs().amax(dim=dims, keepdim=True).clamp_min(SCALE_FLOOR)


def _scale_and_inverse(amax: torch.Tensor, qmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(amax / qmax, qmax / amax)``, both correctly rounded fp32 divisions of two tensors
    (a tensor divided by a Python number is a multiplication by its reciprocal on CUDA, which
    differs from the division in the last bit for some values)."""
    qmax_t = torch.full_like(amax, qmax)
    return amax / qmax_t, qmax_t / amax


def fp8_max(dtype: torch.dtype) -> float:
    """The largest finite value of an fp8 format: 448 for float8_e4m3fn, 240 for the
    float8_e4m3fnuz of AMD's MI300 (``Platform.fp8_dtype()``)."""
    return float(torch.finfo(dtype).max)


def _quantize(x: torch.Tensor, dims, qmax: float, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor]:
    x32 = x.float()
    scale, inv = _scale_and_inverse(_amax(x32, dims), qmax)
    y = x32 * inv
    if dtype == torch.int8:
        q = torch.round(y).clamp_(-qmax, qmax).to(torch.int8)
    else:
        q = y.clamp_(-qmax, qmax).to(dtype)
    return q, scale


def quantize_int8_rows(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 with one fp32 scale per row along ``dim``: ``x ~= q * scale.unsqueeze(dim)``.

    ``scale = max(amax, 1e-12) / 127``, ``q = clamp(round_half_even(x * (127 / amax)), +-127)``.
    Returns ``q`` (int8, x's shape) and ``scale`` (fp32, x's shape without ``dim``).
    """
    q, scale = _quantize(x, dim, INT8_MAX, torch.int8)
    return q, scale.squeeze(dim)


def quantize_fp8_rows(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 e4m3 with one fp32 scale per row along ``dim`` (per token for ``x [..., K]``).

    ``scale = max(amax, 1e-12) / 448``, ``q = e4m3(clamp(x * (448 / amax), +-448))`` (the cast
    rounds to nearest even). Returns ``q`` (float8_e4m3fn, x's shape) and ``scale`` (fp32,
    x's shape without ``dim``); ``x ~= q * scale.unsqueeze(dim)``.
    """
    q, scale = _quantize(x, dim, FP8_MAX, FP8_DTYPE)
    return q, scale.squeeze(dim)


def quantize_fp8_weight(weight: torch.Tensor, fp8_dtype: torch.dtype = FP8_DTYPE
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear weight ``[N, K]`` in e4m3 with per-output-channel fp32 scales ``[N]``:
    ``W ~= weight_fp8 * weight_scale[:, None]`` (:func:`quantize_fp8_rows` over K; with
    ``fp8_dtype=torch.float8_e4m3fnuz`` the same with 240 for 448). The one per-channel weight
    quantiser of fastdit: fp8 weight storage for offload uses it too."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_fp8_weight: weight must be a float [N, K] matrix, got "
                         f"{weight.dtype} {list(weight.shape)}")
    if fp8_dtype == FP8_DTYPE:
        return quantize_fp8_rows(weight, dim=-1)
    q, scale = _quantize(weight, -1, fp8_max(fp8_dtype), fp8_dtype)
    return q, scale.squeeze(-1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``q * scale`` in fp32, ``scale`` broadcast along ``dim`` (the inverse of the above)."""
    return q.float() * scale.unsqueeze(dim)


def key_mean(k: torch.Tensor) -> torch.Tensor:
    """The mean of ``k [B, L, H, D]`` over the tokens, fp32 ``[B, H, D]``.

    One torch reduction (fp32 accumulation, no copy of k): the Triton path calls this same
    function, so its smoothed keys equal the specification's bit for bit.
    """
    return k.mean(dim=1, dtype=torch.float32)


def value_absmax(v: torch.Tensor) -> torch.Tensor:
    """``max(max_l |v[b, l, h, d]|, 1e-12)``: fp32 ``[B, H, D]`` (one reduction, no copy)."""
    return torch.linalg.vector_norm(v, ord=float("inf"), dim=1,
                                    dtype=torch.float32).clamp_min(SCALE_FLOOR)


def key_smoothing(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The smoothing of ``k [B, L, H, D]`` before its INT8 quantisation: ``(mean, c, inv_c)``,
    fp32 ``[B, H, D]`` each:

        mean[b, h, d] = mean_l k[b, l, h, d]                         (key_mean)
        c[b, h, d]    = sqrt(max(max_l |k[b, l, h, d] - mean|, 1e-12))
        inv_c         = 1 / c

    Keys become ``(k - mean) * inv_c`` and queries ``q * c`` (per kv head): the scores
    ``q . (k_j - mean)`` keep their value, the mean only shifts every score of a query alike
    (softmax-invariant), and ``c`` moves half of each channel's range from the keys into the
    queries, so that one heavy-tailed key channel does not coarsen a key's whole INT8 row
    (SmoothQuant's balancing with exponent 1/2). ``max_l |k - mean|`` is computed as
    ``max(max_l k - mean, mean - min_l k)``, equal bit for bit (rounding is monotonic).
    """
    mean = key_mean(k)
    k_min, k_max = torch.aminmax(k, dim=1)
    amax = torch.maximum(k_max.float() - mean, mean - k_min.float()).clamp_min_(SCALE_FLOOR)
    c = amax.sqrt()
    return mean, c, torch.ones_like(c) / c


def v_scales(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel V scales: ``(scale, inv)`` = ``(amax / 448, 448 / amax)``, fp32 ``[B, H, D]``,
    ``amax = value_absmax(v)``."""
    return _scale_and_inverse(value_absmax(v), FP8_MAX)


def value_smoothing(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The smoothing of ``v [B, L, H, D]`` before its e4m3 quantisation: ``(mean, scale,
    inv)``, fp32 ``[B, H, D]`` each:

        mean[b, h, d] = mean_l v[b, l, h, d]                          (key_mean's reduction)
        amax          = max(max_l |v - mean|, 1e-12)                  (from v's min and max)
        scale, inv    = amax / 448, 448 / amax

    V's channels are quantised as ``v - mean`` (a projection's bias and any other offset shared
    by the tokens no longer take up e4m3's range); since every query's attention weights sum
    to one, ``softmax(S) V = softmax(S) (V - mean) + mean``.
    """
    mean = key_mean(v)
    v_min, v_max = torch.aminmax(v, dim=1)
    amax = torch.maximum(v_max.float() - mean, mean - v_min.float()).clamp_min_(SCALE_FLOOR)
    scale, inv = _scale_and_inverse(amax, FP8_MAX)
    return mean, scale, inv


def _v_scaled(v, mean, inv):
    """``clamp((v - mean) * inv, +-448)`` in fp32 (``mean`` None: no smoothing)."""
    v32 = v.float() if mean is None else v.float() - mean[:, None]
    return (v32 * inv[:, None]).clamp_(-FP8_MAX, FP8_MAX)


def quantize_v_fp8(v: torch.Tensor, smooth: bool = False):
    """V ``[B, L, H, D]`` in e4m3 with one scale per (batch, head, channel) over the tokens:
    ``v_q = e4m3(clamp(v * inv[b, h, d], +-448))``; returns ``(v_q [B, L, H, D], scale [B, H, D])``
    with ``v ~= v_q * scale[:, None]``. With ``smooth``, ``v - mean`` is quantised
    (:func:`value_smoothing`) and ``(v_q, scale, mean)`` returned, ``v ~= v_q * scale + mean``."""
    if smooth:
        mean, scale, inv = value_smoothing(v)
        return _v_scaled(v, mean, inv).to(FP8_DTYPE), scale, mean
    scale, inv = v_scales(v)
    return _v_scaled(v, None, inv).to(FP8_DTYPE), scale


def quantize_v_fp8_split(v: torch.Tensor, smooth: bool = False):
    """V in two e4m3 terms at the same per-channel scale, ``v ~= (v_hi + v_lo) * scale``:

        y    = clamp(v * inv[b, h, d], +-448)      (inv, scale as in quantize_v_fp8)
        v_hi = e4m3(y)
        v_lo = e4m3(y - v_hi)                      (the rounding residual, |.| <= 16)

    The residual term makes V's error about 16x smaller (e4m3 keeps 4 significant bits) for
    one more fp8 product ``P v_lo`` in the attention kernel. Returns ``(v_hi, v_lo, scale)``;
    with ``smooth`` (``y`` from ``v - mean``) ``(v_hi, v_lo, scale, mean)``.
    """
    if smooth:
        mean, scale, inv = value_smoothing(v)
    else:
        (scale, inv), mean = v_scales(v), None
    y = _v_scaled(v, mean, inv)
    v_hi = y.to(FP8_DTYPE)
    v_lo = (y - v_hi.float()).to(FP8_DTYPE)
    return (v_hi, v_lo, scale) if mean is None else (v_hi, v_lo, scale, mean)

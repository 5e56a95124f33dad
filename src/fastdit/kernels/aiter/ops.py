"""aiter implementations of ``rms_norm`` and ``rope_qk_`` (ROCm).

Signatures used, as read in ROCm/aiter (``aiter/__init__.py`` re-exports ``ops.rmsnorm`` and
``ops.rope`` with ``from .ops.<name> import *``):

* ``aiter/ops/rmsnorm.py`` (commit 0bc300f7): ``rmsnorm2d_fwd(input, weight, epsilon,
  use_model_sensitive_rmsnorm=0) -> Tensor`` and ``rmsnorm2d_fwd_with_add(out, input,
  residual_in, residual_out, weight, epsilon, ...) -> None`` with ``residual_out = input +
  residual_in`` and ``out = rmsnorm(residual_out) * weight``. The kernel asserts that weight
  has the input's dtype, that ``out``/``residual_*`` are contiguous and that the input's last
  dimension is contiguous; older releases take 2-D ``[rows, hidden]`` only, so we pass 2-D.
* ``aiter/ops/rope.py``: ``rope_cached_2c_fwd_inplace(input_x, input_y, cos, sin,
  rotate_style, reuse_freqs_front_part, nope_first)``, which runs
  ``rope_cached_2c_fwd_impl(input_x, input_y, input_x, input_y, ...)``. Inputs are "sbhd"
  ``[s, b, h, d]`` (any strides; x and y may have different head counts); cos/sin are
  ``[s, 1, 1, d // 2]`` with ``reuse_freqs_front_part=True``, read at ``s * (d // 2)`` (so
  contiguous); ``rotate_style`` 0 = NeoX (pairs ``(i, i + d/2)``), 1 = GPT-J (pairs
  ``(2i, 2i+1)``, cos index ``i``); ``nope_first=False`` rotates the whole head when the
  rotary size is d. The kernel computes ``x0' = x0 cos - x1 sin``, ``x1' = x1 cos + x0 sin``
  (csrc/kernels/rope/rope_common.h, ``OpCachedFwd::apply_2c``), as our spec.
"""

from __future__ import annotations

import torch

ROTATE_STYLE_NEOX = 0
ROTATE_STYLE_GPTJ = 1


def rms_norm(x, weight, eps=1e-6, *, residual=None, variance_size=None):
    import aiter

    dim = x.shape[-1]
    x2 = x.reshape(-1, dim)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if residual is None:
        return aiter.rmsnorm2d_fwd(x2, weight, float(eps)).reshape(x.shape)
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    residual_out = torch.empty(x2.shape, dtype=residual.dtype, device=x.device)
    residual_in = residual.reshape(-1, dim).contiguous()
    aiter.rmsnorm2d_fwd_with_add(out, x2, residual_in, residual_out, weight, float(eps))
    return out.view(x.shape), residual_out.view(x.shape)


def _sbhd(t: torch.Tensor) -> torch.Tensor:
    """``[T, H, D]`` -> ``[T, 1, H, D]``; ``[B, T, H, D]`` -> ``[T, B, H, D]`` (views)."""
    return t.unsqueeze(1) if t.dim() == 3 else t.transpose(0, 1)


def rope_qk_(q, k, cos, sin, *, positions=None, interleaved=True):
    import aiter

    if positions is not None:
        index = positions.long()
        cos, sin = cos[index], sin[index]
    tokens, half = cos.shape
    cos4 = cos.contiguous().view(tokens, 1, 1, half)
    sin4 = sin.contiguous().view(tokens, 1, 1, half)
    style = ROTATE_STYLE_GPTJ if interleaved else ROTATE_STYLE_NEOX
    aiter.rope_cached_2c_fwd_inplace(_sbhd(q), _sbhd(k), cos4, sin4, style, True, False)
    return q, k

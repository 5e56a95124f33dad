"""Input builders shared by the op tests: random data (never zeros), every broadcast mode."""

from __future__ import annotations

import torch

# name -> function(B, L, D, F) giving the modulation shape (None: a Python number)
MOD_MODES = {
    "number": None,
    "scalar0d": lambda B, L, D, F: (),
    "per_channel": lambda B, L, D, F: (D,),
    "per_row_2d": lambda B, L, D, F: (B, D),
    "per_row_3d": lambda B, L, D, F: (B, 1, D),
    "per_token": lambda B, L, D, F: (B, L, D),
    "per_frame": lambda B, L, D, F: (B, F, 1, D),
}


def rand(shape, dtype=torch.float32, scale=1.0, device="cpu"):
    return (torch.randn(shape, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def modulation(mode, B, L, D, F, dtype=torch.float32, scale=0.5):
    shape_fn = MOD_MODES[mode]
    if shape_fn is None:
        return float(torch.randn(()).item() * scale)
    return rand(shape_fn(B, L, D, F), dtype, scale)


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` in a non-contiguous view (every other element of a wider buffer)."""
    wide = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous() or t.shape[-1] == 1
    return view

"""Runtime LoRA adapters: callables appended to a ``Linear``'s ``adapters`` list, each run
after the layer's product as ``y = adapter(x, y)``.

The adapter adds its branch to ``y`` in place when ``y`` is contiguous (the layer's own fresh
output), so no second output tensor is allocated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _as(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _add_product(y: torch.Tensor, h: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """``y + h @ weight_t`` (in place on a contiguous ``y``); ``h [..., r]``, ``weight_t [r, N]``."""
    if y.is_contiguous():
        y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), weight_t)  # (rows, N)
        return y
    return y + h @ weight_t


class LoraAdapter:
    """``y + (x A^T) B^T + b``: one or several LoRAs stacked along the rank.

    ``down`` is ``A [r, K]``, ``up`` is ``B [N, r]`` with every LoRA's scale (user scale times
    ``alpha / rank``) already folded in, ``bias [N]`` the sum of the scaled bias deltas (or
    None). Several LoRAs on one layer are one adapter of rank ``r1 + r2 + ...``: ``A`` rows and
    ``B`` columns concatenated. Computed in the input's dtype.
    """

    def __init__(self, down: torch.Tensor, up: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, name: str = "") -> None:
        if up is not None and (down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]):
            raise ValueError(f"LoraAdapter {name}: down {list(down.shape)} and up {list(up.shape)} "
                             "must be [r, K] and [N, r]")
        self.down, self.up, self.bias, self.name = down, up, bias, name
        self._up_t = None if up is None else up.t()  # (r, N), a view: addmm reads it transposed

    @property
    def rank(self) -> int:
        return 0 if self.up is None else self.down.shape[0]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.up is not None:
            h = F.linear(x, _as(self.down, x.dtype))  # (..., r)
            y = _add_product(y, h, _as(self._up_t, x.dtype))
        if self.bias is not None:
            bias = _as(self.bias, y.dtype)
            y = y.add_(bias) if y.is_contiguous() else y + bias
        return y

    def __repr__(self) -> str:
        return f"LoraAdapter({self.name!r}, rank={self.rank}, bias={self.bias is not None})"


class DeltaAdapter:
    """``y + x D^T + b`` for a full weight delta ``D [N, K]`` (a ``.diff`` tensor, with any
    low-rank terms on the same layer folded in) kept out of the weight: as costly as the
    layer's own product."""

    def __init__(self, delta: torch.Tensor, bias: torch.Tensor | None = None, name: str = "") -> None:
        self.delta, self.bias, self.name = delta, bias, name

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = _add_product(y, x, _as(self.delta, x.dtype).t())
        if self.bias is not None:
            bias = _as(self.bias, y.dtype)
            y = y.add_(bias) if y.is_contiguous() else y + bias
        return y

    def __repr__(self) -> str:
        return f"DeltaAdapter({self.name!r}, {list(self.delta.shape)})"


def is_lora_adapter(adapter) -> bool:
    return isinstance(adapter, (LoraAdapter, DeltaAdapter))

"""Runtime LoRA adapters: small modules appended to a ``fastdit.layers.linear.Linear``'s
``adapters`` list, each run after the layer's product as ``y = adapter(x, y)``.

Each adapter is also registered as a child module of its ``Linear`` (``lora_adapter_0``, ...)
with its tensors as non-persistent buffers, so it moves with the layer (``model.to(device)``,
an offloaded expert going to the GPU and back) and stays out of ``state_dict()``.

The adapter adds its branch to ``y`` in place when ``y`` is contiguous (the layer's own fresh
output), so no second output tensor is allocated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_PREFIX = "lora_adapter_"


def _as(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _add_product(y: torch.Tensor, h: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """``y + h @ weight_t`` (in place on a contiguous ``y``); ``h [..., r]``, ``weight_t [r, N]``."""
    if y.is_contiguous():
        y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), weight_t)  # (rows, N)
        return y
    return y + h @ weight_t


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return y
    bias = _as(bias, y.dtype)
    return y.add_(bias) if y.is_contiguous() else y + bias


class LoraAdapter(nn.Module):
    """``y + (x A^T) B^T + b``: one or several LoRAs stacked along the rank.

    ``down`` is ``A [r, K]``, ``up`` is ``B [N, r]`` with every LoRA's scale (user scale times
    ``alpha / rank``) already folded in, ``bias [N]`` the sum of the scaled bias deltas (or
    None). Several LoRAs on one layer are one adapter of rank ``r1 + r2 + ...``: ``A`` rows and
    ``B`` columns concatenated. Computed in the input's dtype.
    """

    def __init__(self, down: torch.Tensor, up: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, name: str = "") -> None:
        super().__init__()
        if up is not None and (down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]):
            raise ValueError(f"LoraAdapter {name}: down {list(down.shape)} and up {list(up.shape)} "
                             "must be [r, K] and [N, r]")
        self.name = name
        self.register_buffer("down", down, persistent=False)  # (r, K)
        self.register_buffer("up", up, persistent=False)  # (N, r)
        self.register_buffer("bias", bias, persistent=False)  # (N,)

    @property
    def rank(self) -> int:
        return 0 if self.up is None else self.down.shape[0]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.up is not None:
            h = F.linear(x, _as(self.down, x.dtype))  # (..., r)
            y = _add_product(y, h, _as(self.up, x.dtype).t())  # addmm reads B^T [r, N] as a view
        return _add_bias(y, self.bias)

    def extra_repr(self) -> str:
        return f"{self.name!r}, rank={self.rank}, bias={self.bias is not None}"


class DeltaAdapter(nn.Module):
    """``y + x D^T + b`` for a full weight delta ``D [N, K]`` (a ``.diff`` tensor, with any
    low-rank terms on the same layer folded in) kept out of the weight: as costly as the
    layer's own product."""

    def __init__(self, delta: torch.Tensor, bias: torch.Tensor | None = None, name: str = "") -> None:
        super().__init__()
        self.name = name
        self.register_buffer("delta", delta, persistent=False)  # (N, K)
        self.register_buffer("bias", bias, persistent=False)  # (N,)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = _add_product(y, x, _as(self.delta, x.dtype).t())
        return _add_bias(y, self.bias)

    def extra_repr(self) -> str:
        return f"{self.name!r}, {list(self.delta.shape)}"


def is_lora_adapter(adapter) -> bool:
    return isinstance(adapter, (LoraAdapter, DeltaAdapter))


def attach(layer: nn.Module, adapter: nn.Module) -> None:
    """Append ``adapter`` to ``layer.adapters`` and register it as the layer's child
    ``lora_adapter_<n>`` (so it moves with the layer)."""
    index = sum(1 for name, _ in layer.named_children() if name.startswith(ADAPTER_PREFIX))
    layer.add_module(f"{ADAPTER_PREFIX}{index}", adapter)
    layer.adapters.append(adapter)


def detach_all(layer: nn.Module) -> bool:
    """Remove every LoRA adapter from ``layer`` (list and children); True if it had one."""
    adapters = getattr(layer, "adapters", None)
    had = isinstance(adapters, list) and any(is_lora_adapter(a) for a in adapters)
    if had:
        adapters[:] = [a for a in adapters if not is_lora_adapter(a)]
    for name, child in list(layer.named_children()):
        if name.startswith(ADAPTER_PREFIX) and is_lora_adapter(child):
            delattr(layer, name)
            had = True
    return had

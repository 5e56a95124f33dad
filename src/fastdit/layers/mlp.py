"""Feed-forward and embedding MLPs.

Parameter names follow diffusers (``net.0.proj`` / ``net.2`` for ``FeedForward``,
``linear_1`` / ``linear_2`` for the embedders) so state dicts load both ways.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastdit.layers.linear import Linear
from fastdit.quant.linear import Fp8Activation

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class _Projection(nn.Module):
    """``net.0`` of :class:`FeedForward`: a linear layer named ``proj``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = Linear(dim_in, dim_out)


class FeedForward(nn.Module):
    """``y = W2 act(W1 x + b1) + b2``; ``act`` is GELU with the tanh approximation by default."""

    def __init__(self, dim: int, inner_dim: int, dim_out: int | None = None,
                 activation: str = "gelu_tanh") -> None:
        super().__init__()
        self.activation = activation
        self.act = _activation(activation)
        # net.1 is diffusers' dropout: an identity at inference, kept for the parameter names
        self.net = nn.ModuleList([_Projection(dim, inner_dim), nn.Identity(),
                                  Linear(inner_dim, dim_out or dim)])

    def hidden(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor | Fp8Activation:
        """``act(W1 x + b1)``: ``(..., dim) -> (..., inner)``. When both products run in fp8
        the hidden state comes out in e4m3 with per-token scales (GELU and quantisation in one
        pass), the second product's input."""
        if self.activation == "gelu_tanh":  # fused product + activation where a provider has one
            up = self.net[0].proj
            if up.takes_fp8 and self.net[2].takes_fp8 and not up.adapters:
                return up.gelu_tanh_fp8(x)
            return up.gelu_tanh(x)
        if isinstance(x, Fp8Activation) and not self.net[0].proj.takes_fp8:
            x = x.dequantize()
        return self.act(self.net[0].proj(x))

    def forward(self, x: torch.Tensor | Fp8Activation, chunk_rows: int = 0) -> torch.Tensor:
        """``(..., dim) -> (..., dim_out)``. With ``chunk_rows`` > 0 the rows (tokens over the
        whole batch) go through in slices of that many, each written straight into the output
        by the second product, so at most ``chunk_rows`` rows of the hidden state exist at once.
        ``x`` may be an ``Fp8Activation`` (from an fp8 norm) when the first product is fp8.
        """
        shape = x.shape
        rows = shape.numel() // shape[-1]
        if chunk_rows <= 0 or rows <= chunk_rows:
            return self.net[2](self.hidden(x))  # (..., dim_out)
        out_proj = self.net[2]
        fp8 = isinstance(x, Fp8Activation)
        # (B*L, dim); in e4m3 with (B*L,) scales when fp8
        x2d = x.view_rows() if fp8 else x.reshape(rows, shape[-1])
        out = torch.empty(rows, out_proj.out_features, dtype=x.out_dtype if fp8 else x.dtype,
                          device=(x2d.values if fp8 else x2d).device)  # (B*L, dim_out)
        for start in range(0, rows, chunk_rows):
            part = x2d.rows(start, start + chunk_rows) if fp8 else x2d[start:start + chunk_rows]
            hidden = self.hidden(part)  # (chunk, inner)
            out_proj.into(hidden, out[start:start + chunk_rows])  # a contiguous view: in place
            del hidden  # else it is still held while the next slice's is computed
        return out.view(*shape[:-1], out_proj.out_features)  # (..., dim_out)

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


class MLPEmbedder(nn.Module):
    """``y = linear_2(act(linear_1(x)))``: the timestep (SiLU) and text (GELU tanh) embedders."""

    def __init__(self, dim_in: int, dim: int, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.act = _activation(activation)
        self.linear_1 = Linear(dim_in, dim)
        self.linear_2 = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0
                         ) -> torch.Tensor:
    """``[cos(t w_i), sin(t w_i)]`` with ``w_i = max_period**(-i / (dim/2))``: ``(..., dim)`` fp32.

    The cosines come first (diffusers' ``flip_sin_to_cos=True``, ``downscale_freq_shift=0``,
    the official Wan ``sinusoidal_embedding_1d``); an odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                    device=timesteps.device) / half
    angles = timesteps.float().unsqueeze(-1) * torch.exp(exponent)  # (..., half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb

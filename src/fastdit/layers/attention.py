"""Multi-head attention with RMSNorm across heads on q and k, in-place RoPE, and one
attention choke point (:func:`fastdit.ops.attention`, layout ``[B, L, H, D]``).

Parameter names follow diffusers' ``WanAttention`` (``to_q``, ``to_k``, ``to_v``, ``to_out.0``,
``norm_q``, ``norm_k``, and for image tokens ``add_k_proj``, ``add_v_proj``, ``norm_added_k``),
so state dicts load both ways.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fastdit import ops
from fastdit.layers.linear import Linear
from fastdit.layers.norm import RMSNorm


class Attention(nn.Module):
    """Self-attention (``context=None``) or cross-attention to ``context``.

    ``q = RMSNorm(x Wq)``, ``k = RMSNorm(c Wk)``, ``v = c Wv`` (the norms span all heads, weight
    ``[H*D]``), RoPE rotates q and k in place when ``rope=(cos, sin)`` is given (norm and
    rotation fused in :func:`fastdit.ops.rms_norm_rope_`), then
    ``out = softmax(q k^T / sqrt(D)) v``. With ``added_kv_dim`` the layer also attends to
    image tokens through its own k/v projections and adds the two results (Wan2.1 I2V).
    """

    def __init__(self, dim: int, heads: int, eps: float = 1e-6, added_kv_dim: int | None = None
                 ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim={dim} is not a multiple of heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.to_q = Linear(dim, dim)
        self.to_k = Linear(dim, dim)
        self.to_v = Linear(dim, dim)
        self.to_out = nn.ModuleList([Linear(dim, dim)])
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.add_k_proj = self.add_v_proj = self.norm_added_k = None
        if added_kv_dim is not None:
            self.add_k_proj = Linear(added_kv_dim, dim)
            self.add_v_proj = Linear(added_kv_dim, dim)
            self.norm_added_k = RMSNorm(dim, eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim))  # (B, L, H*D) -> (B, L, H, D)

    def _qkv(self, x: torch.Tensor, source: torch.Tensor,
             rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """q, k, v as ``(B, L|S, H, D)``: normed across heads, q and k rotated when ``rope``."""
        if rope is not None:  # norm and rotation in one pass, in place on the projections
            q = self._heads(self.to_q(x))  # (B, L, H, D)
            k = self._heads(self.to_k(source))  # (B, S, H, D)
            ops.rms_norm_rope_(q, self.norm_q.weight, *rope, eps=self.norm_q.eps)
            ops.rms_norm_rope_(k, self.norm_k.weight, *rope, eps=self.norm_k.eps)
        else:
            q = self._heads(self.norm_q(self.to_q(x)))  # (B, L, H, D)
            k = self._heads(self.norm_k(self.to_k(source)))  # (B, S, H, D)
        v = self._heads(self.to_v(source))  # (B, S, H, D)
        return q, k, v

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                image_context: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, L, C); context (B, S, C) or None; image_context (B, S_img, C_img) or None
        q, k, v = self._qkv(x, x if context is None else context, rope)
        out = ops.attention(q, k, v)  # (B, L, H, D)
        if image_context is not None:
            if self.add_k_proj is None:
                raise ValueError("Attention: image_context given but the layer has no added k/v "
                                 "projections (added_kv_dim=None)")
            k_img = self._heads(self.norm_added_k(self.add_k_proj(image_context)))  # (B, S_img, H, D)
            v_img = self._heads(self.add_v_proj(image_context))
            out = out + ops.attention(q, k_img, v_img)
        del q, k, v  # freed before the output projection allocates
        return self.to_out[0](out.flatten(2))  # (B, L, C)

    def self_attention(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                       attend: Callable[..., torch.Tensor] = ops.attention) -> torch.Tensor:
        """``forward(x, rope=rope)`` that lets go of ``x`` once q, k and v exist.

        A plain method, not a module call (whose argument tuple would hold ``x`` to the end):
        when the caller passes a tensor nothing else refers to, such as a norm's output
        written inline, that ``[B, L, C]`` tensor is freed before attention runs. ``attend``
        is the attention function (``q, k, v [B, L, H, D] -> [B, L, H, D]``): the op itself,
        or a sequence-parallel one that sees the other ranks' tokens.
        """
        q, k, v = self._qkv(x, x, rope)
        del x
        out = attend(q, k, v)  # (B, L, H, D)
        del q, k, v
        return self.to_out[0](out.flatten(2))  # (B, L, C)

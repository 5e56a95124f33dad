"""Example calls of every op at a given size, as a Wan block makes them (``fastdit ops --shape``
asks which provider runs each; benchmarks and tests use them too).

``example_call(op, batch, tokens, dim, heads, dtype, device)`` returns ``(args, kwargs)``:
activations ``[B, L, D]`` in ``dtype``, fp32 modulations ``[B, 1, D]`` (the Wan layout), q/k/v
``[B, L, H, D/H]``, RoPE tables ``[L, D/H/2]`` fp32, the FFN's products ``[B, L, D] x [4D, D]``.
"""

from __future__ import annotations

import torch


def example_call(op: str, batch: int = 1, tokens: int = 1024, dim: int = 1536, heads: int = 12,
                 dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
                 ) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a call of ``op`` at this size (random values)."""
    if dim % heads or (dim // heads) % 2:
        raise ValueError(f"dim={dim} must split into {heads} heads of an even size")
    head_dim = dim // heads

    def rand(*shape, of=dtype):
        return torch.randn(*shape, device=device, dtype=torch.float32).to(of)

    def mod():
        return rand(batch, 1, dim, of=torch.float32) * 0.1

    x = rand(batch, tokens, dim)
    theta = rand(tokens, head_dim // 2, of=torch.float32)
    cos, sin = theta.cos(), theta.sin()
    if op == "rms_norm":
        return (x, rand(dim), 1e-6), {}
    if op in ("layer_norm_scale_shift", "norm_tanh_mul_add"):
        return (x,), {"shift": mod(), "scale": mod()}
    if op == "scale_residual_norm_scale_shift":
        return (rand(batch, tokens, dim, of=torch.float32), x), {
            "shift": mod(), "scale": mod(), "gate": mod()}
    if op == "mul_add":
        return (x, rand(batch, tokens, dim, of=torch.float32)), {"gate": mod()}
    if op == "scale_shift":
        return (x,), {"shift": mod(), "scale": mod()}
    if op == "rope_qk_":
        q, k = (rand(tokens, heads, head_dim) for _ in range(2))
        return (q, k, cos, sin), {}
    if op == "rms_norm_rope_":
        return (rand(batch, tokens, heads, head_dim), rand(dim), cos, sin), {}
    if op == "rope_qk_cache_store":
        block = 16
        blocks = -(-tokens // block)
        q, k, v = (rand(tokens, heads, head_dim) for _ in range(3))
        cache = torch.zeros(blocks, block, heads, head_dim, device=device, dtype=dtype)
        slots = torch.arange(tokens, device=device)
        return (q, k, v, cache, cache.clone(), slots, slots, torch.cat([cos, sin], 1)), {}
    if op == "attention":
        q, k, v = (rand(batch, tokens, heads, head_dim) for _ in range(3))
        return (q, k, v), {}
    if op in ("linear", "linear_gelu_tanh"):
        return (x, rand(4 * dim, dim) * dim ** -0.5, rand(4 * dim)), {}
    if op in ("quantize_fp8", "gelu_tanh_fp8"):
        return (x,), {}
    if op == "linear_fp8":
        w = rand(4 * dim, dim) * dim ** -0.5
        scale = w.float().abs().amax(dim=1) / 448.0
        return (x, (w.float() / scale[:, None]).to(torch.float8_e4m3fn), scale, rand(4 * dim)), {}
    if op == "layer_norm_scale_shift_fp8":
        return (x,), {"shift": mod(), "scale": mod()}
    if op == "scale_residual_norm_scale_shift_fp8":
        return (rand(batch, tokens, dim, of=torch.float32), x), {
            "shift": mod(), "scale": mod(), "gate": mod()}
    if op == "attention_fp8_out":
        q, k, v = (rand(batch, tokens, heads, head_dim) for _ in range(3))
        return (q, k, v), {}
    if op == "channel_rms_norm":  # the VAE decoder's layout: [B, C, T, H, W], here C = D / 16
        channels = max(1, dim // 16)
        video = rand(batch, channels, 1, max(1, tokens // 64), 64)
        return (video, rand(channels)), {"scale": channels ** 0.5, "silu": True}
    raise KeyError(f"no example call for op {op!r}")

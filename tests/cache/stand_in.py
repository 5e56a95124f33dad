"""A tiny float64 transformer with the WanTransformer split (seams.md section 3) and a
BranchModel (section 4): the cached model's exact checks (batched vs separate branches to
1e-12, decision replays). The same properties on the real Wan transformer and pipeline (fp32)
are in tests/pipelines/test_cache_pipeline.py.

``embed(latents, timestep, text, image) -> (x (B, L, D), ctx)``, ``run_blocks(x, ctx, start,
stop)``, ``head(x, ctx) -> (B, C_out, T, H, W)``; ``ctx`` has WanContext's fields. The blocks
are adaLN self-attention + cross-attention + MLP, so tokens mix and branches differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class StandInConfig:
    dim: int = 16
    num_layers: int = 6
    in_channels: int = 4
    out_channels: int = 4
    text_dim: int = 8
    patch_size: tuple[int, int, int] = (1, 2, 2)
    image_dim: int | None = None
    freq_dim: int = 8


@dataclass
class StandInContext:
    grid: tuple[int, int, int]
    temb: torch.Tensor  # (B, D)
    temb6: torch.Tensor  # (B, 6, D) fp32 (here: the model dtype, float64)
    text: torch.Tensor  # (B, S, D)
    image: torch.Tensor | None
    rope: tuple[torch.Tensor, torch.Tensor]
    tokens: tuple[int, int]
    self_attention: Any = None
    block_hooks: Any = None


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


class StandInBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.cross_q, self.cross_kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.ff1, self.ff2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, ctx: StandInContext) -> torch.Tensor:
        shift, scale, gate, c_shift, c_scale, c_gate = (self.table + ctx.temb6).split(1, dim=1)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        x = x + gate * _attend(q, k, v)
        k, v = self.cross_kv(ctx.text).chunk(2, dim=-1)
        x = x + _attend(self.cross_q(F.layer_norm(x, x.shape[-1:])), k, v)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + c_scale) + c_shift
        return x + c_gate * self.ff2(F.gelu(self.ff1(h)))


class StandInTransformer(nn.Module):
    def __init__(self, config: StandInConfig = StandInConfig(), seed: int = 0,
                 dtype: torch.dtype = torch.float64, device: str = "cpu") -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.config = c = config
        self.patch = nn.Conv3d(c.in_channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.time1, self.time2 = nn.Linear(c.freq_dim, c.dim), nn.Linear(c.dim, c.dim)
        self.time_proj = nn.Linear(c.dim, 6 * c.dim)
        self.text_proj = nn.Linear(c.text_dim, c.dim)
        self.blocks = nn.ModuleList(StandInBlock(c.dim) for _ in range(c.num_layers))
        self.out_table = nn.Parameter(torch.randn(1, 2, c.dim) / c.dim**0.5)
        self.proj_out = nn.Linear(c.dim, c.out_channels * math.prod(c.patch_size))
        self.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.block_calls = 0  # blocks run, summed over calls (tests count skipped work)

    def embed(self, latents, timestep, text_embeds, image_embeds=None):
        batch = latents.shape[0]
        x = self.patch(latents)  # (B, D, F, H, W)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)  # (B, L, D)
        half = self.config.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=x.dtype, device=x.device) / half)
        angles = timestep.to(x.dtype).reshape(-1, 1).expand(batch, 1) * freqs  # (B, half)
        temb = self.time2(F.silu(self.time1(torch.cat([angles.cos(), angles.sin()], dim=-1))))
        temb6 = self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))  # (B, 6, D)
        rope = (x.new_ones(x.shape[1], 1), x.new_zeros(x.shape[1], 1))
        ctx = StandInContext(grid, temb, temb6, self.text_proj(text_embeds), image_embeds, rope,
                             (0, x.shape[1]))
        return x, ctx

    def run_blocks(self, x, ctx, start: int = 0, stop: int | None = None):
        for block in self.blocks[start:stop]:
            x = block(x, ctx)
            self.block_calls += 1
        return x

    def head(self, x, ctx):
        shift, scale = (self.out_table + ctx.temb.unsqueeze(1)).split(1, dim=1)
        x = self.proj_out(F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift)  # (B, L, C*p)
        (f, h, w), (pt, ph, pw) = ctx.grid, self.config.patch_size
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], x.shape[1], f * pt, h * ph, w * pw)

    def forward(self, latents, timestep, text_embeds, image_embeds=None):
        x, ctx = self.embed(latents, timestep, text_embeds, image_embeds)
        return self.head(self.run_blocks(x, ctx), ctx)


class StandInBranchModel:
    """``model(x, t, which) -> [noise per branch]``, the branches as one batch."""

    def __init__(self, transformer: StandInTransformer, texts: Sequence[torch.Tensor]) -> None:
        self.transformer, self.texts = transformer, list(texts)  # each (1, S, text_dim)

    def inputs(self, x, t, which):
        batch = x.shape[0]
        latents = torch.cat([x] * len(which))
        timestep = t.reshape(-1).expand(batch).repeat(len(which))
        text = torch.cat([self.texts[b].expand(batch, -1, -1) for b in which])
        return latents, timestep, text, None

    def __call__(self, x, t, which):
        x0, ctx = self.transformer.embed(*self.inputs(x, t, which))
        out = self.transformer.head(self.transformer.run_blocks(x0, ctx), ctx)
        return list(out.split(x.shape[0]))


def make_branch_model(seed: int = 0, config: StandInConfig = StandInConfig(),
                      dtype: torch.dtype = torch.float64, device: str = "cpu") -> StandInBranchModel:
    transformer = StandInTransformer(config, seed=seed, dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(seed + 100)
    texts = [torch.randn(1, 5, config.text_dim, generator=generator, dtype=torch.float64).to(device, dtype)
             for _ in range(2)]
    return StandInBranchModel(transformer, texts)


def timesteps(num_steps: int, shift: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-matching sigmas (shifted, N + 1 values down to 0) and timesteps ``1000 sigma``."""
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    sigmas = shift * s / (1 + (shift - 1) * s)
    return sigmas, sigmas[:-1] * 1000


def denoise(strategy, models, num_steps: int, plan: Sequence[int] | None = None, seed: int = 0,
            shape=(1, 4, 2, 4, 4), device: str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Euler flow matching: ``x += (sigma_{i+1} - sigma_i) * strategy(model, x, t_i, i)``."""
    plan = list(plan) if plan is not None else [0] * num_steps
    sigmas, ts = timesteps(num_steps)
    sigmas, ts = sigmas.to(device), ts.to(device)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)
    for i in range(num_steps):
        noise = strategy(models[plan[i]], x, ts[i], i)
        x = x + (sigmas[i + 1] - sigmas[i]) * noise
    return x


class CFGStrategy:
    """The seam's ``CFG(scale, mode)``: one batch of 2, or two calls."""

    def __init__(self, scale: float = 5.0, mode: str = "batched") -> None:
        self.scale, self.mode = scale, mode

    def __call__(self, model, x, t, step):
        if self.mode == "batched":
            cond, uncond = model(x, t, [0, 1])
        else:
            (cond,), (uncond,) = model(x, t, [0]), model(x, t, [1])
        return uncond + self.scale * (cond - uncond)

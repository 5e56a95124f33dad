"""The Wan diffusion transformer (Wan2.1 / Wan2.2: T2V, I2V, TI2V) on fastdit's layers and ops.

One block, in the order diffusers' ``WanTransformerBlock`` runs it (``mod`` = the block's
``scale_shift_table + temb``, six rows, fp32)::

    h = LayerNorm(x) * (1 + scale) + shift                        # norm1
    x, h = x + gate * SelfAttn(h, rope),  LayerNorm_affine(x)     # norm2 (cross_attn_norm)
    x, h = x + CrossAttn(h, text [, image]),  LayerNorm(x) * (1 + c_scale) + c_shift   # norm3
    x = x + c_gate * FFN(h)

Modulations, norms and residual sums are computed in fp32 and stored in the model dtype, as
diffusers and the official code do; each line above is one fused op. Parameter names are
diffusers' (``blocks.0.attn1.to_q.weight``, ...), so ``state_dict()`` loads into diffusers'
``WanTransformer3DModel`` and back. Loading from checkpoints lives in :mod:`.checkpoint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastdit import ops
from fastdit.config import get_config
from fastdit.layers import (
    Attention,
    FeedForward,
    LayerNorm,
    LayerNormScaleShift,
    Linear,
    MLPEmbedder,
    RotaryEmbedding3D,
    ScaleResidualNormScaleShift,
    sinusoidal_embedding,
)
from fastdit.models.wan.configs import WanConfig
from fastdit.ops._checks import describe
from fastdit.quant.config import PrecisionConfig, fuse_norm_quantization

#: Parameters kept in fp32 whatever the model dtype: any whose dotted name contains one of
#: these parts (diffusers' ``_keep_in_fp32_modules`` for Wan, applied the same way).
FP32_PARTS = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")


def keeps_fp32(name: str) -> bool:
    return any(part in FP32_PARTS for part in name.split("."))


@dataclass(frozen=True)
class TransformerPlan:
    """Where the subsystems attach to a DiT, as data (read by offload, parallelism, caching).

    * ``blocks``: the ``nn.ModuleList`` attribute holding the blocks: the unit of offload and
      the body that sequence parallelism runs on a shard of the tokens.
    * ``sequence_dim``: the token dimension of the hidden state ``x (B, L, D)`` that sequence
      parallelism splits after :meth:`embed` and gathers before :meth:`head`.
    * ``self_attention`` / ``local_attention``: the attention of a block that sees the whole
      sequence (it goes through ``WanContext.self_attention``), and those that stay local
      (cross-attention to text and image tokens).
    * ``cache_signals``: the :class:`WanContext` fields a step cache may read (the timestep
      embedding and the six modulation rows of every block).
    """

    blocks: str = "blocks"
    sequence_dim: int = 1
    self_attention: str = "attn1"
    local_attention: tuple[str, ...] = ("attn2",)
    cache_signals: tuple[str, ...] = ("temb", "temb6")


class BlockHooks:
    """Called around every block by :meth:`WanTransformer.run_blocks` (offload streams weights
    through these); the base class does nothing."""

    def before_block(self, index: int) -> None:
        return None

    def after_block(self, index: int) -> None:
        return None


@dataclass(frozen=True)
class WanContext:
    """Everything the blocks and the head need besides the hidden state, built by ``embed``.

    ``grid`` (F, H, W) in patches; ``temb`` (B, [T,] D) in the model dtype; ``temb6`` fp32
    (B, [T,] 6, D); ``text`` (B, S, D); ``image`` (B, S_img, D) or None; ``rope`` the (cos, sin)
    tables ``(tokens, D_head/2)`` of the tokens ``x`` holds; ``tokens`` the global range
    ``[start, stop)`` of those tokens (the whole sequence unless sequence parallelism split it);
    ``self_attention`` the attention function the blocks call for self-attention (``q, k, v
    [B, L, H, D] -> [B, L, H, D]``; sequence parallelism replaces it); ``block_hooks`` None or
    a :class:`BlockHooks`.
    """

    grid: tuple[int, int, int]
    temb: torch.Tensor
    temb6: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor | None
    rope: tuple[torch.Tensor, torch.Tensor]
    tokens: tuple[int, int]
    self_attention: Callable[..., torch.Tensor] = field(default=ops.attention)
    block_hooks: BlockHooks | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """Tokens of the whole sequence (``F * H * W``)."""
        return math.prod(self.grid)


class WanImageEmbedding(nn.Module):
    """CLIP image tokens -> model width: LayerNorm -> Linear, GELU, Linear -> LayerNorm.

    With ``pos_embed_seq_len`` (FLF2V) the two images' tokens of a batch row are joined into
    one sequence and a learned position embedding is added first.
    """

    def __init__(self, image_dim: int, dim: int, pos_embed_seq_len: int | None = None) -> None:
        super().__init__()
        self.norm1 = LayerNorm(image_dim, eps=1e-5)
        self.ff = FeedForward(image_dim, image_dim, dim, activation="gelu")
        self.norm2 = LayerNorm(dim, eps=1e-5)
        self.pos_embed = (nn.Parameter(torch.zeros(1, pos_embed_seq_len, image_dim))
                          if pos_embed_seq_len is not None else None)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            _, tokens, width = image.shape
            image = image.view(-1, 2 * tokens, width) + self.pos_embed  # (B/2, 2 S_img, C_img)
        return self.norm2(self.ff(self.norm1(image)))  # (B, S_img, D)


class WanConditionEmbedder(nn.Module):
    """Timestep, text and image conditions, computed once per forward.

    ``temb = MLP_silu(sinusoid(t))`` (fp32 weights, result in the model dtype),
    ``temb6 = Linear(silu(temb))`` split into six modulation rows; text tokens go through a
    GELU-tanh MLP. ``t`` is ``[B]``, or ``[B, T]`` with one value per token or per latent frame
    (Wan2.2 TI2V).
    """

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        dim = config.dim
        self.freq_dim = config.freq_dim
        self.time_embedder = MLPEmbedder(config.freq_dim, dim, activation="silu")
        self.time_proj = Linear(dim, 6 * dim)
        self.text_embedder = MLPEmbedder(config.text_dim, dim, activation="gelu_tanh")
        self.image_embedder = (WanImageEmbedding(config.image_dim, dim, config.pos_embed_seq_len)
                               if config.has_image_input else None)

    def forward(self, timestep: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None):
        freq = sinusoidal_embedding(timestep, self.freq_dim)  # ([B] or [B, T], freq_dim) fp32
        temb = self.time_embedder(freq.to(self.time_embedder.linear_1.weight.dtype))
        temb = temb.to(text.dtype)  # (B, D) or (B, T, D)
        temb6 = self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))  # (B, 6, D) or (B, T, 6, D)
        text = self.text_embedder(text)  # (B, S, D)
        if image is not None:
            image = self.image_embedder(image)  # (B, S_img, D)
        return temb, temb6, text, image


class WanBlock(nn.Module):
    """adaLN self-attention with 3D RoPE, cross-attention to text (and image) tokens, FFN.

    When the linear layers run in fp8 (a precision setting, :mod:`fastdit.quant.apply`), the
    norms that feed them emit e4m3 values with per-token scales themselves (one pass, no
    separate quantisation): always for q/k/v, for the single-consumer norms (cross-attention
    query, FFN) where that pays (:func:`fastdit.quant.config.fuse_norm_quantization`).
    """

    def __init__(self, config: WanConfig, ffn_chunk_tokens: int = 0) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.ffn_chunk_tokens = ffn_chunk_tokens  # tokens per FFN slice (0: all at once)
        self.norm1 = LayerNormScaleShift(dim, eps)
        self.attn1 = Attention(dim, config.num_attention_heads, eps)
        self.norm2 = (ScaleResidualNormScaleShift(dim, eps, elementwise_affine=True)
                      if config.cross_attn_norm else None)
        self.attn2 = Attention(dim, config.num_attention_heads, eps,
                               added_kv_dim=config.added_kv_proj_dim)
        self.norm3 = ScaleResidualNormScaleShift(dim, eps)
        self.ffn = FeedForward(dim, config.ffn_dim, activation="gelu_tanh")
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, ctx: WanContext) -> torch.Tensor:
        # x (B, L, D); ctx.temb6 fp32 (B, 6, D), or (B, T, 6, D) per token (T = L) or per
        # frame; ctx.text (B, S, D)
        mod = self.scale_shift_table + ctx.temb6  # (B, [T,] 6, D) fp32
        # each (B, 1, D), or (B, T, 1, D): the ops' per-frame mode, per token when T = L
        shift, scale, gate, c_shift, c_scale, c_gate = mod.split(1, dim=-2)

        # Activation memory: the norm output goes inline so it is freed once q, k, v exist,
        # and each [B, L, D] tensor is deleted as soon as it is dead.
        norm1 = self.norm1.fp8 if self.attn1.to_q.takes_fp8 else self.norm1
        attn = self.attn1.self_attention(norm1(x, shift, scale), ctx.rope,
                                         attend=ctx.self_attention)  # (B, L, D)
        if self.norm2 is not None:
            norm2 = self.norm2.fp8 if self._fuses(self.attn2.to_q) else self.norm2
            h, x = norm2(x, attn, gate)  # x += gate * attn; h = LayerNorm_affine(x)
        else:
            x = h = ops.mul_add(attn, x, gate=gate)
        del attn
        attn = self.attn2(h, ctx.text, image_context=ctx.image)
        del h
        norm3 = self.norm3.fp8 if self._fuses(self.ffn.net[0].proj) else self.norm3
        h, x = norm3(x, attn, 1, c_shift, c_scale)  # x += attn; h = adaLN(x)
        del attn
        ffn = self.ffn(h, chunk_rows=self.ffn_chunk_tokens)
        del h
        return ops.mul_add(ffn, x, gate=c_gate)  # x + c_gate * FFN(h)

    @staticmethod
    def _fuses(consumer: Linear) -> bool:
        """Whether a norm feeding only ``consumer`` should emit e4m3 itself."""
        return consumer.takes_fp8 and fuse_norm_quantization(consumer.in_features, 1)


class WanTransformer(nn.Module):
    """Wan DiT: ``model(latents, timestep, text_embeds, image_embeds=None) -> [B, C_out, T, H, W]``.

    * ``latents``: ``[B, in_channels, T, H, W]`` (I2V: noise and condition channels already
      concatenated); T, H, W divisible by the patch size.
    * ``timestep``: ``[B]`` (or one value), or per token ``[B, L]`` with ``L`` the number of
      patches (Wan2.2 TI2V holds the first frame at t=0 this way), or per latent frame
      ``[B, F]`` (the same result as the per-token form with each frame's value repeated over
      its tokens, for a fraction of the modulation work).
    * ``text_embeds``: ``[B, S, text_dim]`` (UMT5 states); ``image_embeds``: ``[B, 257,
      image_dim]`` CLIP states for Wan2.1 I2V models (FLF2V: ``[2B, 257, image_dim]``, first
      and last frame of each row), None otherwise.

    Equal to diffusers' ``WanTransformer3DModel(latents, timestep, text_embeds,
    encoder_hidden_states_image=image_embeds).sample`` for the same weights.
    """

    #: where offload, sequence parallelism and step caches attach (see :class:`TransformerPlan`)
    PLAN = TransformerPlan()

    def __init__(self, config: WanConfig, ffn_chunk_tokens: int | None = None) -> None:
        super().__init__()
        self.config = config
        dim, patch = config.dim, config.patch_size
        if ffn_chunk_tokens is None:  # bound once, at construction (MemoryConfig)
            ffn_chunk_tokens = get_config().memory.ffn_chunk_tokens
        self.rope = RotaryEmbedding3D(config.attention_head_dim)
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, kernel_size=patch, stride=patch)
        self.condition_embedder = WanConditionEmbedder(config)
        self.blocks = nn.ModuleList(WanBlock(config, ffn_chunk_tokens) for _ in range(config.num_layers))
        self.norm_out = LayerNormScaleShift(dim, config.eps)
        self.proj_out = Linear(dim, config.out_channels * math.prod(patch))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        # the precision the model runs in (exact by default) and the attention function its
        # blocks' self-attention calls (``ops.attention``; a precision setting binds its
        # 8-bit provider here): both set by fastdit.quant.apply.apply_precision
        self.precision = PrecisionConfig()
        self.attend: Callable[..., torch.Tensor] = ops.attention

    # ------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def _check_inputs(self, latents, timestep, text_embeds, image_embeds) -> tuple[int, int, int]:
        cfg = self.config
        if not isinstance(latents, torch.Tensor) or latents.dim() != 5 \
                or latents.shape[1] != cfg.in_channels:
            raise ValueError(f"WanTransformer: latents must be [B, {cfg.in_channels}, T, H, W], got "
                             f"{_shape(latents)}")
        batch, _, *sizes = latents.shape
        if any(s % p for s, p in zip(sizes, cfg.patch_size)):
            raise ValueError(f"WanTransformer: latent T, H, W {tuple(sizes)} must be divisible by "
                             f"the patch size {cfg.patch_size}")
        grid = tuple(s // p for s, p in zip(sizes, cfg.patch_size))
        tokens = math.prod(grid)
        if not isinstance(timestep, torch.Tensor) or not (
                timestep.dim() == 0 or (timestep.dim() == 1 and timestep.shape[0] in (1, batch))
                or (timestep.dim() == 2 and timestep.shape[0] in (1, batch)
                    and timestep.shape[1] in (tokens, grid[0]))):
            raise ValueError(f"WanTransformer: timestep must be [B={batch}], per token "
                             f"[B, L={tokens}] or per frame [B, F={grid[0]}], got "
                             f"{_shape(timestep)}")
        if not isinstance(text_embeds, torch.Tensor) or text_embeds.dim() != 3 \
                or text_embeds.shape[0] != batch or text_embeds.shape[2] != cfg.text_dim:
            raise ValueError(f"WanTransformer: text_embeds must be [B={batch}, S, {cfg.text_dim}], "
                             f"got {_shape(text_embeds)}")
        if cfg.has_image_input:
            # FLF2V: first- and last-frame tokens, [2B, S_img, C] with 2 * S_img == pos_embed_seq_len
            images, tokens_img = ((2 * batch, cfg.pos_embed_seq_len // 2) if cfg.pos_embed_seq_len
                                  else (batch, None))
            if not isinstance(image_embeds, torch.Tensor) or image_embeds.dim() != 3 \
                    or image_embeds.shape[0] != images or image_embeds.shape[2] != cfg.image_dim \
                    or tokens_img not in (None, image_embeds.shape[1]):
                raise ValueError(f"WanTransformer: this image-conditioned model needs image_embeds "
                                 f"[{images}, {tokens_img or 'S_img'}, {cfg.image_dim}], got "
                                 f"{_shape(image_embeds)}")
        elif image_embeds is not None:
            raise ValueError("WanTransformer: image_embeds given, but this model has no image "
                             "embedder (image_dim=None)")
        for name, t in (("latents", latents), ("text_embeds", text_embeds),
                        ("image_embeds", image_embeds)):
            if isinstance(t, torch.Tensor) and t.device != self.device:
                raise ValueError(f"WanTransformer: {name} is on {t.device}, the model on "
                                 f"{self.device}")
        return grid  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text_embeds: torch.Tensor,
                image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        x, ctx = self.embed(latents, timestep, text_embeds, image_embeds)
        return self.head(self.run_blocks(x, ctx), ctx)

    def embed(self, latents: torch.Tensor, timestep: torch.Tensor, text_embeds: torch.Tensor,
              image_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, WanContext]:
        """Patch embedding and the conditions: ``x (B, L, D)`` and the :class:`WanContext`."""
        grid = self._check_inputs(latents, timestep, text_embeds, image_embeds)
        batch, dtype = latents.shape[0], self.dtype
        x = self.patch_embedding(latents.to(dtype))  # (B, D, F, H, W)
        x = x.flatten(2).transpose(1, 2).contiguous()  # (B, L, D)

        timestep = timestep.to(latents.device)  # schedulers often keep timesteps on the CPU
        if timestep.dim() == 0 or timestep.shape[0] != batch:  # one value (or row) for all
            timestep = timestep.expand(batch, *timestep.shape[1:])
        temb, temb6, text, image = self.condition_embedder(
            timestep, text_embeds.to(dtype), None if image_embeds is None else image_embeds.to(dtype))
        tokens = (0, math.prod(grid))
        ctx = WanContext(grid=grid, temb=temb, temb6=temb6.float(),  # fp32 once for all blocks
                         text=text, image=image, rope=self.rope_for(grid, latents.device),
                         tokens=tokens, self_attention=self.attend)
        return x, ctx

    def run_blocks(self, x: torch.Tensor, ctx: WanContext, start: int = 0,
                   stop: int | None = None) -> torch.Tensor:
        """Blocks ``start .. stop - 1`` on ``x (B, L, D)`` (the tokens ``ctx.tokens`` names)."""
        stop = len(self.blocks) if stop is None else stop
        hooks = ctx.block_hooks
        for index in range(start, stop):
            if hooks is not None:
                hooks.before_block(index)
            x = self.blocks[index](x, ctx)
            if hooks is not None:
                hooks.after_block(index)
        return x

    def head(self, x: torch.Tensor, ctx: WanContext) -> torch.Tensor:
        """Output adaLN, projection and unpatchify: ``(B, L, D) -> (B, C_out, T, H, W)``."""
        # (shift, scale) = scale_shift_table + temb, fp32, each (B, [T,] 1, D)
        shift, scale = (self.scale_shift_table + ctx.temb.unsqueeze(-2)).split(1, dim=-2)
        x = self.proj_out(self.norm_out(x, shift, scale))  # (B, L, C_out * pt * ph * pw)
        return self.unpatchify(x, ctx.grid)

    def rope_for(self, grid: tuple[int, int, int], device: torch.device,
                 tokens: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (cos, sin) ``(stop - start, D_head/2)`` fp32 for the tokens ``[start, stop)`` of
        the frame-major sequence of ``grid`` (global positions; the whole sequence by default)."""
        cos, sin = self.rope(*grid, device)  # (L, D_head/2) each
        if tokens is None or tuple(tokens) == (0, cos.shape[0]):
            return cos, sin
        start, stop = tokens
        return cos[start:stop], sin[start:stop]

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``(B, F*H*W, C*pt*ph*pw)`` -> ``(B, C, F*pt, H*ph, W*pw)``."""
        (frames, height, width), (pt, ph, pw) = grid, self.config.patch_size
        x = x.reshape(x.shape[0], frames, height, width, pt, ph, pw, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, F, pt, H, ph, W, pw)
        return x.reshape(x.shape[0], x.shape[1], frames * pt, height * ph, width * pw)

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: WanConfig | str | dict, dtype: torch.dtype = torch.bfloat16,
                    device: str | torch.device = "cpu", seed: int | None = None) -> "WanTransformer":
        """A randomly initialised model (nn defaults, as diffusers' ``from_config``), built on
        the meta device and materialised straight in ``dtype`` on ``device`` (the fp32 parameters
        stay fp32). ``config`` is a :class:`WanConfig`, a name in ``WAN_CONFIGS``, or a
        diffusers config dict."""
        from fastdit.models.wan.checkpoint import materialize, resolve_config

        config = resolve_config(config)
        device, dtype = _device_dtype(device, dtype)
        with torch.device("meta"):
            model = cls(config)
        materialize(model, dtype, device)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        model.init_weights(generator)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | PathLike, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu", subfolder: str | None = None
                        ) -> "WanTransformer":
        """Load a diffusers model root (``transformer/`` inside, or ``subfolder=``), a transformer
        folder, or a folder in the official Wan layout. Tensors go from memory-mapped
        safetensors straight to ``device`` in ``dtype`` (fp32 for :data:`FP32_PARTS`)."""
        from fastdit.models.wan.checkpoint import load_pretrained

        device, dtype = _device_dtype(device, dtype)
        return load_pretrained(cls, path, dtype=dtype, device=device, subfolder=subfolder)

    def save_pretrained(self, folder: str | PathLike, max_shard_size: int | None = None,
                        layout: str = "diffusers") -> None:
        """Write ``config.json`` and safetensors (sharded above ``max_shard_size`` bytes) in the
        diffusers layout, or with ``layout="original"`` under the official Wan key names."""
        from fastdit.models.wan.checkpoint import save_pretrained

        save_pretrained(self, folder, max_shard_size=max_shard_size, layout=layout)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random initialisation in place: torch's defaults for linear and conv layers, ones and
        zeros for norms, ``randn / sqrt(dim)`` for the modulation tables, zero position embedding."""
        for module in self.modules():
            if isinstance(module, (Linear, nn.Conv3d)):
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                # torch's default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.uniform_(-bound, bound, generator=generator)
            elif hasattr(module, "reset_parameters") and module is not self:
                module.reset_parameters()
        dim = self.config.dim
        for name, param in self.named_parameters():
            if name.endswith("scale_shift_table"):
                param.copy_(torch.randn(param.shape, generator=generator, device=param.device,
                                        dtype=torch.float32) / dim**0.5)
            elif name.endswith("pos_embed"):
                param.zero_()


def _device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    """The loaders' defaults: the CPU, bf16."""
    return torch.device(device if device is not None else "cpu"), (
        dtype if dtype is not None else torch.bfloat16)


def _shape(value) -> str:
    """A tensor's shape and dtype (anything else: its type or repr) for the input errors."""
    return describe(value, device=False)

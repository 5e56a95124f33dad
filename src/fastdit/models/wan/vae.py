"""The Wan VAE decode with fastdit ops, on diffusers' ``AutoencoderKLWan`` and its weights.

    video = decode(vae, z)          # == vae.decode(z).sample, to rounding; z [B, z_dim, T, h, w]

The same computation as diffusers' ``AutoencoderKLWan._decode`` (0.42): ``post_quant_conv``,
then the decoder once per latent frame with a cache of each causal convolution's last two
input frames, the frames concatenated, unpatchified (Wan2.2) and clamped to [-1, 1]. Two
pieces of every residual block and of the head run differently, with the same numbers:

* **norm + SiLU**: diffusers' ``WanRMS_norm`` then ``nn.SiLU`` (eight passes over the tensor,
  three of them in fp32) become one :func:`fastdit.ops.channel_rms_norm` call with
  ``silu=True``, which replicates their roundings;
* **causal convolution**: ``cat(cache, x)`` then ``F.pad`` (two copies of the input) becomes
  the concatenation alone, or a time-only pad for the first chunk, with the spatial zero
  padding done by the convolution itself (``padding=(0, ph, pw)``): one copy.

The rest (the mid block's attention, the up-samplers with their time convolutions, Wan2.2's
``DupUp3D`` shortcuts) runs diffusers' own modules, which take the same cache list. Tiled
decoding stays diffusers' (:meth:`AutoencoderKLWan.tiled_decode`).
"""

from __future__ import annotations

import logging

from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T, unpatchify  # the module it runs
from torch import nn

from fastdit import ops

log = logging.getLogger("fastdit.models")

#: ``vae_decoder`` choice -> :func:`decode` keywords (None: diffusers' ``vae.decode``)
DECODERS: dict[str, dict | None] = {"diffusers": None, "fastdit": {"channels_last": False},
                                    "fastdit-channels-last": {"channels_last": True}}


def supports(vae) -> str | None:
    """None when :func:`decode` covers ``vae`` (a diffusers ``AutoencoderKLWan`` with SiLU
    activations and channel-first norms), else why not."""
    if type(vae).__name__ != "AutoencoderKLWan":
        return f"{type(vae).__name__} is not diffusers' AutoencoderKLWan"
    blocks = [m for m in vae.decoder.modules() if type(m).__name__ == "WanResidualBlock"]
    if not blocks or any(not isinstance(b.nonlinearity, nn.SiLU) for b in blocks):
        return "its residual blocks do not use SiLU"
    if not isinstance(vae.decoder.nonlinearity, nn.SiLU):
        return "its decoder head does not use SiLU"
    norms = [m for m in vae.decoder.modules() if type(m).__name__ == "WanRMS_norm"]
    if any(not n.channel_first for n in norms):
        return "it has channel-last norms"
    return None


def decoder_for(vae, choice: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``z -> video`` for a ``vae_decoder`` choice (:data:`DECODERS`), None for diffusers' own
    ``vae.decode``. Raises ValueError for an unknown choice or a VAE :func:`supports` refuses."""
    if choice not in DECODERS:
        raise ValueError(f"vae_decoder must be one of {', '.join(DECODERS)}, got {choice!r}")
    keywords = DECODERS[choice]
    if keywords is None:
        return None
    if (reason := supports(vae)) is not None:
        raise ValueError(f"fastdit's VAE decode cannot run this VAE: {reason}")
    return lambda z: decode(vae, z, **keywords)


@torch.no_grad()
def decode(vae, z: torch.Tensor, channels_last: bool = False, frames_per_chunk: int = 1) -> torch.Tensor:
    """``vae.decode(z).sample`` with fastdit's norm and convolution paths (module docstring).

    ``z [B, z_dim, T, h, w]`` in the VAE's dtype (already un-normalised, as ``vae.decode``
    takes it); returns ``[B, 3, F, H, W]`` in [-1, 1]. ``channels_last``: the activations in
    ``torch.channels_last_3d`` (NDHWC, what cuDNN's tensor-core convolutions take without a
    transpose) with channels-last copies of the causal convolutions' weights made for this
    call; the same values, other kernels. ``frames_per_chunk``: latent frames decoded together
    after the first (which is always alone, as diffusers decodes it): the causal caches make
    any chunking the same computation (the up-samplers' zero-padded first time convolution
    included), larger chunks make larger convolutions and fewer cache copies, for activation
    memory that grows with the chunk. Raises ValueError for a VAE that :func:`supports`
    refuses, or for ``frames_per_chunk < 1``."""
    if isinstance(frames_per_chunk, bool) or not isinstance(frames_per_chunk, int) or frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be an integer >= 1, got {frames_per_chunk!r}")
    reason = supports(vae)
    if reason is not None:
        raise ValueError(f"fastdit's VAE decode cannot run this VAE: {reason}")
    height, width = z.shape[-2:]
    ratio = vae.spatial_compression_ratio
    if vae.use_tiling and (width > vae.tile_sample_min_width // ratio
                           or height > vae.tile_sample_min_height // ratio):
        log.info("VAE decode in tiles: diffusers' tiled_decode (fastdit's decode covers untiled decoding)")
        return vae.tiled_decode(z, return_dict=False)[0]
    run = _Decode(vae, channels_last, frames_per_chunk)
    if vae.use_slicing and z.shape[0] > 1:
        return torch.cat([run(part) for part in z.split(1)])
    return run(z)


def _causal_convs(decoder: nn.Module) -> int:
    """Cache slots the decoder uses: one per causal convolution (diffusers counts the same)."""
    return sum(type(m).__name__ == "WanCausalConv3d" for m in decoder.modules())


def _norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``silu(WanRMS_norm(x))``: ``x / ||x||_C * sqrt(C) * gamma (+ bias)``, then SiLU."""
    bias = norm.bias if isinstance(norm.bias, torch.Tensor) else None
    return ops.channel_rms_norm(x, norm.gamma, bias, scale=norm.scale, silu=True)


class _Decode:
    """One decode call: the chunk loop and the pieces, in one memory layout."""

    def __init__(self, vae, channels_last: bool, frames_per_chunk: int = 1) -> None:
        self.vae, self.channels_last, self.frames_per_chunk = vae, channels_last, frames_per_chunk
        self.layout = torch.channels_last_3d if channels_last else torch.contiguous_format
        self._weights: dict[int, torch.Tensor] = {}  # channels-last copies, per convolution

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        cache: list = [None] * _causal_convs(vae.decoder)
        x = self.conv(vae.post_quant_conv, self.arranged(z), None)  # (B, z_dim, T, h, w)
        frames, step = [], self.frames_per_chunk
        starts = [0] + list(range(1, x.shape[2], step))  # the first latent frame alone, then chunks
        for start in starts:
            stop = 1 if start == 0 else min(start + step, x.shape[2])
            frames.append(self.decoder(x[:, :, start:stop], cache, [0], first_chunk=start == 0))
        out = torch.cat(frames, dim=2).contiguous()  # (B, C_out, F, H, W)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return torch.clamp(out, min=-1.0, max=1.0)

    def arranged(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in this call's layout (a copy only when it is not in it)."""
        return x if x.is_contiguous(memory_format=self.layout) else x.contiguous(memory_format=self.layout)

    def weight(self, conv: nn.Module) -> torch.Tensor:
        if not self.channels_last:
            return conv.weight
        found = self._weights.get(id(conv))
        if found is None:
            found = self._weights[id(conv)] = conv.weight.contiguous(memory_format=torch.channels_last_3d)
        return found

    def conv(self, conv: nn.Module, x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """``WanCausalConv3d.forward(x, previous)``: ``previous`` (the last input frames of the
        chunk before, or None) in front of ``x``, zero frames for the rest of the causal time
        padding, the spatial zero padding inside the convolution."""
        pad_w, _, pad_h, _, pad_t, _ = conv._padding  # (W left, W right, H top, H bottom, T front, T back)
        if previous is not None and pad_t > 0:
            x = torch.cat([previous.to(x.device), x], dim=2)  # (B, C, T + cached, H, W)
            pad_t -= previous.shape[2]
        if pad_t > 0:
            x = F.pad(x, (0, 0, 0, 0, pad_t, 0))  # zero frames in front only
        x = self.arranged(x)
        return F.conv3d(x, self.weight(conv), conv.bias, conv.stride, (0, pad_h, pad_w), conv.dilation,
                        conv.groups)

    def cached_conv(self, conv: nn.Module, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
        """A causal convolution in the chunked decode: its input's last frames go to ``cache``
        for the next chunk (two, the older one from the cache when this chunk has one frame)."""
        slot = idx[0]
        keep = x[:, :, -CACHE_T:].clone()  # (B, C, <= 2, H, W)
        if keep.shape[2] < CACHE_T and cache[slot] is not None:
            keep = torch.cat([cache[slot][:, :, -1:].to(keep.device), keep], dim=2)
        out = self.conv(conv, x, cache[slot])
        cache[slot] = keep
        idx[0] += 1
        return out

    def residual_block(self, block: nn.Module, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
        """``WanResidualBlock``: ``conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x)``."""
        # after an up-sampler x is a permuted view (or, channels-last, a contiguous tensor): one
        # copy here serves the norm (the Triton kernel takes one layout) and the convolutions
        x = self.arranged(x)
        shortcut = block.conv_shortcut
        h = shortcut(x) if isinstance(shortcut, nn.Identity) else self.conv(shortcut, x, None)
        x = self.cached_conv(block.conv1, _norm_silu(block.norm1, x), cache, idx)
        x = self.cached_conv(block.conv2, _norm_silu(block.norm2, x), cache, idx)  # dropout: eval
        return x + h

    def up_block(self, up: nn.Module, x: torch.Tensor, cache: list, idx: list, first_chunk: bool) -> torch.Tensor:
        """``WanUpBlock`` (Wan2.1) or ``WanResidualUpBlock`` (Wan2.2: plus a ``DupUp3D`` shortcut)."""
        shortcut = getattr(up, "avg_shortcut", None)
        block_input = x  # nothing below writes into it
        for resnet in up.resnets:
            x = self.residual_block(resnet, x, cache, idx)
        upsamplers = getattr(up, "upsamplers", None)
        upsampler = upsamplers[0] if upsamplers else getattr(up, "upsampler", None)
        if upsampler is not None:
            x = upsampler(x, feat_cache=cache, feat_idx=idx)
        if shortcut is not None:
            x = x + shortcut(block_input, first_chunk=first_chunk)
        return x

    def decoder(self, x: torch.Tensor, cache: list, idx: list, first_chunk: bool) -> torch.Tensor:
        """``WanDecoder3d.forward`` on one chunk: conv_in, the mid block, the up blocks, the head."""
        decoder = self.vae.decoder
        x = self.cached_conv(decoder.conv_in, x, cache, idx)
        mid = decoder.mid_block
        x = self.residual_block(mid.resnets[0], x, cache, idx)
        for attention, resnet in zip(mid.attentions, mid.resnets[1:]):
            if attention is not None:
                x = attention(x)
            x = self.residual_block(resnet, x, cache, idx)
        for up in decoder.up_blocks:
            x = self.up_block(up, x, cache, idx, first_chunk)
        return self.cached_conv(decoder.conv_out, _norm_silu(decoder.norm_out, self.arranged(x)), cache, idx)

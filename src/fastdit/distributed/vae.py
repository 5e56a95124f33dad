"""Parallel decode for diffusers' ``AutoencoderKLWan``, exact against ``vae.decode``.

The latent video ``z [B, C, T, H, W]`` (identical on every rank) is cut along its height into
contiguous bands of rows, one per rank; each rank decodes its band and one all-gather joins
the bands. fastdit walks diffusers' decoder submodules itself (their forwards are called; the
frame-by-frame feature cache is kept as ``AutoencoderKLWan._decode`` keeps it) so that:

* every 3x3 spatial convolution (the causal 3D convolutions, the 2D convolution after each
  2x upsampling) sees its neighbours' rows: before it, one row is exchanged with each
  neighbouring band (a halo, point-to-point), the convolution runs on the band plus halos
  with its usual zero padding, and the rows computed from the halos are cropped. The causal
  feature cache stores the band *with* its halos, so the cached frames are exact too;
* the middle block's spatial self-attention, global over a latent frame, all-gathers the band
  (latent resolution, small), and each rank computes the attention output of its own rows
  (queries of its band, keys and values of the whole frame);
* everything else (RMS norms over channels, SiLU, 1x1 convolutions, the temporal 3x1x1
  convolutions, nearest upsampling, the Wan2.2 ``DupUp3D`` shortcut and ``unpatchify``) works
  per pixel or per row and needs no neighbour.

The result equals the single-device decode up to fp32 rounding of the convolutions on
differently sized inputs. Decode work per rank falls as ``1 / ranks`` (plus one halo row per
side per convolution).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fastdit.distributed.groups import global_rank, group_rank, group_size
from fastdit.distributed.sequence import pad_to

ROWS = 3  # the height dimension of [B, C, T, H, W]


def row_bands(height: int, ranks: int) -> list[tuple[int, int]]:
    """Contiguous bands ``[start, stop)`` of ``height`` rows, sizes differing by at most one."""
    if height < ranks:
        raise ValueError(f"parallel VAE decode: {height} latent rows cannot be split over "
                         f"{ranks} ranks (at least one row each)")
    base, extra = divmod(height, ranks)
    bands, start = [], 0
    for index in range(ranks):
        stop = start + base + (index < extra)
        bands.append((start, stop))
        start = stop
    return bands


class _Halo:
    """Row exchange with the bands above and below, and the cropping that undoes it."""

    def __init__(self, group):
        self.group = group
        self.ranks, self.index = group_size(group), group_rank(group)
        self.up = self.index > 0
        self.down = self.index < self.ranks - 1

    def attach(self, x: torch.Tensor, rows: int = 1) -> torch.Tensor:
        """``x`` with ``rows`` rows of each neighbouring band prepended/appended."""
        if self.ranks == 1 or rows == 0:
            return x
        ops, top, bottom = [], None, None
        if self.up:
            peer = global_rank(self.group, self.index - 1)
            top = torch.empty_like(x[:, :, :, :rows], memory_format=torch.contiguous_format)
            ops += [dist.P2POp(dist.isend, x[:, :, :, :rows].contiguous(), peer, self.group),
                    dist.P2POp(dist.irecv, top, peer, self.group)]
        if self.down:
            peer = global_rank(self.group, self.index + 1)
            bottom = torch.empty_like(x[:, :, :, -rows:], memory_format=torch.contiguous_format)
            ops += [dist.P2POp(dist.isend, x[:, :, :, -rows:].contiguous(), peer, self.group),
                    dist.P2POp(dist.irecv, bottom, peer, self.group)]
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        return torch.cat([t for t in (top, x, bottom) if t is not None], dim=ROWS)

    def crop(self, x: torch.Tensor, rows: int = 1) -> torch.Tensor:
        """Drop the ``rows`` rows computed from each attached halo."""
        if self.ranks == 1 or rows == 0:
            return x
        start = rows if self.up else 0
        stop = x.shape[ROWS] - (rows if self.down else 0)
        return x[:, :, :, start:stop]

    def gather_rows(self, x: torch.Tensor, bands: list[tuple[int, int]], scale: int = 1) -> torch.Tensor:
        """All bands joined: each rank's ``x`` holds ``scale`` rows per band row."""
        if self.ranks == 1:
            return x
        most = max(stop - start for start, stop in bands) * scale
        mine = pad_to(x, most, ROWS).contiguous()
        parts = [torch.empty_like(mine) for _ in bands]
        dist.all_gather(parts, mine, group=self.group)
        return torch.cat([p[:, :, :, :(stop - start) * scale] for p, (start, stop) in zip(parts, bands)],
                         dim=ROWS)


class _FeatureCache:
    """diffusers' per-convolution cache of the last two input frames (``feat_cache``/``feat_idx``)."""

    def __init__(self) -> None:
        self.slots: list = []
        self.index = 0

    def start_frame(self) -> None:
        self.index = 0

    def get(self):
        if self.index == len(self.slots):
            self.slots.append(None)
        return self.slots[self.index]

    def put(self, value) -> None:
        self.slots[self.index] = value
        self.index += 1


class ParallelWanDecoder:
    """Band-parallel walk over ``vae.decoder`` (a diffusers ``WanDecoder3d``)."""

    def __init__(self, vae, group):
        from diffusers.models.autoencoders import autoencoder_kl_wan as wan

        self.wan, self.vae, self.decoder = wan, vae, vae.decoder
        self.halo = _Halo(group)
        self.cache_t = wan.CACHE_T
        self._check_structure()

    def _check_structure(self) -> None:
        wan, decoder = self.wan, self.decoder
        if not isinstance(decoder, wan.WanDecoder3d):
            raise TypeError(f"parallel VAE decode needs diffusers' WanDecoder3d, got {type(decoder).__name__}")
        for block in decoder.up_blocks:
            if not isinstance(block, (wan.WanUpBlock, wan.WanResidualUpBlock)):
                raise TypeError(f"parallel VAE decode: unknown decoder block {type(block).__name__}")
        if any(not isinstance(a, wan.WanAttentionBlock) for a in decoder.mid_block.attentions):
            raise TypeError("parallel VAE decode: unknown attention block in the decoder's middle block")

    # ---- one causal convolution with its cache ------------------------------------------
    def cached_conv(self, conv, x: torch.Tensor, cache: _FeatureCache) -> torch.Tensor:
        """``conv(x, cached frames)`` exactly as diffusers' callers run it, on the band + halo."""
        rows = conv._padding[2]  # spatial padding of the causal conv (1 for 3x3x3)
        x = self.halo.attach(x, rows)
        previous = cache.get()
        cache_x = x[:, :, -self.cache_t:].clone()
        if cache_x.shape[2] < 2 and previous is not None:  # cache the last frame of the last two chunks
            cache_x = torch.cat([previous[:, :, -1:].to(cache_x.device), cache_x], dim=2)
        out = conv(x, previous)
        cache.put(cache_x)
        return self.halo.crop(out, rows)

    # ---- diffusers' blocks, walked --------------------------------------------------------
    def residual(self, block, x: torch.Tensor, cache: _FeatureCache) -> torch.Tensor:
        """``WanResidualBlock``: shortcut + conv2(silu(norm2(conv1(silu(norm1(x))))))."""
        h = block.conv_shortcut(x)  # 1x1x1 or identity: per pixel
        x = block.nonlinearity(block.norm1(x))
        x = self.cached_conv(block.conv1, x, cache)
        x = block.dropout(block.nonlinearity(block.norm2(x)))
        x = self.cached_conv(block.conv2, x, cache)
        return x + h

    def attention(self, block, x: torch.Tensor, bands: list[tuple[int, int]]) -> torch.Tensor:
        """``WanAttentionBlock`` (one head over the H*W pixels of each frame): the band's
        queries against the whole frame's keys and values."""
        identity = x
        full = self.halo.gather_rows(x, bands)  # (B, C, T, H, W)
        batch, channels, time, height, width = full.shape
        start, stop = bands[self.halo.index]
        frames = full.permute(0, 2, 1, 3, 4).reshape(batch * time, channels, height, width)
        qkv = block.to_qkv(block.norm(frames))  # (B*T, 3C, H, W): 1x1 convs, per pixel
        q = qkv[:, :channels, start:stop]  # this band's queries
        q = q.reshape(batch * time, 1, channels, -1).permute(0, 1, 3, 2)  # (B*T, 1, h*W, C)
        kv = qkv[:, channels:].reshape(batch * time, 1, 2 * channels, -1).permute(0, 1, 3, 2)
        k, v = kv.chunk(2, dim=-1)  # (B*T, 1, H*W, C) each
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        rows = stop - start
        out = out.squeeze(1).permute(0, 2, 1).reshape(batch * time, channels, rows, width)
        out = block.proj(out)
        out = out.view(batch, time, channels, rows, width).permute(0, 2, 1, 3, 4)
        return out + identity

    def resample(self, block, x: torch.Tensor, cache: _FeatureCache) -> torch.Tensor:
        """``WanResample`` in the decoder's modes (upsample2d / upsample3d)."""
        wan = self.wan
        b, c, t, h, w = x.shape
        if block.mode == "upsample3d":  # temporal 3x1x1 conv: per pixel, no halo
            previous = cache.get()
            if previous is None:
                cache.put("Rep")
            else:
                cache_x = x[:, :, -wan.CACHE_T:].clone()
                if cache_x.shape[2] < 2 and not _is_rep(previous):
                    cache_x = torch.cat([previous[:, :, -1:].to(cache_x.device), cache_x], dim=2)
                if cache_x.shape[2] < 2 and _is_rep(previous):
                    cache_x = torch.cat([torch.zeros_like(cache_x), cache_x], dim=2)
                x = block.time_conv(x) if _is_rep(previous) else block.time_conv(x, previous)
                cache.put(cache_x)
                x = x.reshape(b, 2, c, t, h, w)
                x = torch.stack((x[:, 0], x[:, 1]), 3).reshape(b, c, t * 2, h, w)
        elif block.mode != "upsample2d":
            raise TypeError(f"parallel VAE decode: resample mode {block.mode!r} in a decoder")
        x = self.halo.attach(x, 1)  # the 3x3 conv after the 2x upsampling needs one row each side
        t, h = x.shape[2], x.shape[3]
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = block.resample(x)  # nearest 2x, then Conv2d 3x3
        x = x.view(b, t, x.size(1), x.size(2), x.size(3)).permute(0, 2, 1, 3, 4)
        return self.halo.crop(x, 2)  # the two upsampled rows of each halo row

    def up_block(self, block, x: torch.Tensor, cache: _FeatureCache, first_chunk: bool) -> torch.Tensor:
        wan = self.wan
        shortcut = x.clone() if isinstance(block, wan.WanResidualUpBlock) else None
        for resnet in block.resnets:
            x = self.residual(resnet, x, cache)
        if isinstance(block, wan.WanResidualUpBlock):
            if block.upsampler is not None:
                x = self.resample(block.upsampler, x, cache)
            if block.avg_shortcut is not None:  # DupUp3D: channels to pixels, per row
                x = x + block.avg_shortcut(shortcut, first_chunk=first_chunk)
        elif block.upsamplers is not None:
            x = self.resample(block.upsamplers[0], x, cache)
        return x

    def frame(self, x: torch.Tensor, cache: _FeatureCache, bands, first_chunk: bool) -> torch.Tensor:
        """``WanDecoder3d.forward`` on one latent frame of this rank's band."""
        decoder = self.decoder
        cache.start_frame()
        x = self.cached_conv(decoder.conv_in, x, cache)
        mid = decoder.mid_block
        x = self.residual(mid.resnets[0], x, cache)
        for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
            x = self.attention(attn, x, bands)
            x = self.residual(resnet, x, cache)
        for block in decoder.up_blocks:
            x = self.up_block(block, x, cache, first_chunk)
        x = decoder.nonlinearity(decoder.norm_out(x))
        return self.cached_conv(decoder.conv_out, x, cache)


def _is_rep(value) -> bool:
    return isinstance(value, str) and value == "Rep"


@torch.no_grad()
def parallel_vae_decode(vae, z: torch.Tensor, group) -> torch.Tensor:
    """``vae.decode(z).sample`` (without tiling) decoded by the ranks of ``group`` together.

    ``z [B, z_dim, T, H, W]`` must be the same on every rank of ``group``; every rank returns
    the whole video ``[B, C_out, T_out, H_out, W_out]`` clamped to ``[-1, 1]``. With
    ``group=None`` this is a one-rank decode through the same code.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    walker = ParallelWanDecoder(vae, group)
    bands = row_bands(z.shape[ROWS], walker.halo.ranks)
    start, stop = bands[walker.halo.index]
    x = vae.post_quant_conv(z[:, :, :, start:stop])  # 1x1x1: per pixel
    cache = _FeatureCache()
    frames = [walker.frame(x[:, :, i:i + 1], cache, bands, first_chunk=i == 0) for i in range(x.shape[2])]
    out = torch.cat(frames, dim=2)
    patch = vae.config.patch_size
    if patch is not None:
        out = unpatchify(out, patch_size=patch)
    scale = out.shape[ROWS] // (stop - start)  # output rows per latent row (8, or 16 for Wan2.2)
    out = walker.halo.gather_rows(out, bands, scale)
    return torch.clamp(out, min=-1.0, max=1.0)

"""The layouts, inputs and tiny models that the spawned ranks and the single-process
references share (built the same way on both sides)."""

from __future__ import annotations

import torch

from fastdit.models.wan.configs import WanConfig

HEAD_DIM = 8
# name -> (ParallelConfig fields, world size, sequence length, heads)
ATTENTION_CASES = {
    "ulysses2-L16": (dict(ulysses=2), 2, 16, 4),
    "ulysses2-L13": (dict(ulysses=2), 2, 13, 4),  # padded to 14
    "ring2-L13": (dict(ring=2), 2, 13, 3),  # 3 heads: Ring takes any count
    "ring4-L13": (dict(ring=4), 4, 13, 3),  # padded to 16
    "ring4-L9": (dict(ring=4), 4, 9, 3),  # padded to 12: rank 3 holds only padding
    "usp2x2-L16": (dict(ulysses=2, ring=2), 4, 16, 4),
    "usp2x2-L13": (dict(ulysses=2, ring=2), 4, 13, 4),
    "usp2x2-L9": (dict(ulysses=2, ring=2), 4, 9, 2),
}
# the tiny transformer's forwards: name -> (ParallelConfig fields, world size)
TRANSFORMER_CASES = {
    "ulysses2": (dict(ulysses=2), 2),
    "ring2": (dict(ring=2), 2),
    "ring4": (dict(ring=4), 4),
    "usp2x2": (dict(ulysses=2, ring=2), 4),
}
CFG_CASES = {"cfg2": (dict(cfg=2), 2), "cfg2xulysses2": (dict(cfg=2, ulysses=2), 4)}
GUIDANCE_SCALE = 4.0
VAE_LATENTS = {"wan21": (1, 16, 3, 7, 6), "wan22": (2, 48, 2, 5, 4)}  # 7 and 5 rows: uneven bands
LATENTS = (1, 16, 3, 6, 10)  # grid (3, 3, 5): 45 tokens, padded over 2 and 4 ranks

TINY_TRANSFORMER = WanConfig(num_attention_heads=2, attention_head_dim=16, in_channels=16,
                             out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                             rope_max_seq_len=32)


def attention_inputs(length: int, heads: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1000 * length + heads)
    return tuple(torch.randn(2, length, heads, HEAD_DIM, generator=g) for _ in range(3))


def transformer_inputs() -> dict[str, torch.Tensor]:
    """Latents, a per-frame timestep (exercises the per-token modulation split) and two texts."""
    g = torch.Generator().manual_seed(7)
    return {"latents": torch.randn(*LATENTS, generator=g),
            "timestep": torch.tensor([[0.0, 700.0, 700.0]]),
            "text": torch.randn(1, 5, 32, generator=g),
            "negative": torch.randn(1, 5, 32, generator=g)}


def vae_latents(name: str) -> torch.Tensor:
    return torch.randn(*VAE_LATENTS[name], generator=torch.Generator().manual_seed(11))


def build_models():
    """The tiny Wan2.1 and Wan2.2 VAEs and the tiny transformer (fp32, random)."""
    from fastdit.models.wan.transformer import WanTransformer
    from fastdit.pipelines.tiny import _amplify_decoder, _perturb, _vae

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        vaes = {}
        for name in VAE_LATENTS:
            vae = _vae(wan22=name == "wan22")
            _perturb(vae)
            _amplify_decoder(vae)
            vaes[name] = vae.eval()
    model = WanTransformer.from_config(TINY_TRANSFORMER, dtype=torch.float32, seed=5)
    return vaes, model


def empty_models():
    """The same architectures, to load saved weights into."""
    from fastdit.models.wan.transformer import WanTransformer
    from fastdit.pipelines.tiny import _vae

    vaes = {name: _vae(wan22=name == "wan22").eval() for name in VAE_LATENTS}
    return vaes, WanTransformer.from_config(TINY_TRANSFORMER, dtype=torch.float32)

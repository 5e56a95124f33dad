"""The Wan forward runs wholly on the Triton provider (strict mode: no op may fall back) and
equals the native forward, on the CPU under TRITON_INTERPRET=1 (the GPU benchmarks run the
same model on the GPU kernels)."""

import pytest
import torch

from fastdit.config import KernelConfig, override_config
from fastdit.models.wan import WanTransformer
from fastdit.models.wan.configs import WanConfig

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="interpreter test: Triton kernels take CPU tensors only there")


@pytest.mark.parametrize("per_token", [False, True])
def test_forward_on_triton_in_strict_mode_equals_native(per_token):
    cfg = WanConfig(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2,
                    text_dim=32, freq_dim=16)
    model = WanTransformer.from_config(cfg, dtype=torch.float32, device="cpu", seed=0)
    latents = torch.randn(2, 16, 3, 8, 8)
    tokens = 3 * 4 * 4
    timestep = torch.rand(2, tokens) * 1000 if per_token else torch.tensor([900.0, 100.0])
    text = torch.randn(2, 7, 32)
    with torch.no_grad():
        ref = model(latents, timestep, text)
        kernel = KernelConfig(default_providers=("triton",), strict=True, triton_interpret=True)
        with override_config(kernel=kernel):
            out = model(latents, timestep, text)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5

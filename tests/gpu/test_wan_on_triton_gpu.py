"""GPU twin of tests/models/test_wan_on_triton.py: the Wan forward with every op that has a
Triton kernel on the Triton provider, strict mode (no op may fall back), equals the native
forward, on the GPU kernels."""

import pytest
import torch

from fastdit.config import KernelConfig, override_config
from fastdit.models.wan import WanTransformer
from fastdit.models.wan.configs import WanConfig

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("per_token", [False, True])
def test_forward_on_triton_gpu_in_strict_mode_equals_native(per_token):
    pytest.importorskip("triton")
    cfg = WanConfig(num_attention_heads=2, attention_head_dim=64, ffn_dim=256, num_layers=2,
                    text_dim=64, freq_dim=32)
    model = WanTransformer.from_config(cfg, dtype=torch.float32, device="cuda", seed=0)
    latents = torch.randn(2, 16, 3, 16, 16, device="cuda")
    tokens = 3 * 8 * 8
    timestep = (torch.rand(2, tokens, device="cuda") * 1000 if per_token
                else torch.tensor([900.0, 100.0], device="cuda"))
    text = torch.randn(2, 7, 64, device="cuda")
    native = KernelConfig(default_providers=("native",), op_providers={"attention": ("sdpa",)})
    # the products have no Triton kernel: native names them, so strict mode holds for all ops
    # (on CUDA the first available linear_gelu_tanh provider, cuBLASLt, declines fp32)
    triton = KernelConfig(default_providers=("triton",), strict=True,
                          op_providers={"linear_gelu_tanh": ("native",), "linear": ("native",)})
    with torch.no_grad():
        with override_config(kernel=native):
            ref = model(latents, timestep, text)
        with override_config(kernel=triton):
            out = model(latents, timestep, text)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5

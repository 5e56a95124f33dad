"""GPU-only: every provider available on the GPU against the native spec, on the GPU.

Skipped on machines without a GPU (the CPU suite covers the same cases under the Triton
interpreter); run by benchmarks/gpu_run.sh on the device machine. Covers the Triton, aiter,
cuBLASLt and ``compiled`` providers on the op cases of tests/ops/test_providers.py (the
compiled provider on the light cases, as on the CPU), every attention provider on the grid of
tests/ops/attention_cases.py, the compiled provider over many shapes in one process, and a
Wan block compiled with inductor (the custom ops in its graph) against the eager block.
"""

import logging

import pytest
import torch

from fastdit.ops.registry import call_provider, is_supported, providers
from tests.ops import test_attention_providers as attention_grid
from tests.ops.test_providers import CASES, LIGHT_PROVIDERS, _tensors
from tests.ops.tolerances import TOLERANCES, assert_close

pytestmark = pytest.mark.gpu


def _to_cuda(value):
    if isinstance(value, torch.Tensor):
        return value.to("cuda")
    if isinstance(value, tuple):
        return tuple(_to_cuda(v) for v in value)
    return value


def _params():
    params = []
    for op, cases in CASES.items():
        for name in providers(op):
            if name == "native":
                continue
            for case in cases:
                if name in LIGHT_PROVIDERS and not case.light:
                    continue
                params.append(pytest.param(op, name, case, id=f"{op}-{name}-{case.id}"))
    return params


def _build(case):
    torch.manual_seed(99)
    args, kwargs = case.build()
    return _to_cuda(args), {k: _to_cuda(v) for k, v in kwargs.items()}


@pytest.mark.parametrize("op,provider,case", _params())
def test_gpu_provider_matches_native(op, provider, case):
    if not is_supported(providers(op)[provider]):
        pytest.skip(f"{provider} not available")
    args, kwargs = _build(case)
    if not providers(op)[provider].supports_args(*args, **kwargs):
        pytest.skip(f"{provider} does not take this case (dtype/shape)")
    out = call_provider(op, provider, *args, **kwargs)
    ref_args, ref_kwargs = _build(case)
    ref = call_provider(op, "native", *ref_args, **ref_kwargs)
    for a, b in zip(_tensors(out), _tensors(ref)):
        assert_close(a, b)
    for a, b in zip(_tensors(args), _tensors(ref_args)):
        if b.dtype in TOLERANCES:
            assert_close(a, b)
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("name,case,dtype,device", attention_grid._params("cuda"))
def test_gpu_attention_provider_matches_native(name, case, dtype, device):
    attention_grid.check_provider(name, case, dtype, device)


def test_gpu_attention_sdpa_wan_shape():
    q, k, v = (torch.randn(1, 300, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = call_provider("attention", "sdpa", q, k, v)
    ref = call_provider("attention", "native", q, k, v)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_gpu_compiled_provider_over_many_lengths(fresh_config, caplog):
    """The compiled provider, forced for the modulated norm, over 30 sequence lengths at the
    14B width (where CUDA's default order runs it): no exception, no fall-back warning."""
    import fastdit.ops as ops
    from fastdit.config import KernelConfig, override_config
    from fastdit.ops.norm import layer_norm_scale_shift_native

    mod = torch.randn(1, 1, 5120, device="cuda") * 0.1
    kernel = KernelConfig(op_providers={"layer_norm_scale_shift": ("compiled",)}, strict=True)
    with override_config(kernel=kernel), caplog.at_level(logging.WARNING, logger="fastdit.ops"):
        for length in range(100, 3100, 100):
            x = torch.randn(1, length, 5120, device="cuda", dtype=torch.bfloat16)
            out = ops.layer_norm_scale_shift(x, shift=mod, scale=mod)
            assert_close(out, layer_norm_scale_shift_native(x, shift=mod, scale=mod))
    assert not [r for r in caplog.records if r.name == "fastdit.ops" and r.levelno >= logging.WARNING]


def test_gpu_wan_block_compiled_with_inductor_equals_eager():
    """One bf16 Wan block compiled (fullgraph, inductor: the fastdit custom ops stay opaque
    nodes, the rest is generated) against the eager block on the GPU."""
    from fastdit.models.wan import WanTransformer
    from fastdit.models.wan.transformer import WanContext
    from tests.models.wan_helpers import T2V

    model = WanTransformer.from_config(T2V, dtype=torch.bfloat16, device="cuda", seed=0)
    block = model.blocks[0]
    grid, batch, dim = (2, 6, 8), 2, T2V.dim
    cos, sin = model.rope(*grid, torch.device("cuda"))
    ctx = WanContext(grid=grid, temb=torch.randn(batch, dim, device="cuda", dtype=torch.bfloat16),
                     temb6=torch.randn(batch, 6, dim, device="cuda"),
                     text=torch.randn(batch, 7, dim, device="cuda", dtype=torch.bfloat16),
                     image=None, rope=(cos, sin), tokens=(0, 96))
    x = torch.randn(batch, 96, dim, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        out = torch.compile(block, fullgraph=True)(x.clone(), ctx)
        ref = block(x.clone(), ctx)
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)

"""GPU-only: every provider available on the GPU against the native spec, on the GPU.

Skipped on machines without a GPU (the CPU suite covers the same cases under the Triton
interpreter); run by benchmarks/gpu_run.sh on the device machine.
"""

import pytest
import torch

from fastdit.ops.registry import call_provider, is_supported, providers
from tests.ops.test_providers import CASES, _tensors
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
        for name, provider in providers(op).items():
            if name in ("native", "compiled"):
                continue
            for case in cases:
                params.append(pytest.param(op, name, case, id=f"{op}-{name}-{case.id}"))
    return params


def _run(op, provider, case):
    torch.manual_seed(99)
    args, kwargs = case.build()
    args, kwargs = _to_cuda(args), {k: _to_cuda(v) for k, v in kwargs.items()}
    return call_provider(op, provider, *args, **kwargs), args


@pytest.mark.parametrize("op,provider,case", _params())
def test_gpu_provider_matches_native(op, provider, case):
    if not is_supported(providers(op)[provider]):
        pytest.skip(f"{provider} not available")
    args, kwargs = case.build()
    if not providers(op)[provider].supports_args(*_to_cuda(args), **{k: _to_cuda(v) for k, v in kwargs.items()}):
        pytest.skip(f"{provider} does not take this case (dtype/shape)")
    out, args = _run(op, provider, case)
    ref, ref_args = _run(op, "native", case)
    for a, b in zip(_tensors(out), _tensors(ref)):
        assert_close(a, b)
    for a, b in zip(_tensors(args), _tensors(ref_args)):
        if b.dtype in TOLERANCES:
            assert_close(a, b)
        else:
            assert torch.equal(a, b)


def test_attention_sdpa_matches_native_on_gpu():
    q, k, v = (torch.randn(1, 300, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = call_provider("attention", "sdpa", q, k, v)
    ref = call_provider("attention", "native", q, k, v)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)

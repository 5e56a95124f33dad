"""Every attention provider available here against the native spec (fp32 math), over the grid
of tests/ops/attention_cases.py; and the op itself (its dispatch plan) on every case. Lossy
providers (exact=False) are held to a cosine similarity instead of the exact tolerance."""

from __future__ import annotations

import pytest
import torch

import fastdit.ops as ops
from fastdit.ops.registry import call_provider, is_supported, providers
from tests.ops.attention_cases import (
    ATTENTION_TOLERANCES,
    CASES,
    LOSSY_MIN_COSINE,
    build,
    case_id,
    cosine,
)


def _params(device: str):
    """Every (available provider, case) pair the provider's predicate accepts: a case a provider
    declines (a mask for the 8-bit kernels, say) is not a test of it, so it is left out here
    rather than skipped; test_every_provider_takes_cases checks nothing is left out wholesale."""
    params = []
    for name, provider in providers("attention").items():
        if name == "native" or not is_supported(provider) or (device != "cpu" and not _gpu_ok()):
            continue
        for case, dtype in CASES:
            if device == "cpu":
                args, kwargs = build(case, dtype, device)
                if not provider.supports_args(*args, **kwargs):
                    continue
            params.append(pytest.param(name, case, dtype, device,
                                       id=f"{name}-{case_id(case, dtype)}"))
    return params


def _gpu_ok() -> bool:
    return torch.cuda.is_available()


def check_provider(name, case, dtype, device):
    args, kwargs = build(case, dtype, device)
    provider = providers("attention")[name]
    if not provider.supports_args(*args, **kwargs):  # GPU-side grid: the predicate decides there
        pytest.skip(f"{name} does not take {case.id} in {dtype} (its predicate says no)")
    out = call_provider("attention", name, *args, **kwargs)
    ref = call_provider("attention", "native", *args, **kwargs)
    assert out.shape == ref.shape == args[0].shape and out.dtype == dtype
    if provider.exact:
        torch.testing.assert_close(out.float(), ref.float(), **ATTENTION_TOLERANCES[dtype])
    else:
        assert cosine(out, ref) >= LOSSY_MIN_COSINE


def test_every_provider_takes_cases():
    """Each available provider accepts a good part of the grid (the filter above drops none
    wholesale)."""
    for name, provider in providers("attention").items():
        if name == "native" or not is_supported(provider):
            continue
        taken = sum(provider.supports_args(*build(c, d, "cpu")[0], **build(c, d, "cpu")[1])
                    for c, d in CASES)
        assert taken >= len(CASES) // 3, f"{name} takes only {taken} of {len(CASES)} cases"


@pytest.mark.parametrize("name,case,dtype,device", _params("cpu"))
def test_attention_provider_matches_native(name, case, dtype, device):
    check_provider(name, case, dtype, device)


@pytest.mark.parametrize("case,dtype", CASES, ids=[case_id(c, d) for c, d in CASES])
def test_attention_op_matches_native(case, dtype):
    """ops.attention (whatever provider its plan picks here) against the native spec, and the
    native spec against a float64 softmax computed here."""
    args, kwargs = build(case, dtype)
    out = ops.attention(*args, **kwargs)
    ref = call_provider("attention", "native", *args, **kwargs)
    torch.testing.assert_close(out.float(), ref.float(), **ATTENTION_TOLERANCES[dtype])
    torch.testing.assert_close(ref.double(), _reference64(case, *args, **kwargs).to(dtype).double(),
                               **ATTENTION_TOLERANCES[dtype])


def _reference64(case, q, k, v, *, causal, scale, attn_mask=None):
    q64, k64, v64 = (t.double().transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    groups = q64.shape[1] // k64.shape[1]
    k64, v64 = k64.repeat_interleave(groups, 1), v64.repeat_interleave(groups, 1)
    scores = q64 @ k64.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    lq, lk = scores.shape[-2:]
    if causal:
        keep = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                  else scores + attn_mask.double())
    return (scores.softmax(-1) @ v64).transpose(1, 2)


def test_grid_covers_every_provider_registered():
    """The grid parametrizes every registered attention provider that is available here; the
    others are named with the reason they are not."""
    from fastdit.ops.registry import availability

    tested = {p.values[0] for p in _params("cpu")}
    for name, provider in providers("attention").items():
        ok, reason = availability(provider)
        assert (name in tested) == (ok and name != "native"), (name, reason)
    assert "sdpa" in tested

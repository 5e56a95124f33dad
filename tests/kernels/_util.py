"""Helpers of the Triton kernel tests: run a provider and the native spec on copies of the same
inputs and compare every output and every tensor argument afterwards (in-place writes)."""

from __future__ import annotations

import torch

from fastdit.ops.registry import call_provider
from tests.ops.tolerances import TOLERANCES, assert_close


def rand(shape, dtype=torch.float32, device="cpu", scale=1.0):
    return (torch.randn(shape) * scale).to(device=device, dtype=dtype)


def _clone(value):
    # the reference gets a dense copy: the native spec takes any layout, and only values are
    # compared afterwards
    return value.clone() if isinstance(value, torch.Tensor) else value


def compare(op, *args, provider="triton", check_args=True, **kwargs):
    """Run ``op`` with ``provider`` and with ``native`` on copies; compare the results and
    (``check_args``) every tensor argument after the call. Returns the provider's result."""
    ref_args = [_clone(a) for a in args]
    ref_kwargs = {k: _clone(v) for k, v in kwargs.items()}
    expected = call_provider(op, "native", *ref_args, **ref_kwargs)
    actual = call_provider(op, provider, *args, **kwargs)
    _compare(expected, actual, op)
    if check_args:
        for i, (a, r) in enumerate(zip(args, ref_args)):
            if isinstance(a, torch.Tensor):
                _compare(r, a, f"{op} argument {i}")
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                _compare(ref_kwargs[k], v, f"{op} argument {k}")
    return actual


def _compare(expected, actual, what):
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), what
        for e, a in zip(expected, actual):
            _compare(e, a, what)
        return
    assert isinstance(actual, torch.Tensor), f"{what}: got {type(actual).__name__}"
    dtype = expected.dtype if expected.dtype in TOLERANCES else None
    if dtype is None:  # integer tensors (slot mappings, positions): exact
        assert torch.equal(actual.cpu(), expected.cpu()), what
        return
    assert_close(actual.cpu(), expected.cpu(), msg=what)

"""One tolerance table for comparing a provider with the native spec, keyed by dtype.

Both sides compute in fp32 and round once to the output dtype, so they differ by reduction
order plus at most about one unit in the last place of the output dtype.
"""

import torch

TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
    torch.float8_e4m3fn: dict(atol=1.3e-1, rtol=1.3e-1),
    torch.float8_e5m2: dict(atol=2.6e-1, rtol=2.6e-1),
}

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def assert_close(actual, expected, dtype=None, msg=""):
    """Compare with the table entry for ``dtype`` (default: ``expected``'s dtype)."""
    tol = TOLERANCES[dtype or expected.dtype]
    assert actual.shape == expected.shape, f"{msg} shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{msg} dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual.float(), expected.float(), msg=msg or None, **tol)

"""Fixtures of the kernel tests: the device Triton kernels take here, and a skip when the
Triton provider cannot run (no Triton, or neither a GPU nor TRITON_INTERPRET=1)."""

import pytest


@pytest.fixture(scope="session")
def device():
    from fastdit.config import get_config

    return "cpu" if get_config().kernel.triton_interpret else "cuda"


@pytest.fixture(scope="session")
def triton_ok():
    pytest.importorskip("triton")
    from fastdit.ops.registry import is_supported, providers

    if not is_supported(providers("rms_norm")["triton"]):
        pytest.skip("the triton provider is not available here (no GPU and no TRITON_INTERPRET)")
    return True

"""Test set-up: on a machine without a GPU, Triton kernels run in the interpreter.

TRITON_INTERPRET must be in the environment before Triton compiles a kernel, so it is set
here, before any test imports fastdit's kernels; fastdit reads it through its config.
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch


def _has_gpu() -> bool:
    return torch.cuda.is_available()


if not _has_gpu():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def fresh_config():
    """Restore fastdit's config (and platform cache) after a test that changes them."""
    from fastdit import config
    from fastdit.platforms import current_platform

    saved = config.get_config()
    yield config
    config.set_config(saved)
    current_platform.cache_clear()


@pytest.fixture
def load_benchmark():
    """``load_benchmark("cache")``: benchmarks/cache.py as a fresh module (the folder is no package)."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load

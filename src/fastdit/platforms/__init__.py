"""Hardware platforms. :func:`current_platform` detects the machine once, on first call."""

from __future__ import annotations

import functools
import importlib

from fastdit.platforms.base import Platform

# name -> "module:Class"; detection order matters (ROCm before CUDA: both use torch.cuda).
_PLATFORMS = {
    "rocm": "fastdit.platforms.rocm:RocmPlatform",
    "cuda": "fastdit.platforms.cuda:CudaPlatform",
    "musa": "fastdit.platforms.musa:MusaPlatform",
    "npu": "fastdit.platforms.npu:NpuPlatform",
    "xpu": "fastdit.platforms.xpu:XpuPlatform",
    "mps": "fastdit.platforms.mps:MpsPlatform",
    "cpu": "fastdit.platforms.cpu:CpuPlatform",
}
PLATFORM_NAMES = tuple(_PLATFORMS)


def platform_class(name: str) -> type[Platform]:
    """The Platform class registered under ``name``."""
    try:
        module_name, _, class_name = _PLATFORMS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown platform {name!r}; known: {', '.join(PLATFORM_NAMES)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def detect_platform() -> Platform:
    """Honour ``FASTDIT_PLATFORM`` (through the config), else the first available kind."""
    from fastdit.config import get_config

    forced = get_config().platform.platform
    if forced:
        return platform_class(forced)()
    for name in PLATFORM_NAMES:
        cls = platform_class(name)
        if cls.is_available():
            return cls()
    raise AssertionError("the cpu platform is always available")


@functools.lru_cache(maxsize=1)
def current_platform() -> Platform:
    """The platform of this process, resolved once (lazily, not at import)."""
    return detect_platform()


__all__ = ["Platform", "PLATFORM_NAMES", "current_platform", "detect_platform", "platform_class"]

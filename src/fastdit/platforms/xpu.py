"""Intel GPUs through torch's XPU backend."""

from __future__ import annotations

import torch

from fastdit.platforms.base import Platform


class XpuPlatform(Platform):
    name = "xpu"
    device_type = "xpu"
    dist_backend = "xccl"
    default_providers = ("compiled", "native")

    @classmethod
    def is_available(cls) -> bool:
        xpu = getattr(torch, "xpu", None)
        return bool(xpu is not None and xpu.is_available())

    def device_name(self) -> str:
        return torch.xpu.get_device_name()

    def synchronize(self) -> None:
        torch.xpu.synchronize()

"""Apple GPUs through torch's MPS backend."""

from __future__ import annotations

import torch

from fastdit.platforms.base import Platform


class MpsPlatform(Platform):
    name = "mps"
    device_type = "mps"

    @classmethod
    def is_available(cls) -> bool:
        backend = getattr(torch.backends, "mps", None)
        return bool(backend is not None and backend.is_available())

    def device_name(self) -> str:
        return "Apple MPS"

    def synchronize(self) -> None:
        torch.mps.synchronize()

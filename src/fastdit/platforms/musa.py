"""Moore Threads GPUs through torch_musa."""

from __future__ import annotations

import importlib.util

import torch

from fastdit.platforms.base import Platform


class MusaPlatform(Platform):
    name = "musa"
    device_type = "musa"
    dist_backend = "mccl"

    @classmethod
    def is_available(cls) -> bool:
        if importlib.util.find_spec("torch_musa") is None:
            return False
        import torch_musa  # noqa: F401  (registers the musa device type)

        musa = getattr(torch, "musa", None)
        return bool(musa is not None and musa.is_available())

    def device_name(self) -> str:
        return torch.musa.get_device_name()  # type: ignore[attr-defined]

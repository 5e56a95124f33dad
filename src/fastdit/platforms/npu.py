"""Huawei Ascend NPUs through torch_npu; torch.compile is not dependable there."""

from __future__ import annotations

import importlib.util

import torch

from fastdit.platforms.base import Platform


class NpuPlatform(Platform):
    name = "npu"
    device_type = "npu"
    dist_backend = "hccl"
    compile_dependable = False

    @classmethod
    def is_available(cls) -> bool:
        if importlib.util.find_spec("torch_npu") is None:
            return False
        import torch_npu  # noqa: F401  (registers the npu device type)

        npu = getattr(torch, "npu", None)
        return bool(npu is not None and npu.is_available())

    def device_name(self) -> str:
        return torch.npu.get_device_name()  # type: ignore[attr-defined]

"""NVIDIA GPUs through torch's CUDA build."""

from __future__ import annotations

import torch

from fastdit.platforms.base import Platform


class CudaPlatform(Platform):
    name = "cuda"
    device_type = "cuda"
    dist_backend = "nccl"
    default_providers = ("triton", "compiled", "native")
    op_providers = {**Platform.op_providers, "linear_gelu_tanh": ("cublaslt",)}
    # H200, Wan2.1 VAE at 480x832x81: 1.154 s against vae.decode's 1.831 (benchmarks/vae.py, h200-run13)
    vae_decoder_default = "fastdit-channels-last"

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available() and torch.version.cuda is not None

    def device(self, index: int | None = None) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device() if index is None else index)

    def device_name(self) -> str:
        return torch.cuda.get_device_name()

    def compute_capability(self) -> tuple[int, int] | None:
        return tuple(torch.cuda.get_device_capability())  # type: ignore[return-value]

    def is_hopper(self) -> bool:
        return self.compute_capability() == (9, 0)

    def memory_allocated_peak(self) -> int | None:
        return torch.cuda.max_memory_allocated()

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def pin_memory_available(self) -> bool:
        return torch.cuda.is_available()

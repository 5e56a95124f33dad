"""AMD GPUs through torch's ROCm (HIP) build; aiter providers first where installed."""

from __future__ import annotations

import torch

from fastdit.platforms.cuda import CudaPlatform


class RocmPlatform(CudaPlatform):
    name = "rocm"
    device_type = "cuda"  # torch exposes HIP devices as "cuda"
    dist_backend = "nccl"  # RCCL behind the nccl name
    default_providers = ("triton", "compiled", "native")
    op_providers = {
        "rms_norm": ("aiter", "triton", "compiled", "native"),
        "rope_qk_": ("aiter", "triton", "compiled", "native"),
        "attention": ("sdpa",),
    }
    # MIOpen's convolution search pays for the Wan VAE on ROCm.
    vae_autotune_default = True

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available() and getattr(torch.version, "hip", None) is not None

    def is_hopper(self) -> bool:
        return False

    def gcn_arch(self) -> str:
        return getattr(torch.cuda.get_device_properties(0), "gcnArchName", "unknown")

    def _enable_conv_autotune(self) -> None:
        if not torch.backends.cudnn.benchmark:
            torch.backends.cudnn.benchmark = True
            import logging

            logging.getLogger("fastdit.platforms").info(
                "rocm: enabled MIOpen autotuning for the VAE (torch.backends.cudnn.benchmark=True);"
                " the flag is process-wide: every convolution in this process is autotuned")

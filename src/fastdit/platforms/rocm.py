"""AMD GPUs through torch's ROCm (HIP) build; aiter providers first where installed."""

from __future__ import annotations

import torch

from fastdit.platforms.base import Platform
from fastdit.platforms.cuda import CudaPlatform


class RocmPlatform(CudaPlatform):
    # device_type "cuda" (torch exposes HIP devices so) and dist_backend "nccl" (RCCL behind
    # that name) are CudaPlatform's
    name = "rocm"
    op_providers = {
        **Platform.op_providers,  # not CUDA's: cuBLASLt is NVIDIA's
        "rms_norm": ("aiter", "triton", "compiled", "native"),
        "rope_qk_": ("aiter", "triton", "compiled", "native"),
    }
    # MIOpen's convolution search pays for the Wan VAE on ROCm.
    vae_autotune_default = True
    conv_autotuner = "MIOpen convolution"
    # fastdit's NDHWC VAE decode was measured on CUDA only (MIOpen's channels-last 3-D
    # convolutions are not): diffusers' decode until it is timed here
    vae_decoder_default = "diffusers"

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available() and getattr(torch.version, "hip", None) is not None

    def is_hopper(self) -> bool:
        return False

    def fp8_dtype(self) -> torch.dtype:
        """MI300 (gfx94x) computes with the fnuz e4m3 variant; later chips with OCP e4m3fn."""
        arch = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "gcnArchName", "")
        return torch.float8_e4m3fnuz if arch.startswith("gfx94") else torch.float8_e4m3fn


"""The Platform interface: one object per hardware kind, asked for capabilities and defaults."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

log = logging.getLogger("fastdit.platforms")


class Platform:
    """A hardware kind (a torch device type) and what fastdit knows about it.

    Subclasses set the class attributes and override the queries that differ; nothing here
    touches the device until a method is called.
    """

    name: ClassVar[str] = "base"
    device_type: ClassVar[str] = "cpu"
    dist_backend: ClassVar[str] = "gloo"
    compile_dependable: ClassVar[bool] = True
    # Provider names tried in order for every op unless the op has its own list below.
    default_providers: ClassVar[tuple[str, ...]] = ("native",)
    op_providers: ClassVar[dict[str, tuple[str, ...]]] = {"attention": ("sdpa",)}
    vae_autotune_default: ClassVar[bool] = False
    # LoadOptions(vae_decoder="auto") on this platform's device: a models.wan.vae.DECODERS key
    vae_decoder_default: ClassVar[str] = "diffusers"
    # what torch.backends.cudnn.benchmark autotunes here (named in the log line)
    conv_autotuner: ClassVar[str] = "convolution"

    # ---- detection -------------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        """True when this machine has this kind of device and torch can use it."""
        raise NotImplementedError

    # ---- capabilities ----------------------------------------------------------------
    def device(self, index: int | None = None) -> torch.device:
        if self.device_type == "cpu" or index is None:
            return torch.device(self.device_type)
        return torch.device(self.device_type, index)

    def device_name(self) -> str:
        return self.name

    def compute_capability(self) -> tuple[int, int] | None:
        """(major, minor) for GPUs that have one, else None."""
        return None

    def is_hopper(self) -> bool:
        return False

    def has_capability(self, capability: tuple[int, int]) -> bool:
        """True when the device's compute capability is at least ``capability`` (GPUs only)."""
        own = self.compute_capability()
        return own is not None and tuple(own) >= tuple(capability)

    # ---- devices, memory, streams (what offload, parallelism and serving need) -------
    def _backend(self):
        """``torch.<device_type>`` (torch.cuda, torch.xpu, ...), or None on the CPU."""
        return None if self.device_type == "cpu" else getattr(torch, self.device_type, None)

    def device_count(self) -> int:
        """Devices of this kind on the machine (1 for the CPU)."""
        backend = self._backend()
        count = getattr(backend, "device_count", None) if backend is not None else None
        return int(count()) if count is not None else 1

    def set_device(self, index: int) -> torch.device:
        """Make device ``index`` the current one (each rank of a process group does this)."""
        backend = self._backend()
        if backend is not None and hasattr(backend, "set_device"):
            backend.set_device(index)
        return self.device(index)

    def mem_get_info(self, device: torch.device | None = None) -> tuple[int, int] | None:
        """``(free, total)`` bytes of device memory, or None when unknown (the CPU)."""
        backend = self._backend()
        query = getattr(backend, "mem_get_info", None) if backend is not None else None
        if query is None:
            return None
        free, total = query(device) if device is not None else query()
        return int(free), int(total)

    def stream(self, device: torch.device | None = None):
        """A new side stream on ``device`` (copies that overlap compute), or None on the CPU."""
        backend = self._backend()
        make = getattr(backend, "Stream", None) if backend is not None else None
        return make(device=device) if make is not None else None

    def event(self):
        """A new event to order work across streams, or None on the CPU."""
        backend = self._backend()
        make = getattr(backend, "Event", None) if backend is not None else None
        return make() if make is not None else None

    def pin_memory_available(self) -> bool:
        """Whether page-locked host memory can be allocated (fast, asynchronous host copies)."""
        return False

    def fp8_dtype(self) -> torch.dtype:
        """The e4m3 fp8 dtype this device computes with (``float8_e4m3fn``; MI300 uses fnuz)."""
        return torch.float8_e4m3fn

    def provider_priority(self, op: str) -> tuple[str, ...]:
        """Provider names tried in order for ``op`` on this platform."""
        return self.op_providers.get(op, self.default_providers)

    def memory_allocated_peak(self) -> int | None:
        """Peak bytes allocated on the current device since the last reset, when known."""
        return None

    def reset_peak_memory(self) -> None:
        return None

    def synchronize(self) -> None:
        return None

    # ---- hooks -----------------------------------------------------------------------
    def optimize_vae(self, vae: Any) -> Any:
        """Prepare a VAE for fast decoding on this platform; returns the VAE.

        The base hook only applies convolution autotuning when the configuration asks for
        it (``FASTDIT_VAE_AUTOTUNE=1``); platforms with a useful default override
        :attr:`vae_autotune_default`.
        """
        from fastdit.config import get_config

        wanted = get_config().platform.vae_autotune
        if wanted is None:
            wanted = self.vae_autotune_default
        if wanted:
            self._enable_conv_autotune()
        return vae

    def _enable_conv_autotune(self) -> None:
        if not torch.backends.cudnn.benchmark:
            torch.backends.cudnn.benchmark = True
            log.info("%s: enabled %s autotuning (torch.backends.cudnn.benchmark=True); "
                     "this flag is process-wide and affects every convolution", self.name,
                     self.conv_autotuner)

    def describe(self) -> dict[str, Any]:
        """Capabilities for ``fastdit ops``; a forced platform whose device is absent says so."""
        try:
            device, capability, hopper = self.device_name(), self.compute_capability(), self.is_hopper()
        except (RuntimeError, AssertionError, AttributeError) as exc:
            device, capability, hopper = f"unavailable ({str(exc).splitlines()[0][:80]})", None, False
        return {
            "platform": self.name,
            "device": device,
            "compute_capability": capability,
            "hopper": hopper,
            "compile_dependable": self.compile_dependable,
            "dist_backend": self.dist_backend,
        }

    def __repr__(self) -> str:
        return f"<Platform {self.name}>"

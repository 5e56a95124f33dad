"""Plain CPU: native ops (Triton only under TRITON_INTERPRET=1, when asked for)."""

from __future__ import annotations

import platform as _platform

from fastdit.platforms.base import Platform


class CpuPlatform(Platform):
    name = "cpu"

    @classmethod
    def is_available(cls) -> bool:
        return True

    def device_name(self) -> str:
        return _platform.processor() or _platform.machine() or "cpu"

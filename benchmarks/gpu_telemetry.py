"""Read-only GPU telemetry for the benchmarks: SM clock, power and temperature over time.

``nvidia-smi --query-gpu ... -lms 100`` runs in the background and writes one line per
sample; :meth:`GpuTelemetry.window` summarises the samples taken between two ``time.time()``
stamps (a timed loop). Nothing here changes a GPU setting.
"""

from __future__ import annotations

import datetime
import shutil
import statistics
import subprocess
import tempfile

QUERY = "timestamp,clocks.sm,power.draw,temperature.gpu"


class GpuTelemetry:
    def __init__(self, period_ms: int = 100) -> None:
        self._file = tempfile.NamedTemporaryFile("w+", suffix=".csv", delete=False)
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                 f"-lms={period_ms}"], stdout=self._file, stderr=subprocess.DEVNULL)

    def _samples(self) -> list[tuple[float, float, float, float]]:
        self._file.flush()
        rows = []
        with open(self._file.name) as f:
            for line in f:
                parts = [p.strip() for p in line.split(",")]
                try:
                    stamp = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                    rows.append((stamp, float(parts[1]), float(parts[2]), float(parts[3])))
                except (ValueError, IndexError):
                    continue  # "[N/A]" or a partly written line
        return rows

    def window(self, start: float, end: float) -> dict | None:
        """Mean and minimum SM clock (MHz), mean power (W), maximum temperature (C) in [start, end]."""
        inside = [row for row in self._samples() if start <= row[0] <= end]
        if not inside:
            return None
        clocks, power, temp = ([row[i] for row in inside] for i in (1, 2, 3))
        return {"samples": len(inside), "sm_clock_mhz_mean": statistics.fmean(clocks),
                "sm_clock_mhz_min": min(clocks), "power_w_mean": statistics.fmean(power),
                "temperature_c_max": max(temp)}

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        self._file.close()

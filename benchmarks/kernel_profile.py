"""Where a piece of GPU work spends its time: one profiled run, its kernels' device time, and
those times summed into named groups (``vae.py``'s decode, ``transformer.py``'s forwards).

    seconds = kernel_seconds(profiled(lambda: model(*x), device), device)   # {kernel: seconds}
    groups = grouped(seconds, (("attention", ("attn", "fmha")), ("products", ("gemm",))))

On the CPU (smoke runs) the aten ops' own CPU time stands in for kernels.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

#: ``(group name, name fragments)``, lower case; the first group with a fragment in a kernel's
#: name takes it, the rest go to "other"
Groups = Sequence[tuple[str, Iterable[str]]]


def group_of(name: str, groups: Groups) -> str:
    lower = name.lower()
    return next((group for group, parts in groups if any(p in lower for p in parts)), "other")


def profiled(run: Callable[[], object], device: torch.device):
    """``run()`` once under the torch profiler (CPU ops, and CUDA kernels on a GPU; the device
    synchronised at the end); the profiler, for :func:`kernel_seconds` and ``key_averages()``."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize(device)
    return prof


def kernel_seconds(prof, device: torch.device) -> dict[str, float]:
    """The time of every GPU kernel of a :func:`profiled` run, by name (CPU: every aten op's
    self time)."""
    cuda = device.type == "cuda"
    seconds: dict[str, float] = {}
    for event in prof.key_averages():
        if cuda:  # kernels only: a CPU op's device time is its kernels', counted already
            if "CUDA" not in str(getattr(event, "device_type", "")):
                continue
            us = getattr(event, "device_time_total", 0)
        else:
            if not event.key.startswith("aten::"):
                continue
            us = event.self_cpu_time_total
        if us:
            seconds[event.key] = seconds.get(event.key, 0.0) + us / 1e6
    return seconds


def grouped(seconds: dict[str, float], groups: Groups) -> dict[str, float]:
    """The times of :func:`kernel_seconds` summed per group, largest first."""
    totals: dict[str, float] = {}
    for name, value in seconds.items():
        group = group_of(name, groups)
        totals[group] = totals.get(group, 0.0) + value
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

"""Multi-GPU generation: process groups, sequence parallelism (Ulysses, Ring, USP), CFG
parallelism and parallel VAE decode, on torch.distributed (NCCL, RCCL, gloo).

Importing this package imports nothing heavy (``fastdit.distributed.layout`` needs no torch,
so the CLI can check a layout before torch loads); the names below load their module on first
use. See ``docs/distributed.md``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "attention": ("SequenceParallelAttention", "heads_to_sequence", "ring_attention",
                  "sequence_to_heads", "ulysses_attention"),
    "groups": ("ParallelState", "broadcast_from_writer", "close_parallel", "init_parallel",
               "single_process"),
    "guidance": ("CFGParallel",),
    "launch": ("launch", "launch_fastdit", "needs_launch", "rank_output"),
    "layout": ("ParallelConfig", "check_layout", "parallel_option"),
    "pipeline": ("parallel_experts", "plan_layout", "resolve_parallel", "share_from_writer"),
    "sequence": ("SequenceShard", "gather_sequence", "split_sequence"),
    "transformer": ("SequenceParallelTransformer", "sequence_parallel_forward", "shard_context"),
    "vae": ("parallel_vae_decode", "row_bands"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'fastdit.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fastdit.distributed.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

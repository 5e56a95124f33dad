"""Multi-GPU generation: process groups, sequence parallelism (Ulysses, Ring, USP), CFG
parallelism and parallel VAE decode, on torch.distributed (NCCL, RCCL, gloo).

Importing this package imports torch but starts nothing; see ``docs/distributed.md``.
"""

from fastdit.distributed.attention import (
    SequenceParallelAttention,
    heads_to_sequence,
    ring_attention,
    sequence_to_heads,
    ulysses_attention,
)
from fastdit.distributed.groups import (
    ParallelState,
    broadcast_from_writer,
    close_parallel,
    init_parallel,
    single_process,
)
from fastdit.distributed.guidance import CFGParallel
from fastdit.distributed.launch import launch, launch_fastdit, needs_launch, rank_output
from fastdit.distributed.layout import ParallelConfig, check_layout
from fastdit.distributed.sequence import SequenceShard, gather_sequence, split_sequence
from fastdit.distributed.transformer import sequence_parallel_forward, shard_context
from fastdit.distributed.vae import parallel_vae_decode, row_bands

__all__ = [
    "CFGParallel",
    "ParallelConfig",
    "ParallelState",
    "SequenceParallelAttention",
    "SequenceShard",
    "broadcast_from_writer",
    "check_layout",
    "close_parallel",
    "gather_sequence",
    "heads_to_sequence",
    "init_parallel",
    "launch",
    "launch_fastdit",
    "needs_launch",
    "parallel_vae_decode",
    "rank_output",
    "ring_attention",
    "row_bands",
    "sequence_parallel_forward",
    "sequence_to_heads",
    "shard_context",
    "single_process",
    "split_sequence",
    "ulysses_attention",
]

"""The Wan pipeline's side of multi-GPU generation.

What :func:`fastdit.load` and :meth:`WanVideoPipeline.run` call, in order:

1. :func:`resolve_parallel` (before any weights load): the ``parallel=`` option and the launch
   (torchrun's variables) -> a checked layout -> :func:`init_parallel` -> the
   :class:`ParallelState` whose ``device`` the weights go to. ``None`` and one process: the
   one-process state, no torch.distributed.
2. :func:`share_from_writer`: the text embeddings (UMT5, run on rank 0 only: the other ranks
   do not even load the text encoder), the CLIP image tokens, the I2V/TI2V image condition and
   the initial noise are computed on the writer and broadcast, so every rank starts from the
   same bits (the noise is drawn on rank 0 exactly as in a one-device run: same seed, same
   video).
3. :func:`parallel_experts`: each expert's transformer wrapped for sequence parallelism
   (:class:`SequenceParallelTransformer`) and its CFG replaced by :class:`CFGParallel` when
   ``cfg=2``. The scheduler step is then replicated: every rank computes the same noise
   prediction, so every rank holds identical latents after every step.
4. :func:`vae_decoder`: the decode on the VAE ranks (``parallel_vae_decode`` when more than one),
   nothing on ranks outside the VAE group.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from fastdit.config import distributed_env
from fastdit.distributed.groups import ParallelState, init_parallel, single_process
from fastdit.distributed.layout import AUTO, ParallelConfig, check_layout, parallel_option
from fastdit.errors import UserError

log = logging.getLogger("fastdit.distributed")


# ---------------------------------------------------------------------------------------
# 1. The layout, before any weights load
# ---------------------------------------------------------------------------------------
def plan_layout(parallel: Any, spec, world_size: int, *, guided: bool | None = None,
                vae_tiling: bool = False) -> ParallelConfig | None:
    """The checked layout for ``world_size`` processes (None: a one-process run).

    ``parallel``: the ``parallel=`` option (see :func:`~fastdit.distributed.layout.parallel_option`);
    None or ``"auto"`` with several processes picks :meth:`ParallelConfig.auto` (CFG 2 when
    ``guided``, default: the model's default guidance). ``spec``: the model's
    :class:`~fastdit.pipelines.spec.ModelSpec` (its heads from ``config.json``). With
    ``vae_tiling`` the VAE decodes on one rank (tiled) unless ``vae`` says otherwise, which
    is an error. Raises :class:`UserError` (CLI exit code 2) with the fix in the message.
    """
    option = parallel_option(parallel)
    heads = int(spec.transformer_config.get("num_attention_heads", 1))
    if guided is None:
        guided = spec.defaults.guidance_scale > 1.0
    if option is None or option == AUTO:
        if world_size == 1:
            return None
        option = ParallelConfig.auto(world_size, heads=heads, guided=guided)
        log.info("parallel layout (auto): %s", option.describe())
    if world_size == 1 and option.product > 1:
        raise UserError(f"parallel layout {option.describe()} needs {option.product} processes; "
                        f"start them with `fastdit generate --gpus {option.product} ...` or "
                        f"`torchrun --nproc-per-node {option.product} -m fastdit generate ...` (or "
                        f"your script under torchrun)")
    if vae_tiling and option.vae is not None and option.vae > 1:
        raise UserError(f"parallel layout: vae={option.vae} decodes in bands across ranks, which "
                        f"does not combine with VAE tiling; use vae=1 for a tiled decode on one rank")
    if vae_tiling:
        option = dataclasses.replace(option, vae=1)
    config = check_layout(option, world_size=world_size, heads=heads, guided=guided,
                          model=spec.name or "this model")
    return config if config.world > 1 else None


def resolve_parallel(parallel: Any, spec, device: torch.device | str | None, *,
                     vae_tiling: bool = False) -> ParallelState:
    """The process's :class:`ParallelState` for :func:`fastdit.load` (before any weights load).

    The number of processes comes from the launch (``WORLD_SIZE``; 1 when not launched). With
    several, each rank runs on its own device (``LOCAL_RANK``): ``device`` may name the kind
    (``"cuda"``, or ``"cpu"`` for gloo) but not an index.
    """
    env = distributed_env()
    world = env.world_size if env.launched else 1
    config = plan_layout(parallel, spec, world, vae_tiling=vae_tiling)
    if config is None:
        return single_process(device)
    requested = torch.device(device) if device is not None else None
    if requested is not None and requested.type != "cpu" and requested.index is not None:
        raise UserError(f"device {requested} names one GPU, but each of the {config.world} ranks "
                        f"runs on its own (LOCAL_RANK); give the kind ({requested.type}) or no device")
    on_cpu = requested is not None and requested.type == "cpu"
    return init_parallel(config, env=env, backend="gloo" if on_cpu else None,
                         device="cpu" if on_cpu else None)


def check_request(state: ParallelState, guided: bool) -> None:
    """A generation's guidance against the layout (``cfg=2`` needs guidance); UserError."""
    check_layout(state.config, guided=guided)


# ---------------------------------------------------------------------------------------
# 2. Values computed on the writer
# ---------------------------------------------------------------------------------------
def share_from_writer(make: Callable[[], Any], state: ParallelState) -> Any:
    """``make()`` run on the writer (rank 0) only, its result on every rank.

    The result is a tensor, None, or a dataclass whose fields are tensors or None (e.g.
    :class:`~fastdit.pipelines.stages.ImageCondition`). One small broadcast carries the shapes
    and dtypes, then one broadcast per tensor; the other ranks receive onto ``state.device``.
    In a one-process run this is ``make()``.
    """
    if state.world_size == 1:
        return make()
    value = _to_device(make(), state.device) if state.is_writer else None
    layout = [_layout(value) if state.is_writer else None]
    dist.broadcast_object_list(layout, src=0, device=_object_device(state))
    tensors = _tensors(value) if state.is_writer else _allocate(layout[0], state.device)
    for tensor in tensors:
        dist.broadcast(tensor, src=0)
    return value if state.is_writer else _rebuild(layout[0], iter(tensors))


def _object_device(state: ParallelState):
    """Where broadcast_object_list stages its bytes: the rank's GPU (NCCL and its kin), or the
    CPU (gloo)."""
    return state.device if state.device.type != "cpu" else None


def _to_device(value: Any, device: torch.device) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.to(device).contiguous()
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: _to_device(getattr(value, f.name), device)
                                             for f in dataclasses.fields(value)})
    raise TypeError(f"share_from_writer: cannot share a {type(value).__name__}")


def _layout(value: Any):
    """Picklable description: None, ("tensor", shape, dtype), or ("dataclass", cls, {field: layout})."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    return ("dataclass", type(value), {f.name: _layout(getattr(value, f.name))
                                       for f in dataclasses.fields(value)})


def _tensors(value: Any) -> list[torch.Tensor]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for f in dataclasses.fields(value) for t in _tensors(getattr(value, f.name))]


def _allocate(layout, device: torch.device) -> list[torch.Tensor]:
    if layout is None:
        return []
    if layout[0] == "tensor":
        return [torch.empty(layout[1], dtype=layout[2], device=device)]
    return [t for field_layout in layout[2].values() for t in _allocate(field_layout, device)]


def _rebuild(layout, tensors):
    if layout is None:
        return None
    if layout[0] == "tensor":
        return next(tensors)
    return layout[1](**{name: _rebuild(field_layout, tensors) for name, field_layout in layout[2].items()})


# ---------------------------------------------------------------------------------------
# 3. The experts for the layout
# ---------------------------------------------------------------------------------------
def parallel_experts(experts: Sequence, state: ParallelState) -> list:
    """Each :class:`~fastdit.pipelines.stages.Expert` for this layout: its transformer under
    sequence parallelism when ``ulysses * ring > 1``, its CFG on the two CFG rank groups when
    ``cfg=2``. An unguided expert (``NoGuidance``, e.g. Wan2.2's low-noise expert with
    ``guidance_scale_2 = 1``) runs its one branch on both CFG halves (the same result on both).
    In a one-process run the experts are returned as they are."""
    from fastdit.distributed.guidance import CFGParallel
    from fastdit.distributed.transformer import SequenceParallelTransformer
    from fastdit.pipelines.guidance import CFG, NoGuidance
    from fastdit.pipelines.stages import Expert

    if state.world_size == 1:
        return list(experts)
    out = []
    for expert in experts:
        model = expert.model if state.sp_group is None else SequenceParallelTransformer(expert.model, state)
        guidance = expert.strategy()
        if state.config.cfg == 2:
            if isinstance(guidance, CFG):
                guidance = CFGParallel(guidance.scale, state)
            elif not isinstance(guidance, (NoGuidance, CFGParallel)):
                raise UserError(f"parallel layout: cfg=2 splits classifier-free guidance, not "
                                f"{guidance!r}; use cfg=1")
        out.append(Expert(model, guidance))
    return out


# ---------------------------------------------------------------------------------------
# 4. The decode
# ---------------------------------------------------------------------------------------
def decodes(state: ParallelState) -> bool:
    """Whether this rank takes part in the VAE decode (ranks ``0 .. vae - 1``)."""
    return state.vae_rank is not None


def vae_decoder(vae, state: ParallelState) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``z -> video`` for :func:`fastdit.pipelines.stages.decode`: the band-parallel decode over
    the VAE group when it has more than one rank, else None (``vae.decode``)."""
    if state.vae_group is None:
        return None
    from fastdit.distributed.vae import parallel_vae_decode

    return lambda z: parallel_vae_decode(vae, z, state.vae_group)

"""Argument validation and modulation broadcasting shared by every op and provider.

Modulation tensors (``scale``, ``shift``, ``gate``) broadcast against ``x [B, L, D]`` in six
ways: a Python number or 0-dim tensor; ``[D]``; ``[B, D]`` (one row per batch entry);
``[B, 1, D]``; per token ``[B, L, D]``; per frame ``[B, F, 1, D]`` with ``L % F == 0`` (frame
``f`` owns tokens ``f*L/F ... (f+1)*L/F - 1``). A leading ``1`` may replace ``B`` anywhere.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def describe(value: object, device: bool = True) -> str:
    """Short text for a value in a message: a tensor's shape and dtype (and device), a
    number's, string's or None's repr, a function's name, any other object's type name."""
    if isinstance(value, torch.Tensor):
        text = f"{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
        return f"{text} on {value.device}" if device else text
    if value is None or isinstance(value, (numbers.Number, str, torch.dtype, torch.device)):
        return repr(value)
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    if isinstance(value, (tuple, list)) and len(value) <= 4:
        inner = ", ".join(describe(v, device) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return type(value).__name__


def describe_args(args: tuple, kwargs: dict) -> str:
    """A call's arguments as text: ``[2, 8] float32 on cpu, eps=1e-06`` (None keywords left out)."""
    parts = [describe(a) for a in args]
    parts += [f"{k}={describe(v)}" for k, v in kwargs.items() if v is not None]
    return ", ".join(parts)


def fail(op: str, message: str, **tensors: object) -> ValueError:
    """A ValueError that names the op and the shapes of the tensors involved."""
    shapes = ", ".join(f"{name}={describe(value)}" for name, value in tensors.items())
    return ValueError(f"{op}: {message}" + (f" ({shapes})" if shapes else ""))


def check_tensor(op: str, name: str, value: object, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
                 min_dim: int = 1) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise fail(op, f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise fail(op, f"{name} has unsupported dtype (allowed: {allowed})", **{name: value})
    if value.dim() < min_dim:
        raise fail(op, f"{name} needs at least {min_dim} dimension(s)", **{name: value})
    return value


def check_same_device(op: str, **tensors: object) -> None:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        raise fail(op, "tensors are on different devices",
                   **{n: t for n, t in tensors.items() if isinstance(t, torch.Tensor)})


def check_norm_kind(op: str, norm: str) -> None:
    if norm not in ("layer", "rms"):
        raise fail(op, f"norm must be 'layer' or 'rms', got {norm!r}")


def check_eps(op: str, eps: float) -> None:
    if not isinstance(eps, numbers.Real) or not eps >= 0:
        raise fail(op, f"eps must be a non-negative number, got {eps!r}")


def check_affine(op: str, x: torch.Tensor, weight: object, bias: object) -> None:
    """Optional norm weight/bias: ``[D]`` float tensors on x's device."""
    dim = x.shape[-1]
    for name, value in (("weight", weight), ("bias", bias)):
        if value is None:
            continue
        check_tensor(op, name, value)
        if tuple(value.shape) != (dim,):
            raise fail(op, f"{name} must have shape [{dim}]", x=x, **{name: value})
    check_same_device(op, x=x, weight=weight, bias=bias)


def is_number(value: object) -> bool:
    """A real Python number (bools excluded): a modulation or scale given as a constant."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_modulation(op: str, name: str, value: object, x: torch.Tensor) -> None:
    """Raise unless ``value`` broadcasts against ``x`` in one of the six modulation modes."""
    if is_number(value):
        return
    check_tensor(op, name, value, min_dim=0)
    check_same_device(op, x=x, **{name: value})
    try:
        modulation_layout(value, x.shape)
    except ValueError as exc:
        raise fail(op, f"{name} does not broadcast against x: {exc}", x=x, **{name: value}) from None


def canonical_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``x``'s shape seen as ``[B, L, D]``: 2-D is one batch row, more dims fold into B."""
    if len(shape) == 1:
        return 1, 1, shape[0]
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    batch = 1
    for size in shape[:-2]:
        batch *= size
    return batch, shape[-2], shape[-1]


def modulation_layout(value: "torch.Tensor | float", x_shape: Sequence[int]
                      ) -> tuple[torch.Tensor | float, int]:
    """A modulation as ``(t [Bm, G, D] view, tokens_per_group)`` for ``x`` seen as ``[B, L, D]``.

    Token ``l`` of batch row ``b`` uses ``t[b if Bm > 1 else 0, l // tokens_per_group, :]``;
    broadcast axes have stride 0 (made with ``expand``), so kernels index every mode alike.
    A Python number stays a number. Raises ValueError for shapes that do not broadcast.
    """
    if not isinstance(value, torch.Tensor):
        return value, 1
    batch, length, dim = canonical_shape(x_shape)
    shape = tuple(value.shape)
    ndim_x = len(x_shape)
    if len(shape) == 0:
        return value.reshape(1, 1, 1).expand(batch, 1, dim), max(length, 1)
    if shape[-1] not in (1, dim):
        raise ValueError(f"last dimension {shape[-1]} is neither 1 nor D={dim}")
    if len(shape) == 1:
        return value.reshape(1, 1, -1).expand(batch, 1, dim), max(length, 1)
    if len(shape) == 2 and ndim_x == 3 and shape[0] in (1, x_shape[0]):
        # [B, D]: one row per batch entry
        return value.unsqueeze(1).expand(batch, 1, dim), max(length, 1)
    if len(shape) == 2 and ndim_x == 2 and shape[0] in (1, length):
        # x [T, D] with a per-token [T, D] (or [1, D]) modulation
        groups = shape[0]
        return value.unsqueeze(0).expand(1, groups, dim), length // groups
    if len(shape) == 3 and ndim_x == 3 and shape[0] in (1, batch) and shape[1] in (1, length):
        groups = shape[1]
        return value.expand(batch, groups, dim), length // groups
    if len(shape) == 4 and ndim_x == 3 and shape[0] in (1, batch) and shape[2] == 1:
        frames = shape[1]
        if frames < 1 or length % frames:
            raise ValueError(f"L={length} is not divisible by the {frames} frames")
        # [B, F, 1, D] -> [B, F, D]
        return value.squeeze(2).expand(batch, frames, dim), length // frames
    raise ValueError(f"shape {list(shape)} is not a modulation shape for x {list(x_shape)}")


def modulation_fp32(value: "torch.Tensor | float", x_shape: Sequence[int]) -> "torch.Tensor | float":
    """:func:`broadcast_modulation` in fp32 (a tensor), or a Python float (a number)."""
    mod = broadcast_modulation(value, x_shape)
    return mod.float() if isinstance(mod, torch.Tensor) else float(mod)


def tanh_number(value: float) -> float:
    """``tanh`` of a number as torch's fp32 ``tanh`` rounds it (native op and kernels agree)."""
    return float(torch.tanh(torch.tensor(value)))


def broadcast_modulation(value: "torch.Tensor | float", x_shape: Sequence[int]
                         ) -> "torch.Tensor | float":
    """A modulation as a tensor that broadcasts against ``x`` by torch rules (for native ops)."""
    layout, per_group = modulation_layout(value, x_shape)
    if not isinstance(layout, torch.Tensor):
        return layout
    _, length, dim = canonical_shape(x_shape)
    if layout.shape[1] not in (1, length):  # per frame: repeat each frame's row over its tokens
        layout = layout.repeat_interleave(per_group, dim=1)
    if layout.shape[1] == length:  # a row per token: x's own shape
        return layout.reshape(*x_shape[:-1], dim)
    if len(x_shape) >= 2:  # one row per batch entry, broadcast over the tokens
        return layout.reshape(*x_shape[:-2], 1, dim)
    return layout.reshape(dim)

"""Rotary position embedding ops: ``rope_qk_`` and ``rms_norm_rope_`` (in place) and
``rope_qk_cache_store`` (paged KV)."""

from __future__ import annotations

import torch

from fastdit.ops import _checks as C
from fastdit.ops.library import LibraryOp, compiling
from fastdit.ops.norm import rms_norm_native
from fastdit.ops.registry import define_op, new_plan, plans
from fastdit.ops.registry import signature as sig

INDEX_DTYPES = (torch.int32, torch.int64)
CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)


# ---------------------------------------------------------------------------------------
# specification (native provider)
# ---------------------------------------------------------------------------------------
def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotated copy of ``x [..., T, H, D]`` (fp32 result); ``cos``/``sin`` are ``[T, D/2]``.

    Pairs are ``(2i, 2i+1)`` when ``interleaved`` (GPT-J, Wan) else ``(i, i + D/2)`` (NeoX):
    ``out1 = x1 * cos - x2 * sin``, ``out2 = x1 * sin + x2 * cos``.
    """
    x32 = x.float()
    cos = cos.float()[:, None, :]  # (T, 1, D/2)
    sin = sin.float()[:, None, :]
    if interleaved:
        x1, x2 = x32[..., 0::2], x32[..., 1::2]
    else:
        x1, x2 = x32.chunk(2, dim=-1)
    out1 = x1 * cos - x2 * sin
    out2 = x1 * sin + x2 * cos
    if interleaved:
        return torch.stack((out1, out2), dim=-1).flatten(-2)  # (..., T, H, D/2, 2) -> (..., T, H, D)
    return torch.cat((out1, out2), dim=-1)


def rope_qk_native(q, k, cos, sin, *, positions=None, interleaved=True):
    if positions is not None:
        index = positions.long()
        cos, sin = cos[index], sin[index]
    q.copy_(rotate(q, cos, sin, interleaved))
    k.copy_(rotate(k, cos, sin, interleaved))
    return q, k


def rms_norm_rope_native(x, weight, cos, sin, *, eps=1e-6, interleaved=True):
    normed = rms_norm_native(x.flatten(-2), weight, eps).view_as(x)  # in x's dtype
    x.copy_(rotate(normed, cos, sin, interleaved))
    return x


def effective_slots(slot_mapping: torch.Tensor, swa_slot_mapping: torch.Tensor | None) -> torch.Tensor:
    """Cache slot per token (int64); negative means "do not store"."""
    slots = slot_mapping.long()
    if swa_slot_mapping is None:
        return slots
    valid = slots >= 0
    translated = swa_slot_mapping.long()[slots.clamp(min=0)]
    return torch.where(valid, translated, torch.full_like(slots, -1))


def rope_qk_cache_store_native(q, k, v, key_cache, value_cache, slot_mapping, positions,
                               cos_sin_cache, *, interleaved=True, k_scale=None, v_scale=None,
                               swa_slot_mapping=None):
    half = q.shape[-1] // 2
    rows = cos_sin_cache[positions.long()].float()  # (T, D)
    cos, sin = rows[:, :half], rows[:, half:]
    q_rot = rotate(q, cos, sin, interleaved).to(q.dtype)
    k_rot = rotate(k, cos, sin, interleaved).to(k.dtype)
    slots = effective_slots(slot_mapping, swa_slot_mapping)
    keep = slots >= 0
    block_size = key_cache.shape[1]
    blocks, offsets = slots[keep] // block_size, slots[keep] % block_size
    k_store = k_rot[keep].float()
    v_store = v[keep].float()
    if k_scale is not None:
        k_store = k_store / _scale_value(k_scale)
    if v_scale is not None:
        v_store = v_store / _scale_value(v_scale)
    key_cache[blocks, offsets] = k_store.to(key_cache.dtype)
    value_cache[blocks, offsets] = v_store.to(value_cache.dtype)
    return q_rot, k_rot


def _scale_value(scale):
    return scale.float().reshape(()) if isinstance(scale, torch.Tensor) else float(scale)


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
def _check_qk(op, q, k):
    C.check_tensor(op, "q", q, min_dim=3)
    C.check_tensor(op, "k", k, min_dim=3)
    C.check_same_device(op, q=q, k=k)
    if q.shape[-1] != k.shape[-1] or q.shape[-1] % 2:
        raise C.fail(op, "q and k need the same even head size D", q=q, k=k)
    if q.shape[:-2] != k.shape[:-2]:
        raise C.fail(op, "q and k need the same token dimensions", q=q, k=k)


def _check_index(op, name, value, length):
    C.check_tensor(op, name, value, dtypes=INDEX_DTYPES)
    if value.dim() != 1 or value.shape[0] != length:
        raise C.fail(op, f"{name} must have shape [T={length}]", **{name: value})


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
def _check_rope_qk(q, k, cos, sin, *, positions=None, interleaved=True) -> None:
    op = "rope_qk_"
    _check_qk(op, q, k)
    half = q.shape[-1] // 2
    tokens = q.shape[-3]
    for name, table in (("cos", cos), ("sin", sin)):
        C.check_tensor(op, name, table, min_dim=2)
        if table.dim() != 2 or table.shape[1] != half:
            raise C.fail(op, f"{name} must have shape [T or max_pos, D/2={half}]", q=q, **{name: table})
    C.check_same_device(op, q=q, cos=cos, sin=sin)
    if cos.shape != sin.shape:
        raise C.fail(op, "cos and sin must have the same shape", cos=cos, sin=sin)
    if positions is None:
        if cos.shape[0] != tokens:
            raise C.fail(op, f"cos has {cos.shape[0]} rows for T={tokens} tokens (pass positions)",
                         q=q, cos=cos)
    else:
        _check_index(op, "positions", positions, tokens)
        C.check_same_device(op, q=q, positions=positions)


def _check_rms_norm_rope(x, weight, cos, sin, *, eps=1e-6, interleaved=True) -> None:
    op = "rms_norm_rope_"
    C.check_tensor(op, "x", x, min_dim=3)
    C.check_eps(op, eps)
    half = x.shape[-1] // 2
    if x.shape[-1] % 2:
        raise C.fail(op, "the head dim D must be even", x=x)
    if weight is not None:
        C.check_tensor(op, "weight", weight)
        if tuple(weight.shape) != (x.shape[-2] * x.shape[-1],):
            raise C.fail(op, f"weight must have shape [H*D={x.shape[-2] * x.shape[-1]}]", x=x,
                         weight=weight)
        C.check_same_device(op, x=x, weight=weight)
    for name, table in (("cos", cos), ("sin", sin)):
        C.check_tensor(op, name, table)
        if tuple(table.shape) != (x.shape[-3], half):
            raise C.fail(op, f"{name} must have shape [T={x.shape[-3]}, D/2={half}]", x=x,
                         **{name: table})
    C.check_same_device(op, x=x, cos=cos, sin=sin)


def _check_cache_store(q, k, v, key_cache, value_cache, slot_mapping, positions, cos_sin_cache, *,
                       interleaved=True, k_scale=None, v_scale=None, swa_slot_mapping=None) -> None:
    op = "rope_qk_cache_store"
    _check_qk(op, q, k)
    C.check_tensor(op, "v", v, min_dim=3)
    if q.dim() != 3 or v.shape != k.shape:
        raise C.fail(op, "need q [T, Hq, D] and k, v [T, Hk, D]", q=q, k=k, v=v)
    tokens, heads_q, dim = q.shape
    heads_kv = k.shape[1]
    if heads_q % heads_kv:
        raise C.fail(op, f"Hq={heads_q} is not a multiple of Hk={heads_kv}", q=q, k=k)
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        C.check_tensor(op, name, cache, dtypes=CACHE_DTYPES, min_dim=4)
        if cache.dim() != 4 or tuple(cache.shape[2:]) != (heads_kv, dim):
            raise C.fail(op, f"{name} must be [num_blocks, block_size, Hk={heads_kv}, D={dim}]",
                         k=k, **{name: cache})
    if key_cache.shape != value_cache.shape:
        raise C.fail(op, "key_cache and value_cache differ in shape", key_cache=key_cache,
                     value_cache=value_cache)
    _check_index(op, "slot_mapping", slot_mapping, tokens)
    _check_index(op, "positions", positions, tokens)
    C.check_tensor(op, "cos_sin_cache", cos_sin_cache, min_dim=2)
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != dim:
        raise C.fail(op, f"cos_sin_cache must be [max_pos, D={dim}]", cos_sin_cache=cos_sin_cache)
    if swa_slot_mapping is not None:
        C.check_tensor(op, "swa_slot_mapping", swa_slot_mapping, dtypes=INDEX_DTYPES)
        if swa_slot_mapping.dim() != 1:
            raise C.fail(op, "swa_slot_mapping must be 1-D", swa_slot_mapping=swa_slot_mapping)
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        if isinstance(scale, torch.Tensor) and scale.numel() != 1:
            raise C.fail(op, f"{name} must be a number or a one-element tensor", **{name: scale})
    C.check_same_device(op, q=q, k=k, v=v, key_cache=key_cache, value_cache=value_cache,
                        slot_mapping=slot_mapping, positions=positions, cos_sin_cache=cos_sin_cache,
                        swa_slot_mapping=swa_slot_mapping,
                        k_scale=k_scale if isinstance(k_scale, torch.Tensor) else None,
                        v_scale=v_scale if isinstance(v_scale, torch.Tensor) else None)


# ---------------------------------------------------------------------------------------
# public ops
# ---------------------------------------------------------------------------------------
def rope_qk_(q, k, cos, sin, *, positions=None, interleaved=True):
    """Rotate ``q`` and ``k`` in place (one launch for both); returns ``(q, k)``.

    Shapes: ``q [..., T, Hq, D]``, ``k [..., T, Hk, D]``; ``cos``/``sin`` ``[T, D/2]``, or
    ``[max_pos, D/2]`` indexed by ``positions [T]`` (int). Pairs ``(2i, 2i+1)`` when
    ``interleaved`` (GPT-J, Wan), else ``(i, i + D/2)`` (NeoX):
    ``x1' = x1 cos - x2 sin``, ``x2' = x1 sin + x2 cos``. Math in fp32, stored in q/k's dtype.
    """
    if compiling():
        _LIB_ROPE_QK(q, k, cos, sin, positions, interleaved)
        return q, k
    _plan_rope_qk(q, k, cos, sin, positions, interleaved).fn(
        q, k, cos, sin, positions=positions, interleaved=interleaved)
    return q, k


def _plan_rope_qk(q, k, cos, sin, positions, interleaved):
    key = (sig(q), sig(k), sig(cos), sig(sin), sig(positions), interleaved)
    try:
        return plans("rope_qk_")[key]
    except (KeyError, TypeError):
        kwargs = {"positions": positions, "interleaved": interleaved}
        _check_rope_qk(q, k, cos, sin, **kwargs)
        return new_plan("rope_qk_", key, (q, k, cos, sin), kwargs)


def rms_norm_rope_(x, weight, cos, sin, *, eps=1e-6, interleaved=True):
    """RMSNorm across all heads of a token, then RoPE on each head, in place; returns ``x``.

    ``x <- rope(rms_norm(x.flatten(-2), weight, eps).view_as(x), cos, sin)``: the norm
    ``s / sqrt(mean(s**2) + eps) * weight`` spans the token's ``H*D`` values (Wan's
    ``rms_norm_across_heads`` on q and k) and its result is rounded to ``x.dtype``, as
    :func:`rms_norm` stores it; the rotation is :func:`rope_qk_`'s. One pass over ``x``
    instead of two ops' four.

    Shapes: ``x [..., T, H, D]`` (D even), ``weight [H*D]`` or None, ``cos``/``sin`` ``[T, D/2]``.
    Math in fp32.
    """
    if compiling():
        _LIB_RMS_NORM_ROPE(x, weight, cos, sin, eps, interleaved)
        return x
    _plan_rms_norm_rope(x, weight, cos, sin, eps, interleaved).fn(
        x, weight, cos, sin, eps=eps, interleaved=interleaved)
    return x


def _plan_rms_norm_rope(x, weight, cos, sin, eps, interleaved):
    key = (sig(x), sig(weight), sig(cos), sig(sin), eps, interleaved)
    try:
        return plans("rms_norm_rope_")[key]
    except (KeyError, TypeError):
        kwargs = {"eps": eps, "interleaved": interleaved}
        _check_rms_norm_rope(x, weight, cos, sin, **kwargs)
        return new_plan("rms_norm_rope_", key, (x, weight, cos, sin), kwargs)


def rope_qk_cache_store(q, k, v, key_cache, value_cache, slot_mapping, positions, cos_sin_cache, *,
                        interleaved=True, k_scale=None, v_scale=None, swa_slot_mapping=None):
    """Rotate q and k and write rotated k and v into a paged KV cache; q and k are not modified.

    Shapes: ``q [T, Hq, D]``, ``k``/``v`` ``[T, Hk, D]`` (``Hq % Hk == 0``); caches
    ``[num_blocks, block_size, Hk, D]``; ``slot_mapping``/``positions`` ``[T]`` int;
    ``cos_sin_cache [max_pos, D]`` (cos in the first D/2 columns, sin in the last).
    Token ``t`` goes to ``slot = slot_mapping[t]`` (through ``swa_slot_mapping[slot]`` when
    given): block ``slot // block_size``, offset ``slot % block_size``; negative slots store
    nothing. With ``k_scale``/``v_scale`` the cache holds ``k / k_scale`` and ``v / v_scale``
    (fp8 caches). Returns ``(q_rot, k_rot)`` in q's and k's dtypes.
    """
    if compiling():
        return _LIB_CACHE_STORE(q, k, v, key_cache, value_cache, slot_mapping, positions,
                                cos_sin_cache, interleaved, k_scale, v_scale, swa_slot_mapping)
    return _plan_cache_store(q, k, v, key_cache, value_cache, slot_mapping, positions,
                             cos_sin_cache, interleaved, k_scale, v_scale, swa_slot_mapping).fn(
        q, k, v, key_cache, value_cache, slot_mapping, positions, cos_sin_cache,
        interleaved=interleaved, k_scale=k_scale, v_scale=v_scale, swa_slot_mapping=swa_slot_mapping)


def _plan_cache_store(q, k, v, key_cache, value_cache, slot_mapping, positions, cos_sin_cache,
                      interleaved, k_scale, v_scale, swa_slot_mapping):
    tensors = (q, k, v, key_cache, value_cache, slot_mapping, positions, cos_sin_cache)
    key = (*map(sig, tensors), interleaved, sig(k_scale), sig(v_scale), sig(swa_slot_mapping))
    try:
        return plans("rope_qk_cache_store")[key]
    except (KeyError, TypeError):
        kwargs = {"interleaved": interleaved, "k_scale": k_scale, "v_scale": v_scale,
                  "swa_slot_mapping": swa_slot_mapping}
        _check_cache_store(*tensors, **kwargs)
        return new_plan("rope_qk_cache_store", key, tensors, kwargs)


def _cache_store_outputs(q, k, *args, **kwargs):
    """Shape-only outputs (the spec's boolean-mask store cannot run on fake tensors)."""
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format)


define_op("rope_qk_", rope_qk_, _plan_rope_qk)
define_op("rms_norm_rope_", rms_norm_rope_, _plan_rms_norm_rope)
define_op("rope_qk_cache_store", rope_qk_cache_store, _plan_cache_store)

_LIB_ROPE_QK = LibraryOp(
    "rope_qk_", rope_qk_,
    (("q", "Tensor!"), ("k", "Tensor!"), ("cos", "Tensor"), ("sin", "Tensor"),
     ("positions", "Tensor?"), ("interleaved", "bool")),
    "()", _check_rope_qk)
_LIB_RMS_NORM_ROPE = LibraryOp(
    "rms_norm_rope_", rms_norm_rope_,
    (("x", "Tensor!"), ("weight", "Tensor?"), ("cos", "Tensor"), ("sin", "Tensor"),
     ("eps", "float"), ("interleaved", "bool")),
    "()", _check_rms_norm_rope)
_LIB_CACHE_STORE = LibraryOp(
    "rope_qk_cache_store", rope_qk_cache_store,
    (("q", "Tensor"), ("k", "Tensor"), ("v", "Tensor"), ("key_cache", "Tensor!"),
     ("value_cache", "Tensor!"), ("slot_mapping", "Tensor"), ("positions", "Tensor"),
     ("cos_sin_cache", "Tensor"), ("interleaved", "bool"), ("k_scale", "mod?"),
     ("v_scale", "mod?"), ("swa_slot_mapping", "Tensor?")),
    "(Tensor, Tensor)", _check_cache_store, fake=_cache_store_outputs)

"""Triton kernels of the RoPE ops: ``rope_qk_`` (in place) and ``rope_qk_cache_store``.

A program takes ``BLOCK_T`` tokens, loads their cos/sin rows once, and rotates every q head
and every k head of those tokens (in head chunks of ``BLOCK_H``), so q and k are rotated in one
launch from one cos/sin load. Interleaved pairs ``(2i, 2i+1)`` are read as one contiguous row
and split in registers (``reshape`` + ``split``); NeoX pairs ``(i, i + D/2)`` as two half rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdit.kernels.triton import _common as K
from fastdit.kernels.triton._support import cdiv, interpreting, next_pow2, rope_launch


# ---------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------
@triton.jit
def _load_pairs(base, rowoff, s_h, s_d, h, mask_th, HALF, INTERLEAVED: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """``(x1, x2)`` fp32 ``[BLOCK_T, BLOCK_H, BLOCK_HALF]``: the two members of every pair of
    heads ``h`` of the rows at ``base + rowoff`` (rowoff ``[BLOCK_T]``, int64)."""
    rows = base + rowoff[:, None, None] + (h.to(tl.int64) * s_h)[None, :, None]
    if INTERLEAVED:
        d = tl.arange(0, 2 * BLOCK_HALF)
        m = mask_th[:, :, None] & (d < 2 * HALF)[None, None, :]
        x = tl.load(rows + (d * s_d)[None, None, :], mask=m, other=0.0).to(tl.float32)
        x1, x2 = tl.split(tl.reshape(x, [BLOCK_T, BLOCK_H, BLOCK_HALF, 2]))
    else:
        i = tl.arange(0, BLOCK_HALF)
        m = mask_th[:, :, None] & (i < HALF)[None, None, :]
        first = rows + (i * s_d)[None, None, :]
        x1 = tl.load(first, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(first + HALF * s_d, mask=m, other=0.0).to(tl.float32)
    return x1, x2


@triton.jit
def _store_pairs(base, rowoff, s_h, s_d, h, mask_th, HALF, o1, o2, INTERLEAVED: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Store pairs ``(o1, o2)`` (already in the destination dtype) where _load_pairs reads."""
    rows = base + rowoff[:, None, None] + (h.to(tl.int64) * s_h)[None, :, None]
    if INTERLEAVED:
        d = tl.arange(0, 2 * BLOCK_HALF)
        m = mask_th[:, :, None] & (d < 2 * HALF)[None, None, :]
        o = tl.reshape(tl.join(o1, o2), [BLOCK_T, BLOCK_H, 2 * BLOCK_HALF])
        tl.store(rows + (d * s_d)[None, None, :], o, mask=m)
    else:
        i = tl.arange(0, BLOCK_HALF)
        m = mask_th[:, :, None] & (i < HALF)[None, None, :]
        first = rows + (i * s_d)[None, None, :]
        tl.store(first, o1, mask=m)
        tl.store(first + HALF * s_d, o2, mask=m)


@triton.jit
def _rope_qk_kernel(
    q_ptr, sqn, sqt, sqh, sqd, k_ptr, skn, skt, skh, skd,
    cos_ptr, sc_t, sc_d, sin_ptr, ss_t, ss_d, pos_ptr, T, HALF,
    HQ: tl.constexpr, HK: tl.constexpr, HAS_POS: tl.constexpr, INTERLEAVED: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    # x1' = x1 cos - x2 sin, x2' = x1 sin + x2 cos, in place, for all heads of q and k
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    n = tl.program_id(1).to(tl.int64)
    tmask = t < T
    if HAS_POS:
        p = tl.load(pos_ptr + t, mask=tmask, other=0).to(tl.int64)
    else:
        p = t.to(tl.int64)
    i = tl.arange(0, BLOCK_HALF)
    cmask = tmask[:, None] & (i < HALF)[None, :]
    cos = tl.load(cos_ptr + p[:, None] * sc_t + (i * sc_d)[None, :], mask=cmask, other=0.0)
    sin = tl.load(sin_ptr + p[:, None] * ss_t + (i * ss_d)[None, :], mask=cmask, other=0.0)
    cos = cos.to(tl.float32)[:, None, :]  # (BLOCK_T, 1, BLOCK_HALF)
    sin = sin.to(tl.float32)[:, None, :]
    t64 = t.to(tl.int64)

    q_base, q_rows = q_ptr + n * sqn, t64 * sqt
    k_base, k_rows = k_ptr + n * skn, t64 * skt
    _rotate_heads(q_base, q_rows, sqh, sqd, q_base, q_rows, sqh, sqd, tmask, cos, sin, HALF,
                  HQ, INTERLEAVED, BLOCK_T, BLOCK_HQ, BLOCK_HALF)
    _rotate_heads(k_base, k_rows, skh, skd, k_base, k_rows, skh, skd, tmask, cos, sin, HALF,
                  HK, INTERLEAVED, BLOCK_T, BLOCK_HK, BLOCK_HALF)


@triton.jit
def _rotate_heads(src, src_rows, src_sh, src_sd, dst, dst_rows, dst_sh, dst_sd, tmask, cos, sin,
                  HALF, H: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_T: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Rotate all ``H`` heads of ``BLOCK_T`` tokens from ``src`` into ``dst`` (may be the same
    memory: in place), ``BLOCK_H`` heads at a time."""
    for h0 in tl.static_range(0, H, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        mth = tmask[:, None] & (h < H)[None, :]
        x1, x2 = _load_pairs(src, src_rows, src_sh, src_sd, h, mth, HALF, INTERLEAVED,
                             BLOCK_T, BLOCK_H, BLOCK_HALF)
        o1, o2 = K.rotate_pairs(x1, x2, cos, sin)
        _store_pairs(dst, dst_rows, dst_sh, dst_sd, h, mth, HALF, o1.to(dst.dtype.element_ty),
                     o2.to(dst.dtype.element_ty), INTERLEAVED,
                     BLOCK_T, BLOCK_H, BLOCK_HALF)


@triton.jit
def _to_cache(x, scale, cache_ptr, SCALE_MODE: tl.constexpr, FP8_MANT: tl.constexpr,
              FP8_EMIN: tl.constexpr):
    """fp32 ``x`` (divided by the scale when there is one) in the cache's dtype.

    ``FP8_MANT > 0`` (interpreter only): round to the fp8 grid first, see round_to_fp8_grid.
    """
    if SCALE_MODE != 0:
        x = tl.div_rn(x, scale)
    if FP8_MANT > 0:
        x = K.round_to_fp8_grid(x, FP8_MANT, FP8_EMIN)
    return x.to(cache_ptr.dtype.element_ty)


@triton.jit
def _rope_cache_store_kernel(
    q_ptr, sqt, sqh, sqd, k_ptr, skt, skh, skd, v_ptr, svt, svh, svd,
    qo_ptr, ko_ptr,
    kc_ptr, kc_b, kc_o, kc_h, kc_d, vc_ptr, vc_b, vc_o, vc_h, vc_d,
    slot_ptr, swa_ptr, pos_ptr, cs_ptr, cs_t, cs_d,
    ks_ptr, ks_val, vs_ptr, vs_val,
    T, HALF, BLOCK_SIZE,
    HQ: tl.constexpr, HK: tl.constexpr, HAS_SWA: tl.constexpr,
    KS_MODE: tl.constexpr, VS_MODE: tl.constexpr, INTERLEAVED: tl.constexpr,
    K_MANT: tl.constexpr, K_EMIN: tl.constexpr, V_MANT: tl.constexpr, V_EMIN: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    # q_rot, k_rot = rotate(q), rotate(k) (new tensors); for tokens with a slot >= 0:
    # key_cache[slot] = k_rot / k_scale, value_cache[slot] = v / v_scale
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = t < T
    t64 = t.to(tl.int64)
    p = tl.load(pos_ptr + t, mask=tmask, other=0).to(tl.int64)
    i = tl.arange(0, BLOCK_HALF)
    cmask = tmask[:, None] & (i < HALF)[None, :]
    row = cs_ptr + p[:, None] * cs_t
    cos = tl.load(row + (i * cs_d)[None, :], mask=cmask, other=0.0)
    sin = tl.load(row + ((i + HALF) * cs_d)[None, :], mask=cmask, other=0.0)
    cos = cos.to(tl.float32)[:, None, :]  # (BLOCK_T, 1, BLOCK_HALF)
    sin = sin.to(tl.float32)[:, None, :]

    slot = tl.load(slot_ptr + t, mask=tmask, other=-1).to(tl.int64)
    if HAS_SWA:
        valid = slot >= 0
        slot = tl.load(swa_ptr + tl.where(valid, slot, 0), mask=tmask & valid, other=-1)
        slot = slot.to(tl.int64)
    keep = tmask & (slot >= 0)
    slot = tl.where(keep, slot, 0)
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    kc_rows = block * kc_b + offset * kc_o
    vc_rows = block * vc_b + offset * vc_o
    if KS_MODE == 2:
        k_scale = tl.load(ks_ptr).to(tl.float32)
    else:
        k_scale = ks_val
    if VS_MODE == 2:
        v_scale = tl.load(vs_ptr).to(tl.float32)
    else:
        v_scale = vs_val

    _rotate_heads(q_ptr, t64 * sqt, sqh, sqd, qo_ptr, t64 * (HQ * 2 * HALF), 2 * HALF, 1, tmask,
                  cos, sin, HALF, HQ, INTERLEAVED, BLOCK_T, BLOCK_HQ, BLOCK_HALF)

    k_rows = t64 * skt
    ko_rows = t64 * (HK * 2 * HALF)
    v_rows = t64 * svt
    d = tl.arange(0, 2 * BLOCK_HALF)
    for h0 in tl.static_range(0, HK, BLOCK_HK):
        h = h0 + tl.arange(0, BLOCK_HK)
        mth = tmask[:, None] & (h < HK)[None, :]
        x1, x2 = _load_pairs(k_ptr, k_rows, skh, skd, h, mth, HALF, INTERLEAVED,
                             BLOCK_T, BLOCK_HK, BLOCK_HALF)
        o1, o2 = K.rotate_pairs(x1, x2, cos, sin)
        o1, o2 = o1.to(ko_ptr.dtype.element_ty), o2.to(ko_ptr.dtype.element_ty)
        _store_pairs(ko_ptr, ko_rows, 2 * HALF, 1, h, mth, HALF, o1, o2, INTERLEAVED,
                     BLOCK_T, BLOCK_HK, BLOCK_HALF)
        # the cache holds the rotated k as rounded to k's dtype, then scaled
        mkeep = keep[:, None] & (h < HK)[None, :]
        c1 = _to_cache(o1.to(tl.float32), k_scale, kc_ptr, KS_MODE, K_MANT, K_EMIN)
        c2 = _to_cache(o2.to(tl.float32), k_scale, kc_ptr, KS_MODE, K_MANT, K_EMIN)
        _store_pairs(kc_ptr, kc_rows, kc_h, kc_d, h, mkeep, HALF, c1, c2, INTERLEAVED,
                     BLOCK_T, BLOCK_HK, BLOCK_HALF)
        # v: the whole head row, straight into the value cache
        hv = h.to(tl.int64)
        mv = mkeep[:, :, None] & (d < 2 * HALF)[None, None, :]
        v = tl.load(v_ptr + (v_rows[:, None] + hv[None, :] * svh)[:, :, None]
                    + (d * svd)[None, None, :], mask=mv, other=0.0).to(tl.float32)
        v = _to_cache(v, v_scale, vc_ptr, VS_MODE, V_MANT, V_EMIN)
        tl.store(vc_ptr + (vc_rows[:, None] + hv[None, :] * vc_h)[:, :, None]
                 + (d * vc_d)[None, None, :], v, mask=mv)


# ---------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------
def _as_4d(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``x [..., T, H, D]`` as a ``[N, T, H, D]`` view, or a contiguous copy (second item True)."""
    if x.dim() == 3:
        return x.unsqueeze(0), False
    try:
        return x.view(-1, *x.shape[-3:]), False
    except RuntimeError:
        return x.reshape(-1, *x.shape[-3:]).contiguous(), True


def rope_qk_(q, k, cos, sin, *, positions=None, interleaved=True):
    tokens, heads_q, dim = q.shape[-3:]
    heads_k = k.shape[-2]
    q4, q_copied = _as_4d(q)
    k4, k_copied = _as_4d(k)
    batch = q4.shape[0]
    if tokens == 0 or batch == 0 or heads_q + heads_k == 0:
        return q, k
    block_t, bhq, bhk, warps = rope_launch(tokens, heads_q, heads_k, dim)
    grid = (cdiv(tokens, block_t), batch)
    _rope_qk_kernel[grid](
        q4, *q4.stride(), k4, *k4.stride(),
        cos, *cos.stride(), sin, *sin.stride(), q4 if positions is None else positions,
        tokens, dim // 2,
        HQ=heads_q, HK=heads_k, HAS_POS=positions is not None, INTERLEAVED=bool(interleaved),
        BLOCK_T=block_t, BLOCK_HQ=bhq, BLOCK_HK=bhk, BLOCK_HALF=next_pow2(dim // 2),
        num_warps=warps,
    )
    if q_copied:
        q.copy_(q4.view(q.shape))
    if k_copied:
        k.copy_(k4.view(k.shape))
    return q, k


def _scale_args(scale, dummy):
    """(pointer, value, mode): mode 0 none, 1 a number, 2 a one-element tensor (read on device)."""
    if scale is None:
        return dummy, 1.0, 0
    if isinstance(scale, torch.Tensor):
        return scale.reshape(1), 1.0, 2
    return dummy, float(scale), 1


def rope_qk_cache_store(q, k, v, key_cache, value_cache, slot_mapping, positions, cos_sin_cache,
                        *, interleaved=True, k_scale=None, v_scale=None, swa_slot_mapping=None):
    tokens, heads_q, dim = q.shape
    heads_k = k.shape[1]
    q_rot = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_rot = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if tokens == 0:
        return q_rot, k_rot
    ks_ptr, ks_val, ks_mode = _scale_args(k_scale, q)
    vs_ptr, vs_val, vs_mode = _scale_args(v_scale, q)
    # the interpreter's fp32 -> fp8 cast is inexact: round to the fp8 grid in the kernel first
    soft = interpreting()
    k_mant, k_emin = K.FP8_GRID.get(key_cache.dtype, (0, 0)) if soft else (0, 0)
    v_mant, v_emin = K.FP8_GRID.get(value_cache.dtype, (0, 0)) if soft else (0, 0)
    block_t, bhq, bhk, warps = rope_launch(tokens, heads_q, heads_k, dim)
    _rope_cache_store_kernel[(cdiv(tokens, block_t),)](
        q, *q.stride(), k, *k.stride(), v, *v.stride(), q_rot, k_rot,
        key_cache, *key_cache.stride(), value_cache, *value_cache.stride(),
        slot_mapping, slot_mapping if swa_slot_mapping is None else swa_slot_mapping,
        positions, cos_sin_cache, *cos_sin_cache.stride(),
        ks_ptr, ks_val, vs_ptr, vs_val,
        tokens, dim // 2, key_cache.shape[1],
        HQ=heads_q, HK=heads_k, HAS_SWA=swa_slot_mapping is not None,
        KS_MODE=ks_mode, VS_MODE=vs_mode, INTERLEAVED=bool(interleaved),
        K_MANT=k_mant, K_EMIN=k_emin, V_MANT=v_mant, V_EMIN=v_emin,
        BLOCK_T=block_t, BLOCK_HQ=bhq, BLOCK_HK=bhk, BLOCK_HALF=next_pow2(dim // 2),
        num_warps=warps,
    )
    return q_rot, k_rot

"""Triton RoPE kernels against the native spec: rope_qk_ and rms_norm_rope_ (in place) and
rope_qk_cache_store.

In-place checks compare the caller's tensors after the call with a reference computed first on
copies (``compare`` checks every tensor argument afterwards), including q/k that are strided
views into a fused qkv buffer (the rest of the buffer must be untouched) and layouts the
kernel must copy in and back. Cache stores: negative slots, sliding-window translation,
grouped-query heads, fp8 caches with scales, strided caches, untouched slots.
"""

from __future__ import annotations

import pytest
import torch

from fastdit.kernels.triton import _support as S
from fastdit.ops.registry import call_provider
from tests.kernels._util import compare, rand

pytestmark = pytest.mark.usefixtures("triton_ok")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _tables(rows, dim, device, dtype=torch.float32):
    angles = torch.rand(rows, dim // 2) * 6.3
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


# ---------------------------------------------------------------------------------------
# rms_norm_rope_
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3, 8), (2, 5, 4, 16), (2, 3, 12, 128)])  # H*D = 24, 64, 1536
def test_rms_norm_rope_in_place(device, dtype, shape):
    x = rand(shape, dtype, device)
    tokens, heads, dim = shape[-3:]
    cos, sin = _tables(tokens, dim, device)
    weight = rand((heads * dim,), dtype, device)
    out = compare("rms_norm_rope_", x, weight, cos, sin, eps=1e-5)
    assert out is x


def test_rms_norm_rope_without_weight_and_odd_rows(device):
    x = rand((7, 5, 6), torch.bfloat16, device)  # H*D = 30: masked lanes; D/2 = 3
    cos, sin = _tables(7, 6, device, torch.bfloat16)
    compare("rms_norm_rope_", x, None, cos, sin)


def test_rms_norm_rope_takes_only_what_it_can():
    from fastdit.kernels.triton._support import rms_norm_rope_args

    x, cos, sin = torch.randn(4, 2, 8), torch.randn(4, 4), torch.randn(4, 4)
    assert rms_norm_rope_args(x, None, cos, sin) is S.device_ok(x)
    assert not rms_norm_rope_args(x, None, cos, sin, interleaved=False)
    assert not rms_norm_rope_args(x.transpose(0, 1), None, cos, sin)  # rows not contiguous
    assert not rms_norm_rope_args(x, torch.ones(8), cos, sin)  # weight must span H*D


# ---------------------------------------------------------------------------------------
# rope_qk_
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("interleaved", (True, False))
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_qk_dtypes_gqa(device, dtype, interleaved):
    q = rand((5, 6, 16), dtype, device)  # 5 tokens: a partial token block
    k = rand((5, 2, 16), dtype, device)
    cos, sin = _tables(5, 16, device)
    q_out, k_out = compare("rope_qk_", q, k, cos, sin, interleaved=interleaved)
    assert q_out is q and k_out is k


@pytest.mark.parametrize("dim", (2, 6, 128))  # D/2 = 1, 3 (masked lanes), 64
@pytest.mark.parametrize("interleaved", (True, False))
def test_rope_qk_positions_and_head_sizes(device, dim, interleaved):
    q = rand((7, 12, dim), torch.bfloat16, device)
    k = rand((7, 3, dim), torch.bfloat16, device)
    cos, sin = _tables(20, dim, device)
    positions = torch.tensor([19, 0, 4, 4, 11, 2, 7], dtype=torch.int32, device=device)
    compare("rope_qk_", q, k, cos, sin, positions=positions, interleaved=interleaved)


@pytest.mark.parametrize("interleaved", (True, False))
def test_rope_qk_views_into_qkv(device, interleaved):
    # q and k are strided views of one [T, 3, H, D] buffer: rotated in place, v untouched
    qkv = rand((6, 3, 4, 16), torch.float16, device)
    v_before = qkv[:, 2].clone()
    cos, sin = _tables(6, 16, device)
    compare("rope_qk_", qkv[:, 0], qkv[:, 1], cos, sin, interleaved=interleaved)
    assert torch.equal(qkv[:, 2], v_before)


def test_rope_qk_batched_and_copied_layouts(device):
    cos, sin = _tables(5, 8, device)
    # [B, T, H, D] views (leading dims merge)
    compare("rope_qk_", rand((2, 5, 3, 8), device=device), rand((2, 5, 1, 8), device=device),
            cos, sin)
    # leading dims that do not merge ([B1, B2] transposed): computed on a copy, copied back
    q = rand((3, 2, 5, 4, 8), torch.bfloat16, device).transpose(0, 1)
    k = rand((3, 2, 5, 2, 8), torch.bfloat16, device).transpose(0, 1)
    compare("rope_qk_", q, k, cos, sin, interleaved=False)
    # head dim not contiguous, cos/sin in bf16 and strided
    q = rand((5, 8, 3), device=device).transpose(1, 2)
    table = rand((5, 8), torch.bfloat16, device)
    compare("rope_qk_", q, rand((5, 1, 8), device=device), table[:, ::2], table[:, 1::2])


def test_rope_qk_no_tokens(device):
    q = rand((0, 4, 8), device=device)
    cos, sin = _tables(0, 8, device)
    compare("rope_qk_", q, q.clone(), cos, sin)


# ---------------------------------------------------------------------------------------
# rope_qk_cache_store
# ---------------------------------------------------------------------------------------
def _cache_case(device, dtype=torch.bfloat16, cache_dtype=None, heads=(4, 2), dim=16,
                blocks=5, block_size=4, tokens=9):
    hq, hk = heads
    q = rand((tokens, hq, dim), dtype, device)
    k = rand((tokens, hk, dim), dtype, device)
    v = rand((tokens, hk, dim), dtype, device)
    cache_dtype = cache_dtype or dtype
    # caches start with random contents: slots not written must keep them
    key_cache = rand((blocks, block_size, hk, dim), torch.float32, device).to(cache_dtype)
    value_cache = rand((blocks, block_size, hk, dim), torch.float32, device).to(cache_dtype)
    slots = torch.randperm(blocks * block_size)[:tokens].to(device)
    slots[::3] = -1  # some tokens store nothing
    positions = torch.randint(0, 32, (tokens,), device=device)
    cos_sin = torch.cat(_tables(32, dim, device), dim=-1)
    return q, k, v, key_cache, value_cache, slots, positions, cos_sin


@pytest.mark.parametrize("interleaved", (True, False))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cache_store_dtypes(device, dtype, interleaved):
    args = _cache_case(device, dtype)
    q, k = args[0].clone(), args[1].clone()
    q_rot, k_rot = compare("rope_qk_cache_store", *args, interleaved=interleaved)
    assert torch.equal(args[0], q) and torch.equal(args[1], k)  # q and k are not modified
    assert q_rot.dtype == dtype and k_rot.dtype == dtype


@pytest.mark.parametrize("heads", ((8, 1), (6, 3), (2, 2)))
def test_cache_store_gqa_int32_indices(device, heads):
    q, k, v, kc, vc, slots, positions, cos_sin = _cache_case(device, torch.float32, heads=heads,
                                                             dim=8, block_size=3)
    compare("rope_qk_cache_store", q, k, v, kc, vc, slots.int(), positions.int(), cos_sin)


@pytest.mark.parametrize("cache_dtype", (torch.float8_e4m3fn, torch.float8_e5m2))
@pytest.mark.parametrize("interleaved", (True, False))
def test_cache_store_fp8_scales(device, cache_dtype, interleaved):
    q, k, v, kc, vc, slots, positions, cos_sin = _cache_case(device, torch.float32, cache_dtype)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    scales = dict(k_scale=torch.tensor([0.37], device=device), v_scale=0.25)
    call_provider("rope_qk_cache_store", "native", q, k, v, kc_ref, vc_ref, slots, positions,
                  cos_sin, interleaved=interleaved, **scales)
    call_provider("rope_qk_cache_store", "triton", q, k, v, kc, vc, slots, positions, cos_sin,
                  interleaved=interleaved, **scales)
    # same fp32 values divided by the same scale, then one round-to-nearest-even to fp8:
    # the caches agree bit for bit (in the interpreter; on a GPU within one fp8 step)
    if device == "cpu":
        assert torch.equal(kc.view(torch.uint8), kc_ref.view(torch.uint8))
        assert torch.equal(vc.view(torch.uint8), vc_ref.view(torch.uint8))
    else:
        compare_fp8 = dict(rtol=0.13, atol=0.13)
        torch.testing.assert_close(kc.float(), kc_ref.float(), **compare_fp8)
        torch.testing.assert_close(vc.float(), vc_ref.float(), **compare_fp8)


def test_cache_store_sliding_window(device):
    q, k, v, kc, vc, slots, positions, cos_sin = _cache_case(device, torch.float16, tokens=8)
    slots = torch.tensor([5, -1, 0, 63, 7, 2, 40, 9], device=device)  # full-pool slots
    swa = torch.full((64,), -1, dtype=torch.int32, device=device)  # window pool of 20 slots
    swa[[5, 0, 63, 2, 9]] = torch.tensor([19, 3, 0, 11, 6], dtype=torch.int32, device=device)
    compare("rope_qk_cache_store", q, k, v, kc, vc, slots, positions, cos_sin,
            swa_slot_mapping=swa, k_scale=2.0, v_scale=torch.tensor(0.5, device=device))


def test_cache_store_strided_inputs_and_caches(device):
    # q/k/v split from one qkv projection; key and value caches interleaved in one buffer.
    # (The cache holds k_rot rounded to k's dtype: compare it in that dtype's tolerance.)
    tokens, heads, dim = 6, 2, 8
    qkv = rand((tokens, 3, heads, dim), torch.bfloat16, device)
    kv_cache = rand((4, 2, 3, heads, dim), torch.bfloat16, device)
    slots = torch.tensor([0, 11, -1, 4, 7, 2], device=device)
    positions = torch.arange(tokens, device=device)
    cos_sin = torch.cat(_tables(tokens, dim, device), dim=-1)
    compare("rope_qk_cache_store", qkv[:, 0], qkv[:, 1], qkv[:, 2], kv_cache[:, 0], kv_cache[:, 1],
            slots, positions, cos_sin, interleaved=False)


def test_cache_store_wide_heads(device):
    # the Wan head size (128) and a k dtype different from the cache dtype
    q, k, v, kc, vc, slots, positions, cos_sin = _cache_case(
        device, torch.float32, torch.bfloat16, heads=(3, 3), dim=128, blocks=2, tokens=5)
    compare("rope_qk_cache_store", q, k, v, kc, vc, slots, positions, cos_sin)


def test_supports_args(device):
    q, k, v, kc, vc, slots, positions, cos_sin = _cache_case(device)
    assert S.rope_qk_cache_store_args(q, k, v, kc, vc, slots, positions, cos_sin)
    assert not S.rope_qk_cache_store_args(q, k, v, kc.double(), vc, slots, positions, cos_sin)
    assert not S.rope_qk_cache_store_args(q, k, v, kc, vc, slots.float(), positions, cos_sin)
    assert not S.rope_qk_cache_store_args(q, k, v, kc, vc, slots, positions, cos_sin,
                                          k_scale=torch.ones(2, device=device))
    cos, sin = _tables(9, 16, device)
    assert S.rope_qk_args(q, k, cos, sin)
    assert not S.rope_qk_args(q, k, cos[:4], sin[:4])  # rows != tokens without positions
    assert not S.rope_qk_args(q, k[..., :8], cos, sin)
    assert not S.rope_qk_args(q.double(), k, cos, sin)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_cache_holds_rounded_k(device, dtype):
    # a wider cache than k: it must hold k_rot as rounded to k's dtype (what is returned),
    # not the unrounded fp32 rotation
    q, k, v, kc, vc, slots, positions, cos_sin = _cache_case(device, dtype, torch.float32)
    _, k_rot = call_provider("rope_qk_cache_store", "triton", q, k, v, kc, vc, slots, positions,
                             cos_sin)
    keep = slots >= 0
    stored = kc[slots[keep] // kc.shape[1], slots[keep] % kc.shape[1]]
    assert torch.equal(stored, k_rot[keep].float())
    assert torch.equal(vc[slots[keep] // kc.shape[1], slots[keep] % kc.shape[1]], v[keep].float())

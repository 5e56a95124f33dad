"""The native providers (the specification) against independent float64 formulas."""

import pytest
import torch
import torch.nn.functional as F

import fastdit.ops as ops
from fastdit.ops.registry import call_provider
from tests.ops.cases import MOD_MODES, modulation, rand

B, L, D, FRAMES = 2, 6, 16, 3


def per_token64(mod, B=B, L=L, D=D):
    """Expand any modulation mode to a float64 [B, L, D] tensor by hand."""
    if not isinstance(mod, torch.Tensor):
        return torch.full((B, L, D), float(mod), dtype=torch.float64)
    m = mod.double()
    if m.dim() == 0 or m.dim() == 1:
        return m.expand(B, L, D)
    if m.dim() == 2:
        return m[:, None, :].expand(B, L, D)
    if m.dim() == 3:
        return m.expand(B, L, D)
    frames = m.shape[1]
    return m.expand(B, frames, L // frames, D).reshape(B, L, D)


def layer_norm64(x, weight=None, bias=None, eps=1e-6):
    return F.layer_norm(x.double(), (x.shape[-1],), None if weight is None else weight.double(),
                        None if bias is None else bias.double(), eps)


def rms64(x, weight=None, bias=None, eps=1e-6):
    x = x.double()
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.double()
    return y if bias is None else y + bias.double()


NORMS = {"layer": layer_norm64, "rms": rms64}


def close64(actual, expected, dtype):
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double(), expected.to(dtype).double(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variance_size", [None, 5])
def test_rms_norm_spec(dtype, variance_size):
    x, w = rand((B, L, D), dtype), rand((D,), dtype)
    y = ops.rms_norm(x, w, 1e-5, variance_size=variance_size)
    x64 = x.double()
    head = x64 if variance_size is None else x64[..., :variance_size]
    close64(y, x64 / torch.sqrt(head.square().mean(-1, keepdim=True) + 1e-5) * w.double(), dtype)


def test_rms_norm_residual_spec():
    x, r, w = rand((B, L, D), torch.bfloat16), rand((B, L, D), torch.float32), rand((D,))
    y, s = ops.rms_norm(x, w, residual=r)
    assert s.dtype == torch.float32 and y.dtype == torch.bfloat16
    torch.testing.assert_close(s, x.float() + r)
    close64(y, rms64(x.double() + r.double(), w), torch.bfloat16)


@pytest.mark.parametrize("mode", list(MOD_MODES))
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_layer_norm_scale_shift_spec(mode, norm):
    x = rand((B, L, D))
    shift, scale = (modulation(mode, B, L, D, FRAMES) for _ in range(2))
    w, b = rand((D,)), rand((D,))
    y = ops.layer_norm_scale_shift(x, shift, scale, weight=w, bias=b, norm=norm)
    ref = NORMS[norm](x, w, b) * (1 + per_token64(scale)) + per_token64(shift)
    close64(y, ref, torch.float32)


@pytest.mark.parametrize("mode", ["number", "per_row_2d", "per_token", "per_frame"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_scale_residual_norm_scale_shift_spec(mode, norm):
    residual, x = rand((B, L, D)), rand((B, L, D))
    gate, shift, scale = (modulation(mode, B, L, D, FRAMES) for _ in range(3))
    y, r = ops.scale_residual_norm_scale_shift(residual, x, gate, shift, scale, norm=norm)
    r_ref = residual.double() + per_token64(gate) * x.double()
    close64(r, r_ref, torch.float32)
    close64(y, NORMS[norm](r_ref) * (1 + per_token64(scale)) + per_token64(shift), torch.float32)


def test_scale_residual_gate_is_integer_one_and_rounds_residual_first():
    residual, x = rand((B, L, D), torch.bfloat16), rand((B, L, D), torch.bfloat16)
    w, b = rand((D,)), rand((D,))
    y, r = ops.scale_residual_norm_scale_shift(residual, x, 1, 0.0, 0.0, weight=w, bias=b)
    expected_r = (residual.float() + x.float()).to(torch.bfloat16)
    assert torch.equal(r, expected_r)
    # the norm sees the rounded residual (as a two-step implementation does)
    close64(y, layer_norm64(expected_r, w, b), torch.bfloat16)


@pytest.mark.parametrize("mode", ["number", "per_channel", "per_row_3d", "per_frame"])
def test_norm_tanh_mul_add_spec(mode):
    x = rand((B, L, D))
    scale, shift = (modulation(mode, B, L, D, FRAMES) for _ in range(2))
    y = ops.norm_tanh_mul_add(x, scale, shift, norm="rms")
    close64(y, rms64(x) * torch.tanh(per_token64(scale)) + per_token64(shift), torch.float32)


@pytest.mark.parametrize("mode", list(MOD_MODES))
def test_mul_add_and_scale_shift_spec(mode):
    a, c = rand((B, L, D), torch.bfloat16), rand((B, L, D))
    b = modulation(mode, B, L, D, FRAMES)
    out = ops.mul_add(a, b, c, k=0.5)
    assert out.dtype == torch.float32
    close64(out, c.double() + a.double() * (0.5 + per_token64(b)), torch.float32)
    x = rand((B, L, D))
    scale, shift = modulation(mode, B, L, D, FRAMES), modulation(mode, B, L, D, FRAMES)
    close64(ops.scale_shift(x, scale, shift, scale_constant=2.0),
            x.double() * (2.0 + per_token64(scale)) + per_token64(shift), torch.float32)


def rope64(x, cos, sin, interleaved):
    x = x.double()
    if interleaved:  # complex multiply on pairs (2i, 2i+1), as the Wan reference does
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
        rot = torch.polar(torch.ones_like(cos.double()), torch.atan2(sin.double(), cos.double()))
        return torch.view_as_real(xc * rot[:, None, :]).flatten(-2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos.double()[:, None, :], sin.double()[:, None, :]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


def angles(n, half):
    theta = torch.rand(n, half) * 6.0
    return theta.cos(), theta.sin()


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_qk_spec_in_place(interleaved):
    T, Hq, Hk, Dh = 5, 4, 2, 8
    q, k = rand((T, Hq, Dh)), rand((T, Hk, Dh))
    q0, k0 = q.clone(), k.clone()
    cos, sin = angles(T, Dh // 2)
    q_out, k_out = ops.rope_qk_(q, k, cos, sin, interleaved=interleaved)
    assert q_out.data_ptr() == q.data_ptr() and k_out.data_ptr() == k.data_ptr()
    close64(q, rope64(q0, cos, sin, interleaved), torch.float32)
    close64(k, rope64(k0, cos, sin, interleaved), torch.float32)


@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm_rope_spec(weighted):
    B, T, H, Dh = 2, 5, 3, 8
    x = rand((B, T, H, Dh))
    x0 = x.clone()
    weight = rand((H * Dh,)) if weighted else None
    cos, sin = angles(T, Dh // 2)
    assert ops.rms_norm_rope_(x, weight, cos, sin, eps=1e-5) is x
    rows = x0.double().flatten(-2)  # RMSNorm over each token's H*D values, then RoPE per head
    normed = rows * torch.rsqrt(rows.square().mean(-1, keepdim=True) + 1e-5)
    if weighted:
        normed = normed * weight.double()
    for b in range(B):
        close64(x[b], rope64(normed[b].view(T, H, Dh), cos, sin, True), torch.float32)


def test_rms_norm_rope_errors():
    x, cos = rand((4, 2, 8)), torch.ones(4, 4)
    with pytest.raises(ValueError, match="rms_norm_rope_: weight must have shape"):
        ops.rms_norm_rope_(x, torch.ones(8), cos, cos)
    with pytest.raises(ValueError, match="rms_norm_rope_: cos must have shape"):
        ops.rms_norm_rope_(x, None, torch.ones(5, 4), cos)
    with pytest.raises(ValueError, match="rms_norm_rope_: the head dim D must be even"):
        ops.rms_norm_rope_(rand((4, 2, 7)), None, torch.ones(4, 3), torch.ones(4, 3))


def test_rope_qk_positions_and_batch():
    T, H, Dh, max_pos = 4, 2, 8, 11
    cos, sin = angles(max_pos, Dh // 2)
    positions = torch.tensor([3, 0, 10, 3])
    q, k = rand((T, H, Dh)), rand((T, H, Dh))
    q0 = q.clone()
    ops.rope_qk_(q, k, cos, sin, positions=positions)
    close64(q, rope64(q0, cos[positions], sin[positions], True), torch.float32)
    qb, kb = rand((2, T, H, Dh)), rand((2, T, H, Dh))  # leading batch: cos is per token
    qb0 = qb.clone()
    ops.rope_qk_(qb, kb, cos[:T], sin[:T])
    for i in range(2):
        close64(qb[i], rope64(qb0[i], cos[:T], sin[:T], True), torch.float32)


def test_rope_qk_cache_store_spec():
    T, Hq, Hk, Dh, blocks, bs = 6, 4, 2, 8, 3, 4
    q, k, v = rand((T, Hq, Dh)), rand((T, Hk, Dh)), rand((T, Hk, Dh))
    q0, k0 = q.clone(), k.clone()
    cos, sin = angles(16, Dh // 2)
    cos_sin = torch.cat([cos, sin], dim=1)
    positions = torch.tensor([0, 5, 7, 2, 15, 9])
    slots = torch.tensor([0, 5, -1, 11, 3, 6])
    kc = torch.full((blocks, bs, Hk, Dh), 7.0)
    vc = torch.full((blocks, bs, Hk, Dh), 7.0)
    q_rot, k_rot = ops.rope_qk_cache_store(q, k, v, kc, vc, slots, positions, cos_sin)
    assert torch.equal(q, q0) and torch.equal(k, k0)  # inputs untouched
    close64(q_rot, rope64(q0, cos[positions], sin[positions], True), torch.float32)
    close64(k_rot, rope64(k0, cos[positions], sin[positions], True), torch.float32)
    written = set()
    for t, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        written.add(slot)
        torch.testing.assert_close(kc[slot // bs, slot % bs], k_rot[t])
        torch.testing.assert_close(vc[slot // bs, slot % bs], v[t])
    for slot in set(range(blocks * bs)) - written:  # nothing else was touched
        assert (kc[slot // bs, slot % bs] == 7.0).all() and (vc[slot // bs, slot % bs] == 7.0).all()


def test_rope_qk_cache_store_fp8_scales_and_swa():
    T, H, Dh = 4, 2, 8
    q, k, v = rand((T, H, Dh)), rand((T, H, Dh)), rand((T, H, Dh))
    cos, sin = angles(8, Dh // 2)
    cos_sin = torch.cat([cos, sin], dim=1)
    positions = torch.arange(T)
    slots = torch.tensor([0, 1, 2, 3])  # full-pool slots
    swa = torch.tensor([2, -1, 0, 1])  # full slot -> sliding-window slot (-1: evicted)
    kc = torch.zeros((1, 4, H, Dh), dtype=torch.float8_e4m3fn)
    vc = torch.zeros((1, 4, H, Dh), dtype=torch.float8_e4m3fn)
    k_scale, v_scale = torch.tensor(0.5), 2.0
    _, k_rot = ops.rope_qk_cache_store(q, k, v, kc, vc, slots, positions, cos_sin, k_scale=k_scale,
                                       v_scale=v_scale, swa_slot_mapping=swa)
    for t, target in ((0, 2), (2, 0), (3, 1)):
        torch.testing.assert_close(kc[0, target].float(), (k_rot[t] / 0.5).to(torch.float8_e4m3fn).float())
        torch.testing.assert_close(vc[0, target].float(), (v[t] / 2.0).to(torch.float8_e4m3fn).float())
    assert (kc[0, 3].float() == 0).all()  # token 1 was evicted: slot 3 of the window untouched


def test_attention_native_matches_sdpa_gqa_and_causal():
    q, k, v = rand((2, 5, 4, 8)), rand((2, 7, 2, 8)), rand((2, 7, 2, 8))
    out = call_provider("attention", "native", q, k, v)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ops.attention(q, k, v), ref, atol=1e-5, rtol=1e-5)
    qc = rand((1, 7, 2, 8))
    kc, vc = rand((1, 7, 2, 8)), rand((1, 7, 2, 8))
    ref_c = F.scaled_dot_product_attention(qc.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2),
                                           is_causal=True).transpose(1, 2)
    torch.testing.assert_close(call_provider("attention", "native", qc, kc, vc, causal=True), ref_c,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ops.attention(qc, kc, vc, causal=True), ref_c, atol=1e-5, rtol=1e-5)


def gelu_tanh64(u):
    return 0.5 * u * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (u + 0.044715 * u**3)))


def test_linear_gelu_tanh_spec():
    x, w, b = rand((2, 3, 16)), rand((24, 16)), rand((24,))
    close64(ops.linear_gelu_tanh(x, w, b), gelu_tanh64(x.double() @ w.double().T + b.double()),
            torch.float32)
    close64(ops.linear_gelu_tanh(x, w), gelu_tanh64(x.double() @ w.double().T), torch.float32)


def test_linear_spec():
    x, w, b = rand((2, 3, 16)), rand((24, 16)), rand((24,))
    close64(ops.linear(x, w, b), x.double() @ w.double().T + b.double(), torch.float32)
    out = torch.full((2, 3, 24), float("nan"))
    assert ops.linear(x, w, out=out) is out  # written in place, returned
    close64(out, x.double() @ w.double().T, torch.float32)
    close64(ops.linear(x[:, 1:], w[:5]), x[:, 1:].double() @ w[:5].double().T, torch.float32)


def test_attention_masks_match_sdpa():
    q, k, v = rand((2, 5, 4, 8)), rand((2, 7, 4, 8)), rand((2, 7, 4, 8))
    keep = torch.rand(2, 1, 5, 7) > 0.3
    keep[..., 0] = True  # every query keeps a key
    bias = rand((1, 4, 5, 7))
    for mask in (keep, bias):
        ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask).transpose(1, 2)
        torch.testing.assert_close(call_provider("attention", "native", q, k, v, attn_mask=mask), ref,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ops.attention(q, k, v, attn_mask=mask), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attn_mask does not broadcast"):
        ops.attention(q, k, v, attn_mask=torch.ones(3, 1, 5, 7, dtype=torch.bool))

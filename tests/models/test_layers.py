"""fastdit.layers against the diffusers pieces they replace (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from fastdit.layers import (
    Attention,
    FeedForward,
    LayerNorm,
    LayerNormScaleShift,
    RMSNorm,
    RotaryEmbedding3D,
    ScaleResidualNormScaleShift,
    sinusoidal_embedding,
)


@pytest.mark.parametrize("head_dim", [16, 24, 128])
def test_rope_tables_equal_diffusers(head_dim):
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    ref = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=1024)
    cos_ref, sin_ref = ref(torch.zeros(1, 1, 5, 6, 10))  # (1, L, 1, D), pairs repeated
    cos, sin = RotaryEmbedding3D(head_dim)(5, 3, 5, torch.device("cpu"))
    assert cos.shape == (5 * 3 * 5, head_dim // 2) and cos.dtype == torch.float32
    assert torch.equal(cos, cos_ref[0, :, 0, 0::2]) and torch.equal(sin, sin_ref[0, :, 0, 1::2])


def test_rope_cache():
    rope = RotaryEmbedding3D(16, max_cached=2)
    a = rope(2, 3, 4, torch.device("cpu"))
    assert rope(2, 3, 4, "cpu")[0] is a[0]
    rope(1, 1, 1, "cpu")
    rope(1, 1, 2, "cpu")
    assert len(rope._cache) <= 2
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding3D(15)


def test_sinusoidal_embedding_equals_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.0, 250.5, 999.0])
    for dim in (32, 256, 33):
        ref = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        assert torch.equal(sinusoidal_embedding(t, dim), ref)
    per_token = t.view(2, 2)
    assert torch.equal(sinusoidal_embedding(per_token, 32).view(4, 32), sinusoidal_embedding(t, 32))


def test_norms():
    x = torch.randn(2, 5, 12)
    shift, scale, gate = torch.randn(3, 2, 12).unbind(0)
    norm = LayerNorm(12, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    ref = torch.nn.functional.layer_norm(x, (12,), norm.weight, norm.bias, 1e-5)
    assert torch.allclose(norm(x), ref, atol=1e-5)
    ada = LayerNormScaleShift(12, eps=1e-6)
    ref = torch.nn.functional.layer_norm(x, (12,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    assert torch.allclose(ada(x, shift, scale), ref, atol=1e-5)
    res = ScaleResidualNormScaleShift(12, eps=1e-6)
    y, r = res(x, x * 2, gate, shift, scale)
    assert torch.allclose(r, x + gate[:, None] * 2 * x, atol=1e-6)
    ref = torch.nn.functional.layer_norm(r, (12,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    assert torch.allclose(y, ref, atol=1e-5)
    rms = RMSNorm(12)
    with torch.no_grad():
        rms.weight.normal_()
    assert torch.allclose(rms(x), torch.nn.functional.rms_norm(x, (12,), rms.weight, 1e-6), atol=1e-5)
    assert RMSNorm(12, elementwise_affine=False).weight is None


def test_attention_equals_diffusers_wan_attention():
    from diffusers.models.transformers.transformer_wan import (
        WanAttention,
        WanAttnProcessor,
        WanRotaryPosEmbed,
    )

    torch.manual_seed(0)
    ref = WanAttention(dim=32, heads=2, dim_head=16, eps=1e-6, added_kv_proj_dim=32,
                       cross_attention_dim_head=16, processor=WanAttnProcessor())
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = Attention(32, 2, eps=1e-6, added_kv_dim=32)
    ours.load_state_dict(ref.state_dict())
    x, text, image = torch.randn(2, 12, 32), torch.randn(2, 512, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = ref(x, torch.cat([image, text], dim=1))
        assert torch.allclose(ours(x, text, image_context=image), expected, atol=1e-5)
        # self-attention with RoPE
        self_ref = WanAttention(dim=32, heads=2, dim_head=16, eps=1e-6,
                                processor=WanAttnProcessor())
        self_ours = Attention(32, 2, eps=1e-6)
        self_ours.load_state_dict(self_ref.state_dict())
        rope_ref = WanRotaryPosEmbed(16, (1, 2, 2), 1024)(torch.zeros(1, 1, 3, 4, 4))
        rope = RotaryEmbedding3D(16)(3, 2, 2, "cpu")
        assert torch.allclose(self_ours(x, rope=rope), self_ref(x, rotary_emb=rope_ref), atol=1e-5)
    with pytest.raises(ValueError, match="no added k/v"):
        self_ours(x, text, image_context=image)
    with torch.no_grad():  # the memory-saving form computes the same
        assert torch.equal(self_ours.self_attention(x.clone(), rope), self_ours(x, rope=rope))


def test_self_attention_frees_its_input_and_qkv_before_the_output_projection():
    import weakref

    attn = Attention(32, 2, eps=1e-6)
    rope = RotaryEmbedding3D(16)(3, 2, 2, "cpu")
    refs = {}

    def keep_ref(name):
        def hook(module, args, out):
            refs[name] = weakref.ref(out)  # returns None: the output is left as it is
        return hook

    attn.to_q.register_forward_hook(keep_ref("q"))  # q is a view of it (normed in place)
    attn.to_v.register_forward_hook(keep_ref("v"))
    alive_at_output = []
    attn.to_out[0].register_forward_pre_hook(
        lambda m, a: alive_at_output.append({name: ref() is not None for name, ref in refs.items()}))
    holder = [torch.randn(2, 12, 32)]
    refs["x"] = weakref.ref(holder[0])
    with torch.no_grad():
        attn.self_attention(holder.pop(), rope)  # nothing but the call holds the input
    assert alive_at_output == [{"x": False, "q": False, "v": False}]


def test_feed_forward_names_and_math():
    ff = FeedForward(8, 16)
    assert set(ff.state_dict()) == {"net.0.proj.weight", "net.0.proj.bias", "net.2.weight", "net.2.bias"}
    x = torch.randn(3, 8)
    ref = ff.net[2](torch.nn.functional.gelu(ff.net[0].proj(x), approximate="tanh"))
    assert torch.equal(ff(x), ref)
    with pytest.raises(ValueError, match="unknown activation"):
        FeedForward(8, 16, activation="relu6")


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu"])
@pytest.mark.parametrize("chunk_rows", [1, 4, 7, 10, 64])
def test_feed_forward_in_token_chunks_equals_whole(activation, chunk_rows):
    torch.manual_seed(0)
    ff = FeedForward(8, 24, dim_out=6, activation=activation)
    x = torch.randn(2, 5, 8)  # 10 rows over the batch: chunks straddle the batch rows
    with torch.no_grad():
        whole = ff(x)
        chunked = ff(x, chunk_rows=chunk_rows)
    assert chunked.shape == (2, 5, 6)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)

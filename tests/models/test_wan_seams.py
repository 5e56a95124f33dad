"""The transformer's seams: embed / run_blocks / head, the plan, RoPE slices, block hooks."""

import dataclasses

import torch

from fastdit.models.wan import WanTransformer
from fastdit.models.wan.transformer import BlockHooks, TransformerPlan
from tests.models.wan_helpers import I2V, T2V, TI2V, inputs


def _model(config, seed=0):
    return WanTransformer.from_config(config, dtype=torch.float32, seed=seed)


def test_forward_is_embed_blocks_head():
    for config in (T2V, I2V, TI2V):
        model = _model(config)
        args = inputs(config, batch=2)
        with torch.no_grad():
            full = model(*args)
            x, ctx = model.embed(*args)
            split = model.head(model.run_blocks(model.run_blocks(x, ctx, 0, 1), ctx, 1), ctx)
        torch.testing.assert_close(split, full, atol=0, rtol=0)
        assert ctx.tokens == (0, ctx.num_tokens) and x.shape[1] == ctx.num_tokens


def test_plan_is_data_naming_real_modules():
    model = _model(T2V)
    plan = WanTransformer.PLAN
    assert isinstance(plan, TransformerPlan) and dataclasses.is_dataclass(plan)
    blocks = getattr(model, plan.blocks)
    assert len(blocks) == T2V.num_layers
    assert hasattr(blocks[0], plan.self_attention)
    assert all(hasattr(blocks[0], name) for name in plan.local_attention)
    x, ctx = model.embed(*inputs(T2V))
    assert all(hasattr(ctx, name) for name in plan.cache_signals)
    assert x.shape[plan.sequence_dim] == ctx.num_tokens


def test_rope_slice_has_global_positions():
    model = _model(T2V)
    grid = (3, 3, 4)
    cos, sin = model.rope_for(grid, torch.device("cpu"))
    part = model.rope_for(grid, torch.device("cpu"), tokens=(5, 17))
    torch.testing.assert_close(part[0], cos[5:17], atol=0, rtol=0)
    torch.testing.assert_close(part[1], sin[5:17], atol=0, rtol=0)


def test_self_attention_function_and_hooks_are_used():
    model = _model(T2V)
    args = inputs(T2V)
    calls, order = [], []

    def counting_attention(q, k, v):
        calls.append(q.shape)
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    class Recorder(BlockHooks):
        def before_block(self, index):
            order.append(("before", index))

        def after_block(self, index):
            order.append(("after", index))

    with torch.no_grad():
        ref = model(*args)
        x, ctx = model.embed(*args)
        ctx = dataclasses.replace(ctx, self_attention=counting_attention, block_hooks=Recorder())
        out = model.head(model.run_blocks(x, ctx), ctx)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert len(calls) == T2V.num_layers  # once per block: self-attention only
    assert order == [(w, i) for i in range(T2V.num_layers) for w in ("before", "after")]


def test_ffn_chunk_is_bound_at_construction(fresh_config):
    from fastdit.config import override_config

    with override_config(memory={"ffn_chunk_tokens": 5}):
        model = _model(T2V)
    assert all(block.ffn_chunk_tokens == 5 for block in model.blocks)
    assert all(block.ffn_chunk_tokens == 7 for block in WanTransformer(T2V, ffn_chunk_tokens=7).blocks)

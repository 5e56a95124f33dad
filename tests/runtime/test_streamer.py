"""Streamed block offload on the CPU: the offloaded forward equals the resident one exactly,
whatever the split, prefetch depth and call pattern; the device pool is allocated once and
the hooks allocate nothing."""

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastdit.models.wan.transformer import BlockHooks
from fastdit.runtime import StreamPlan, make_region, stream_model
from tests.runtime.helpers import I2V, T2V5, TI2V, clone, forward, inputs, model


@pytest.fixture(scope="module")
def t2v():
    """A tiny 5-block model, its inputs (batch 2) and its resident output."""
    base = model(T2V5)
    args = inputs(T2V5, batch=2)
    return base, args, forward(base, args)


@pytest.mark.parametrize("resident,prefetch", [(0, 0), (0, 1), (0, 2), (0, 4), (2, 1), (3, 2), (5, 1)])
def test_streamed_forward_equals_resident_exactly(t2v, resident, prefetch):
    base, args, ref = t2v
    streamed = stream_model(clone(base), StreamPlan.spread(5, resident, prefetch), "cpu")
    for _ in range(2):  # prefetch runs across forwards: every call must still be exact
        torch.testing.assert_close(forward(streamed, args), ref, atol=0, rtol=0)
    plan = streamed.streamer.plan
    assert len(plan.resident) == resident and plan.slots == (min(prefetch + 1, 5 - resident) if resident < 5 else 0)


@pytest.mark.parametrize("config", [I2V, TI2V], ids=["i2v", "ti2v"])
def test_other_variants_stream_exactly(config):
    base = model(config)
    args = inputs(config, batch=1, per_token=config is TI2V)
    ref = forward(base, args)
    streamed = stream_model(clone(base), StreamPlan.spread(config.num_layers, 1, 1), "cpu")
    torch.testing.assert_close(forward(streamed, args), ref, atol=0, rtol=0)


def test_two_experts_share_one_pool():
    first, second = model(T2V5, seed=0), model(T2V5, seed=1)
    args = inputs(T2V5, batch=2)
    refs = [forward(first, args), forward(second, args)]
    plan = StreamPlan.spread(5, 2, 1)
    a = stream_model(clone(first), plan, "cpu")
    b = stream_model(clone(second), plan, "cpu", region=a.streamer.region)
    assert b.streamer.region is a.streamer.region
    for which in (0, 1, 1, 0, 1):  # the pipeline switches experts; each forward stays exact
        out = forward((a, b)[which], args)
        torch.testing.assert_close(out, refs[which], atol=0, rtol=0)
        active, idle = ((a, b)[which], (a, b)[1 - which])
        assert active.streamer.active and not idle.streamer.active
        assert active.streamer.region.owner is active.streamer
        # the idle expert's non-block tensors and blocks are host-side (its host views)
        idle_streamer = idle.streamer
        assert all(t.data_ptr() == h.data_ptr() and h.device.type == "cpu"
                   for t, h in zip(idle_streamer._others, idle_streamer._others_host))
    assert a.streamer.region.buffers_created == len(plan.resident) + plan.slots


def test_to_moves_and_keeps_blocks_in_the_host_store():
    base = model(T2V5)
    args = inputs(T2V5)
    ref = forward(base, args)
    streamed = stream_model(clone(base), StreamPlan.spread(5, 1, 1), "cpu")
    assert not streamed.streamer.active  # activated by the first forward (or .to(its device))
    assert streamed.to("cpu") is streamed and streamed.streamer.active  # the CPU is its device
    streamed.streamer.deactivate()
    assert not streamed.streamer.active and streamed.streamer.region.owner is None
    torch.testing.assert_close(forward(streamed, args), ref, atol=0, rtol=0)
    assert streamed.streamer.active
    # between forwards every block tensor points at its host view
    store = streamed.streamer.store
    for index, block in enumerate(streamed.model.blocks):
        assert block.attn1.to_q.weight.data_ptr() == store.view(index, "attn1.to_q.weight").data_ptr()
    with pytest.raises(TypeError):
        streamed.to(torch.float16)


def test_out_of_turn_blocks_restart_the_prefetch():
    """A caller running blocks in pieces, repeating or skipping some (a step cache), still
    gets each block's own weights."""
    base = model(T2V5)
    args = inputs(T2V5)
    streamed = stream_model(clone(base), StreamPlan.spread(5, 0, 2), "cpu")
    with torch.no_grad():
        x0, ctx0 = base.embed(*args)
        x1, ctx1 = streamed.embed(*args)
        for start, stop in ((0, 2), (4, 5), (1, 3), (0, 5), (3, 4)):
            torch.testing.assert_close(streamed.run_blocks(x1, ctx1, start, stop),
                                       base.run_blocks(x0, ctx0, start, stop), atol=0, rtol=0)
        # a context built by the bare model also gets the hooks
        _, bare = streamed.model.embed(*args)
        torch.testing.assert_close(streamed.run_blocks(x1, bare), base.run_blocks(x0, ctx0), atol=0, rtol=0)


def test_copies_per_forward_are_the_streamed_blocks():
    base = model(T2V5)
    args = inputs(T2V5)
    streamed = stream_model(clone(base), StreamPlan.spread(5, 2, 1), "cpu")
    forward(streamed, args)
    layout = streamed.streamer.store.layout
    before = streamed.stats["bytes_copied"]
    forward(streamed, args)
    forward(streamed, args)
    assert streamed.stats["bytes_copied"] - before == 2 * 3 * layout.nbytes  # 3 streamed blocks per forward


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls.append((func, out is args[0] if args else False))
        return out


class _Watch(BlockHooks):
    """Runs the streamer's hooks under a dispatch mode that records every aten op."""

    def __init__(self, inner):
        self.inner, self.mode = inner, _Ops()

    def before_block(self, index):
        with self.mode:
            self.inner.before_block(index)

    def after_block(self, index):
        with self.mode:
            self.inner.after_block(index)


@pytest.mark.parametrize("weights", ["dense", "fp8"])
def test_pool_is_fixed_and_hooks_allocate_nothing(weights):
    base = model(T2V5)
    args = inputs(T2V5, batch=2)
    plan = StreamPlan.spread(5, 1, 2)
    streamed = stream_model(clone(base), plan, "cpu", weights=weights)
    forward(streamed, args)  # allocates the pool
    region = streamed.streamer.region
    created = region.buffers_created
    assert created == len(plan.resident) + plan.slots + (weights == "fp8")
    pointers = [b.data_ptr() for b in region.resident + region.slots]
    watch = _Watch(streamed.streamer)
    with torch.no_grad():
        for _ in range(2):
            x, ctx = streamed.embed(*args)
            streamed.head(streamed.model.run_blocks(x, dataclasses.replace(ctx, block_hooks=watch)), ctx)
    ops = {str(func) for func, _ in watch.mode.calls}
    allowed = {"aten.copy_.default"} | ({"aten.mul_.Tensor"} if weights == "fp8" else set())
    assert ops <= allowed, ops  # only in-place copies (and the fp8 scaling): no allocation
    assert all(in_place for _, in_place in watch.mode.calls)
    copies = sum(str(f) == "aten.copy_.default" for f, _ in watch.mode.calls)
    if weights == "dense":  # one whole-block copy per streamed block, nothing per tensor
        assert copies == 2 * len(plan.streamed)
    assert region.buffers_created == created
    assert [b.data_ptr() for b in region.resident + region.slots] == pointers


def test_region_too_small_and_bad_plans_are_errors():
    base = model(T2V5)
    with pytest.raises(ValueError, match="cover blocks"):
        stream_model(clone(base), StreamPlan(resident=(0,), streamed=(1, 2), prefetch=1), "cpu")
    with pytest.raises(ValueError, match="both resident and streamed"):
        StreamPlan(resident=(0,), streamed=(0,))
    with pytest.raises(ValueError, match="prefetch"):
        StreamPlan(resident=(), streamed=(0,), prefetch=-1)
    small = stream_model(clone(base), StreamPlan.spread(5, 0, 0), "cpu")
    with pytest.raises(ValueError, match="region holds"):
        stream_model(clone(base), StreamPlan.spread(5, 0, 2), "cpu", region=small.streamer.region)


def test_spread_plans():
    plan = StreamPlan.spread(40, 10, 2)
    assert len(plan.resident) == 10 and len(plan.streamed) == 30
    assert sorted(plan.resident + plan.streamed) == list(range(40))
    gaps = [b - a for a, b in zip(plan.resident, plan.resident[1:])]
    assert max(gaps) <= 5  # resident blocks spread among the streamed ones
    assert StreamPlan.spread(4, 4, 2).streamed == () and StreamPlan.spread(4, 0).resident == ()
    assert StreamPlan.spread(3, 1, 1).slots == 2 and StreamPlan.spread(3, 2, 3).slots == 1


def test_make_region_sizes():
    base = model(T2V5)
    streamed = stream_model(clone(base), StreamPlan.spread(5, 2, 1), "cpu", weights="fp8")
    layout = streamed.streamer.store.layout
    region = make_region(layout, "cpu", StreamPlan.spread(5, 2, 1), torch.float32)
    assert region.dense_layout is not None and region.nbytes == 4 * layout.nbytes + region.dense_layout.nbytes
    assert region.buffers_created == 0  # allocated on first use only


def test_a_block_that_raises_leaves_the_streamer_usable(t2v):
    base, args, ref = t2v
    streamed = stream_model(clone(base), StreamPlan.spread(5, 1, 1), "cpu")

    def boom(q, k, v):
        raise RuntimeError("boom")

    with torch.no_grad():
        x, ctx = streamed.embed(*args)
        with pytest.raises(RuntimeError, match="boom"):
            streamed.run_blocks(x, dataclasses.replace(ctx, self_attention=boom))
    torch.testing.assert_close(forward(streamed, args), ref, atol=0, rtol=0)

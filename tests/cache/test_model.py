"""The cached model on a real (tiny) transformer: equal to the plain model when nothing is
reused, batched guidance equal to separate branches, experts reset at the switch."""

import pytest
import torch

from fastdit.cache import CacheConfig, CachedGuidance, CacheSession
from fastdit.cache.model import select_rows
from fastdit.errors import UserError

from .stand_in import CFGStrategy, denoise, make_branch_model

STEPS = 10

NEVER_REUSE = ["teacache:threshold=0,model=Wan2.1-T2V-1.3B",
               "teacache:threshold=0,ret_steps=true,model=Wan2.1-T2V-14B",
               "magcache:threshold=0,model=Wan2.1-T2V-1.3B",
               "magcache:retention=1,threshold=10,K=50,model=Wan2.1-T2V-1.3B",
               "fbcache:threshold=0", "dbcache:threshold=0,n=2,m=1,warmup=0,taylorseer=true"]


@pytest.mark.parametrize("spec", NEVER_REUSE)
@pytest.mark.parametrize("mode", ["batched", "sequential"])
def test_never_reusing_gives_the_uncached_output_exactly(spec, mode):
    model = make_branch_model()
    plain = denoise(CFGStrategy(mode=mode), [model], STEPS)
    session = CacheSession(CacheConfig.parse(spec), STEPS)
    cached = denoise(CachedGuidance(CFGStrategy(mode=mode), session), [model], STEPS)
    assert torch.equal(cached, plain)
    assert session.stats.reused == 0 and session.stats.run == 2 * STEPS


REUSING = ["teacache:threshold=0.3,model=Wan2.1-T2V-1.3B",
           "magcache:threshold=0.5,K=3,model=Wan2.1-T2V-1.3B",
           "fbcache:threshold=0.2",
           "dbcache:threshold=0.3,n=2,m=1,warmup=2,taylorseer=true"]


@pytest.mark.parametrize("spec", REUSING)
def test_batched_guidance_equals_the_branches_run_separately(spec):
    model = make_branch_model()
    batched = CacheSession(CacheConfig.parse(spec), STEPS)
    out_batched = denoise(CachedGuidance(CFGStrategy(mode="batched"), batched), [model], STEPS)
    separate = CacheSession(CacheConfig.parse(spec), STEPS)
    out_separate = denoise(CachedGuidance(CFGStrategy(mode="sequential"), separate), [model], STEPS)
    assert batched.stats.decisions == separate.stats.decisions
    assert batched.stats.reused > 0
    torch.testing.assert_close(out_batched, out_separate, rtol=1e-12, atol=1e-12)
    plain = denoise(CFGStrategy(), [model], STEPS)
    assert not torch.allclose(out_batched, plain)  # the reuse did change the output


def _ratio_file(path, steps, cond, uncond, fingerprint):
    import json
    data = {"format": "fastdit-magcache", "version": 1, "model": None, "fingerprint": fingerprint,
            "num_steps": steps, "experts": [0] * steps, "ratios": [cond, uncond]}
    path.write_text(json.dumps(data))
    return path


def test_all_three_batched_paths_against_separate_branches(tmp_path):
    """A ratio table built so that some steps reuse both branches, some one, some none."""
    from fastdit.cache.calibration import model_fingerprint

    model = make_branch_model()
    fp = model_fingerprint(model.transformer.config)
    cond = [1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 0.2, 1.0, 1.0, 1.0]
    uncond = [1.0, 1.0, 1.0, 1.0, 0.2, 1.0, 1.0, 0.2, 1.0, 1.0, 3.0, 1.0]
    table = _ratio_file(tmp_path / "r.json", 12, cond, uncond, fp)
    spec = f"magcache:table={table},threshold=0.5,K=20,retention=0.1"
    sessions, outs = [], []
    for mode in ("batched", "sequential"):
        session = CacheSession(CacheConfig.parse(spec), 12)
        outs.append(denoise(CachedGuidance(CFGStrategy(mode=mode), session), [model], 12))
        sessions.append(session)
    decisions = {}
    for s, _, b, r in sessions[0].stats.decisions:
        decisions.setdefault(s, []).append(r)
    both = [s for s, d in decisions.items() if d == [True, True]]
    one = [s for s, d in decisions.items() if d.count(True) == 1]
    none = [s for s, d in decisions.items() if d == [False, False]]
    assert both and one and none, decisions
    assert sessions[0].stats.decisions == sessions[1].stats.decisions
    # both reused: no batched forward of the blocks; one reused: a forward of batch 1
    assert sessions[0].stats.batched_forwards == len(one) + len(none)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)


def test_one_branch_alone_runs_a_batch_of_one():
    model = make_branch_model()
    session = CacheSession(CacheConfig.parse("fbcache:threshold=10"), STEPS)
    cached = session.wrap(model)
    x = torch.randn(1, 4, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor(500.0, dtype=torch.float64)
    seen = []
    original = model.transformer.run_blocks

    def spy(h, ctx, start=0, stop=None):
        seen.append((start, stop, h.shape[0], ctx.text.shape[0], ctx.temb6.shape[0]))
        return original(h, ctx, start, stop)

    model.transformer.run_blocks = spy
    session.begin_step(0)
    cached(x, t, [0, 1])  # nothing to compare with yet: both compute
    assert seen == [(0, 1, 2, 2, 2), (1, 6, 2, 2, 2)]
    session.begin_step(1)
    session.state(0, 0).reference = None  # branch 0 must compute, branch 1 may reuse
    seen.clear()
    out = cached(x, t, [0, 1])
    assert session.stats.decisions[-2:] == [(1, 0, 0, False), (1, 0, 1, True)]
    assert seen == [(0, 1, 2, 2, 2), (1, 6, 1, 1, 1)]  # the middle blocks: branch 0 alone
    model.transformer.run_blocks = original
    torch.testing.assert_close(out[0], model(x, t, [0])[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1], model(x, t, [1])[1 - 1], rtol=1e-12, atol=1e-12)  # same x, t


def test_select_rows_cuts_the_batched_fields_only():
    model = make_branch_model()
    x = torch.randn(1, 4, 2, 4, 4, dtype=torch.float64)
    h, ctx = model.transformer.embed(*model.inputs(x, torch.tensor(3.0), [0, 1]))
    sub = select_rows(ctx, [slice(1, 2)], 2)
    assert torch.equal(sub.text, ctx.text[1:2]) and torch.equal(sub.temb6, ctx.temb6[1:2])
    assert sub.rope is ctx.rope and sub.grid == ctx.grid and sub.tokens == ctx.tokens


def test_experts_keep_their_own_state_and_settings():
    high, low = make_branch_model(seed=0), make_branch_model(seed=1)
    plan = [0] * 5 + [1] * 5
    spec = "teacache:threshold=0.5,threshold_2=0,model=Wan2.1-T2V-1.3B"
    session = CacheSession(CacheConfig.parse(spec), STEPS, plan)
    out = denoise(CachedGuidance(CFGStrategy(), session), [high, low], STEPS, plan=plan)
    reused = {(s, b) for s, e, b, r in session.stats.decisions if r}
    assert reused and all(s < 5 for s, _ in reused)  # expert 2 (threshold_2=0) never reuses
    assert (0, 0) not in reused and (5, 0) not in reused  # each expert's first step computes
    expert2 = session.stats.to_dict()["branches"]["expert2.cond"]
    assert (expert2["run"], expert2["reused"], expert2["reused_steps"]) == (5, 0, [])
    assert session.stats.settings[1].endswith("threshold=0")
    plain = denoise(CFGStrategy(), [high, low], STEPS, plan=plan)
    assert not torch.allclose(out, plain)


def test_states_are_emptied_at_the_expert_switch():
    high, low = make_branch_model(seed=0), make_branch_model(seed=1)
    plan = [0, 0, 0, 1, 1, 1]
    session = CacheSession(CacheConfig.parse("fbcache:threshold=10"), 6, plan)
    cached = [session.wrap(high, 0), session.wrap(low, 1)]
    x = torch.randn(1, 4, 2, 4, 4, dtype=torch.float64)
    for s in range(6):
        session.begin_step(s)
        cached[plan[s]](x, torch.tensor(900.0 - 100 * s, dtype=torch.float64), [0, 1])
        if s == 2:
            assert session.state(0, 0).residual is not None
    assert session.stats.reused_steps(0, 0) == [1, 2]
    assert session.stats.reused_steps(1, 0) == [4, 5]  # step 3 (the switch) computes
    with pytest.raises(RuntimeError, match="belongs to expert 2"):
        cached[0](x, torch.tensor(1.0), [0])


def test_calls_need_begin_step():
    model = make_branch_model()
    session = CacheSession(CacheConfig.parse("fbcache"), 3)
    with pytest.raises(RuntimeError, match="begin_step"):
        session.wrap(model)(torch.zeros(1, 4, 2, 4, 4, dtype=torch.float64), torch.tensor(1.0), [0])


def test_session_arguments_are_checked():
    config = CacheConfig.parse("fbcache")
    with pytest.raises(UserError, match="num_steps"):
        CacheSession(config, 0)
    with pytest.raises(ValueError, match="expert_plan"):
        CacheSession(config, 3, [0, 1])
    with pytest.raises(TypeError, match="CacheConfig"):
        CacheSession("fbcache", 3)


def test_stats_summary_and_dict():
    model = make_branch_model()
    session = CacheSession(CacheConfig.parse("fbcache:threshold=0.2"), STEPS)
    denoise(CachedGuidance(CFGStrategy(), session), [model], STEPS)
    data = session.stats.to_dict()
    assert data["forwards_run"] + data["forwards_reused"] == 2 * STEPS
    assert data["branches"]["cond"]["run"] + data["branches"]["cond"]["reused"] == STEPS
    assert data["branches"]["cond"]["reused_steps"] == session.stats.reused_steps(0, 0)
    assert len(data["branches"]["uncond"]["reused_steps"]) == data["branches"]["uncond"]["reused"]
    for branch in data["branches"].values():  # each measured change agrees with its decision
        assert branch["changes"], branch
        for step, change in branch["changes"]:
            assert (change < 0.2) == (step in branch["reused_steps"]), (step, change)
    assert data["calls"] == STEPS
    line = session.stats.summary()
    assert line.startswith(f"cache fbcache:threshold=0.2: {data['forwards_run']}/{2 * STEPS} branch")
    assert "cond" in line and "uncond" in line

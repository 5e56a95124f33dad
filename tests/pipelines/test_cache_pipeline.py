"""Step caching through the real pipeline and the real (tiny) Wan transformer.

Threshold 0 gives the uncached frames bit for bit (every policy, Wan2.1 T2V and the Wan2.2
A14B two-expert model); a nonzero threshold reuses steps, says so in ``result.stats["cache"]``
and moves the frames by a bounded amount; the batched-guidance paths (both branches reuse, one,
none) equal the branches run separately on the real transformer; a per-request cache overrides
the load default; bad settings fail before any weights are loaded.
"""

import json

import numpy as np
import pytest
import torch

import fastdit
from fastdit.cache import CacheConfig, CachedGuidance, CacheSession
from fastdit.cache.calibration import model_fingerprint
from fastdit.cache.model import per_row, select_rows
from fastdit.errors import InputError, UserError
from fastdit.pipelines.guidance import CFG, BranchModel
from tests.cache.stand_in import timesteps

SMALL = dict(height=32, width=32, num_frames=5, num_inference_steps=5, seed=0, negative_prompt="blurry",
             max_sequence_length=32)
PROMPT = "a red fox in the snow"
BORROW = ",model=Wan2.1-T2V-1.3B"  # the tiny model is no published model: borrow the constants

NEVER_REUSE = ["teacache:threshold=0,ret_steps=true" + BORROW, "magcache:threshold=0" + BORROW,
               "fbcache:threshold=0", "dbcache:threshold=0,n=1,warmup=0,taylorseer=true"]


@pytest.fixture(scope="module")
def t2v(tiny_model):
    return fastdit.load(tiny_model("t2v"), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def a14b(tiny_model):
    return fastdit.load(tiny_model("a14b"), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def uncached(t2v, a14b):
    """The uncached frames of each pipeline (one generation each, shared by the tests)."""
    return {"t2v": t2v.generate(PROMPT, **SMALL), "a14b": a14b.generate(PROMPT, **SMALL)}


@pytest.mark.parametrize("task", ["t2v", "a14b"])
def test_threshold_zero_gives_the_uncached_frames(task, t2v, a14b, uncached):
    pipe, plain = {"t2v": t2v, "a14b": a14b}[task], uncached[task]
    assert plain.stats == {} and plain.settings["cache"] is None
    experts = 2 if task == "a14b" else 1
    for spec in NEVER_REUSE:
        result = pipe.generate(PROMPT, cache=spec, **SMALL)
        assert np.array_equal(result.frames, plain.frames), spec
        stats = result.stats["cache"]
        assert stats["forwards_reused"] == 0 and stats["forwards_run"] == 2 * SMALL["num_inference_steps"]
        assert len(stats["settings"]) == experts and result.settings["cache"] == CacheConfig.parse(spec).spec()
    if task == "a14b":
        assert sorted(stats["branches"]) == ["expert1.cond", "expert1.uncond", "expert2.cond", "expert2.uncond"]


REUSING = ["teacache:threshold=2000" + BORROW, "magcache:threshold=0.5,K=3" + BORROW, "fbcache:threshold=0.1",
           "dbcache:threshold=0.3,n=1,warmup=1,taylorseer=true"]


def test_a_threshold_reuses_steps_and_moves_the_frames_a_little(t2v, uncached):
    plain = uncached["t2v"].frames
    for spec in REUSING:
        result = t2v.generate(PROMPT, cache=spec, **SMALL)
        stats = result.stats["cache"]
        assert 0 < stats["forwards_reused"] and stats["forwards_run"] + stats["forwards_reused"] == 10, spec
        cond, uncond = stats["branches"]["cond"], stats["branches"]["uncond"]
        assert cond["run"] + cond["reused"] == uncond["run"] + uncond["reused"] == 5
        assert f"{stats['forwards_run']}/10 branch forwards run, {stats['forwards_reused']} reused" in stats["summary"]
        diff = np.abs(result.frames - plain)
        assert 0 < diff.mean() < 0.05 and diff.max() < 0.5, (spec, diff.mean(), diff.max())


def test_a14b_experts_have_their_own_settings_and_start_clean(a14b, uncached):
    steps = SMALL["num_inference_steps"]
    result = a14b.generate(PROMPT, cache="fbcache:threshold_1=0,threshold_2=10", **SMALL)
    stats = result.stats["cache"]
    b = stats["branches"]
    assert b["expert1.cond"]["reused"] == 0 and b["expert1.uncond"]["reused"] == 0  # threshold_1 = 0
    high = b["expert1.cond"]["run"]
    assert 0 < high < steps and b["expert2.cond"]["run"] + b["expert2.cond"]["reused"] == steps - high
    # the low-noise expert's first step computes (its state starts empty), the rest reuse
    assert b["expert2.cond"]["run"] == b["expert2.uncond"]["run"] == 1
    assert stats["settings"]["expert1"].endswith("threshold=0,warmup=0")
    assert "expert2.cond 1+" in stats["summary"]
    assert not np.array_equal(result.frames, uncached["a14b"].frames)


def test_per_request_cache_overrides_the_load_default(tiny_model, t2v, uncached):
    pipe = fastdit.load(tiny_model("t2v"), device="cpu", dtype=torch.float32, cache="fbcache:threshold=0.1")
    assert pipe.cache == CacheConfig.of("fbcache", threshold=0.1) and t2v.cache is None
    default = pipe.generate(PROMPT, **SMALL)
    assert default.stats["cache"]["spec"] == "fbcache:threshold=0.1" and default.stats["cache"]["forwards_reused"] > 0
    off = pipe.generate(PROMPT, cache="none", **SMALL)
    assert off.stats == {} and np.array_equal(off.frames, uncached["t2v"].frames)
    other = pipe.generate(PROMPT, cache="magcache:threshold=0" + BORROW, **SMALL)
    assert other.stats["cache"]["policy"] == "magcache" and np.array_equal(other.frames, uncached["t2v"].frames)
    again = pipe.generate(PROMPT, **SMALL)  # no state carried over from one generation to the next
    assert np.array_equal(again.frames, default.frames) and again.stats["cache"] == default.stats["cache"]


@pytest.mark.parametrize("cache, message", [
    ("bogus", "unknown cache policy 'bogus'"),
    ("teacache", "no published coefficients for this model"),
    ("fbcache:threshold=-0.1", "must not be negative"),
    ("dbcache", "leave nothing to cache in a model of 2 blocks"),
    ("magcache:table=/nonexistent/r.json", "no such file"),
    (3, "cache must be a policy text"),
])
def test_bad_settings_fail_before_the_weights_load(tiny_model, t2v, monkeypatch, cache, message):
    with pytest.raises(UserError, match=message):
        t2v.generate(PROMPT, cache=cache, **SMALL)
    from fastdit.pipelines import loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a component was loaded before the cache settings were checked")

    monkeypatch.setattr(loading, "_loading", no_loading)
    with pytest.raises(UserError, match=message):
        fastdit.load(tiny_model("t2v"), device="cpu", dtype=torch.float32, cache=cache)


def test_a_ratio_file_is_checked_at_load_and_its_steps_per_request(tiny_model, t2v, tmp_path, uncached):
    steps = SMALL["num_inference_steps"]
    fingerprint = model_fingerprint(t2v.transformer.config)
    table = _ratio_file(tmp_path / "ratios.json", [1.0] * steps, [1.0] * steps, fingerprint)
    pipe = fastdit.load(tiny_model("t2v"), device="cpu", dtype=torch.float32,  # the folder runs 4 steps
                        cache=f"magcache:table={table},threshold=0")
    result = pipe.generate(PROMPT, **SMALL)
    assert np.array_equal(result.frames, uncached["t2v"].frames)
    with pytest.raises(UserError, match=f"calibrated with {steps} steps, this generation runs 3"):
        pipe.generate(PROMPT, **{**SMALL, "num_inference_steps": 3})
    other = _ratio_file(tmp_path / "other.json", [1.0] * steps, [1.0] * steps, "dim=64,num_layers=2")
    with pytest.raises(UserError, match="recorded on another model"):
        fastdit.load(tiny_model("t2v"), device="cpu", dtype=torch.float32, cache=f"magcache:table={other}")


def test_calibration_writes_a_table_the_next_generation_uses(t2v, tmp_path, uncached):
    path = tmp_path / "tiny.json"
    result = t2v.generate(PROMPT, cache=f"magcache:calibrate={path}", **SMALL)
    assert np.array_equal(result.frames, uncached["t2v"].frames)  # calibration computes every step
    data = json.loads(path.read_text())
    assert data["num_steps"] == 5 and len(data["ratios"]) == 2 and data["ratios"][0][0] == 1.0
    assert data["fingerprint"] == model_fingerprint(t2v.transformer.config)
    reused = t2v.generate(PROMPT, cache=f"magcache:table={path},threshold=10,K=2,retention=0.2", **SMALL)
    assert reused.stats["cache"]["forwards_reused"] > 0


# ---------------------------------------------------------------------------------------
# The batched-guidance paths on the real transformer
# ---------------------------------------------------------------------------------------
def _ratio_file(path, cond, uncond, fingerprint):
    data = {"format": "fastdit-magcache", "version": 1, "model": None, "fingerprint": fingerprint,
            "num_steps": len(cond), "experts": [0] * len(cond), "ratios": [cond, uncond]}
    path.write_text(json.dumps(data))
    return path


def _branch_model(pipe):
    g = torch.Generator().manual_seed(7)
    texts = [torch.randn(1, 6, pipe.transformer.config.text_dim, generator=g) for _ in range(2)]
    return BranchModel(pipe.transformer, texts)


def _denoise(strategy, model, steps):
    """Euler flow matching, ``x += (sigma_{i+1} - sigma_i) v``, on the model's latent shape."""
    sigmas, ts = timesteps(steps)
    x = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for i in range(steps):
        v = strategy(model, x, ts[i].float().reshape(1), i)
        x = x + float(sigmas[i + 1] - sigmas[i]) * v
    return x


def test_batched_guidance_paths_equal_the_branches_run_separately(t2v, tmp_path):
    """A ratio table built so that some steps reuse both branches, some one, some none."""
    model = _branch_model(t2v)
    cond = [1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 0.2, 1.0]
    uncond = [1.0, 1.0, 1.0, 1.0, 0.2, 1.0, 1.0, 0.2, 1.0, 3.0]
    table = _ratio_file(tmp_path / "r.json", cond, uncond, model_fingerprint(t2v.transformer.config))
    spec = f"magcache:table={table},threshold=0.5,K=20,retention=0.1"
    sessions, outs = [], []
    for mode in ("batched", "sequential"):
        session = CacheSession(CacheConfig.parse(spec), 10)
        outs.append(_denoise(CachedGuidance(CFG(5.0, mode), session), model, 10))
        sessions.append(session)
    per_step = {}
    for s, _, _, reused in sessions[0].stats.decisions:
        per_step.setdefault(s, []).append(reused)
    both = [s for s, d in per_step.items() if d == [True, True]]
    one = [s for s, d in per_step.items() if d.count(True) == 1]
    none = [s for s, d in per_step.items() if d == [False, False]]
    assert both and one and none, per_step
    assert sessions[0].stats.decisions == sessions[1].stats.decisions
    assert sessions[0].stats.batched_forwards == len(one) + len(none)  # both reused: no blocks run
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    plain = _denoise(CFG(5.0), model, 10)
    assert (outs[0] - plain).abs().max() > 1e-3  # the reuse did change the output


@pytest.mark.parametrize("spec", ["fbcache:threshold=0.3", "dbcache:threshold=0.3,n=1,warmup=1,taylorseer=true",
                                  "teacache:threshold=2000" + BORROW])
def test_measured_decisions_batched_equal_separate(t2v, spec):
    model = _branch_model(t2v)
    batched, separate = CacheSession(CacheConfig.parse(spec), 8), CacheSession(CacheConfig.parse(spec), 8)
    out_b = _denoise(CachedGuidance(CFG(5.0, "batched"), batched), model, 8)
    out_s = _denoise(CachedGuidance(CFG(5.0, "sequential"), separate), model, 8)
    assert batched.stats.decisions == separate.stats.decisions and batched.stats.reused > 0
    torch.testing.assert_close(out_b, out_s, rtol=1e-4, atol=1e-5)


def test_the_context_rows_are_found_by_shape(tiny_model, t2v):
    """Every WanContext field is either sliced per row or shared; a new field of the context
    gets classified here (the test lists what each known field is)."""
    from fastdit.models.wan import WanTransformer

    images = WanTransformer.from_config(_i2v_config(t2v.transformer.config), dtype=torch.float32, seed=0)
    for transformer, image, t in ((t2v.transformer, None, torch.tensor([500.0, 500.0])),
                                  (images, torch.randn(2, 3, 32), torch.tensor([[0.0, 500.0]] * 2))):
        channels = transformer.config.in_channels
        latents = torch.randn(2, channels, 2, 4, 4)
        x, ctx = transformer.embed(latents, t, torch.randn(2, 6, 32), image)
        fields = {f: per_row(getattr(ctx, f), 2) for f in ctx.__dataclass_fields__}
        expected = {"temb": True, "temb6": True, "text": True, "image": image is not None, "grid": False,
                    "rope": False, "tokens": False, "self_attention": False, "block_hooks": False,
                    "extras": False}
        assert fields == expected, "a WanContext field is new: say whether it is per row"
        sub = select_rows(ctx, [slice(1, 2)], 2)
        for name, row in expected.items():
            value, new = getattr(ctx, name), getattr(sub, name)
            assert torch.equal(new, value[1:2]) if row else new is value, name
        one = transformer.run_blocks(x[1:2], sub)
        torch.testing.assert_close(one, transformer.run_blocks(x, ctx)[1:2], rtol=1e-5, atol=1e-5)
        assert select_rows(ctx, [slice(0, 2)], 2) is ctx


def _i2v_config(config):
    import dataclasses

    return dataclasses.replace(config, image_dim=32, added_kv_proj_dim=config.dim)


# ---------------------------------------------------------------------------------------
# Guidance shortcuts through the pipeline
# ---------------------------------------------------------------------------------------
def test_guidance_shortcuts(t2v, uncached):
    plain = uncached["t2v"]
    full = t2v.generate(PROMPT, guidance_until=1.0, **SMALL)
    assert np.array_equal(full.frames, plain.frames)
    until = t2v.generate(PROMPT, guidance_until=0.6, cache="fbcache:threshold=0", **SMALL)
    b = until.stats["cache"]["branches"]
    assert b["cond"]["run"] == 5 and b["uncond"]["run"] == 3  # guided on steps 0, 1, 2
    assert until.settings["guidance"][0].startswith("GuidanceUntil(until=0.6")
    zero = t2v.generate(PROMPT, cfg_zero_star=True, zero_init_steps=2, cache="fbcache:threshold=0", **SMALL)
    assert zero.stats["cache"]["branches"]["cond"]["run"] == 3  # two zero-init steps run no forward
    assert "CFGZeroStar" in zero.settings["guidance"][0] and zero.settings["zero_init_steps"] == 2
    for result in (until, zero):
        assert not np.array_equal(result.frames, plain.frames)


@pytest.mark.parametrize("kwargs, message", [
    (dict(guidance_until=1.5), r"guidance_until must be a fraction of the steps in \[0, 1\]"),
    (dict(guidance_until="x"), "guidance_until must be a number"),
    (dict(zero_init_steps=1), "needs cfg_zero_star"),
    (dict(cfg_zero_star=True, zero_init_steps=9), r"zero_init_steps must be in 0..5"),
    (dict(cfg_zero_star=True, guidance_scale=1.0), "cfg_zero_star changes classifier-free guidance, which is off"),
])
def test_bad_guidance_shortcuts(t2v, kwargs, message):
    with pytest.raises(InputError, match=message):
        t2v.generate(PROMPT, **{**SMALL, **kwargs})


@pytest.mark.parametrize("task, spec", [("i2v", "fbcache:threshold={t}"),
                                        ("ti2v", "teacache:threshold={t},ret_steps=true,model=Wan2.1-T2V-14B")])
def test_image_models(tiny_model, task, spec):
    """Wan2.1 I2V (CLIP image tokens per branch) and TI2V (per-frame timesteps, temb6 per frame)."""
    from tests.pipelines.helpers import sample_image

    pipe = fastdit.load(tiny_model(task), device="cpu", dtype=torch.float32)
    size = dict(SMALL, height=64, width=64) if task == "ti2v" else SMALL
    kwargs = dict(size, image=sample_image(), num_inference_steps=7)
    plain = pipe.generate(PROMPT, **kwargs)
    never = pipe.generate(PROMPT, cache=spec.format(t=0), **kwargs)
    assert np.array_equal(never.frames, plain.frames) and never.stats["cache"]["forwards_reused"] == 0
    reused = pipe.generate(PROMPT, cache=spec.format(t=0.3), **kwargs)
    assert reused.stats["cache"]["forwards_reused"] > 0
    assert 0 < np.abs(reused.frames - plain.frames).mean() < 0.05


@pytest.mark.parametrize("task", ["t2v", "a14b"])
def test_caches_with_streamed_blocks_equal_resident(tiny_model, t2v, a14b, task):
    """Every policy on a streamed transformer (blocks from host memory; the block caches run
    the first blocks only on a reused step, so the streamer's prefetch goes out of turn):
    the resident pipeline's decisions and frames."""
    resident = t2v if task == "t2v" else a14b
    streamed = fastdit.load(tiny_model(task), device="cpu", dtype=torch.float32, offload="blocks", prefetch=1)
    for spec in REUSING:
        ours = streamed.generate(PROMPT, cache=spec, **SMALL)
        theirs = resident.generate(PROMPT, cache=spec, **SMALL)
        assert ours.stats["cache"]["forwards_reused"] > 0, spec
        assert ours.stats["cache"]["branches"] == theirs.stats["cache"]["branches"], spec
        np.testing.assert_allclose(ours.frames, theirs.frames, atol=1e-5, rtol=0, err_msg=spec)
    assert streamed.transformer.stats["copies"] > 0

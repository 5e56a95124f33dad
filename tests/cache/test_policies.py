"""Fixed decision sequences replayed through the cached model, against the published algorithms
written out here as they are published (one counter over alternating cond/uncond calls)."""

import numpy as np
import pytest
import torch

from fastdit.cache import CacheConfig, CacheSession
from fastdit.cache.magcache import published_table
from fastdit.cache.tables import MAGCACHE_TABLES
from fastdit.cache.teacache import TEACACHE_COEFFICIENTS
from fastdit.errors import UserError

from .scripted import DIM, TOKENS, Script, ScriptedBranchModel, ScriptedTransformer, replay, reused


def _embeddings(num_steps: int, seed: int) -> list[list[torch.Tensor]]:
    """Per branch, e_s = e_{s-1} * (1 + c_s) with positive entries: rel L1 change exactly c_s."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        e, row = np.abs(rng.normal(size=DIM)) + 0.5, []
        for _ in range(num_steps):
            row.append(torch.tensor(e, dtype=torch.float64))
            e = e * (1 + rng.uniform(0.002, 0.03)) * (1 + 0.01 * rng.normal(size=DIM))
        out.append(row)
    return out


def published_teacache(emb, num_steps, threshold, ret_steps, coefficients):
    """``teacache_forward`` of TeaCache4Wan2.1 (decisions only): cnt over 2 * S calls."""
    ret, cutoff = (10, 2 * num_steps) if ret_steps else (2, 2 * num_steps - 2)
    acc, prev, skipped = [0.0, 0.0], [None, None], {0: [], 1: []}
    for cnt in range(2 * num_steps):
        b, s = cnt % 2, cnt // 2
        inp = emb[b][s].numpy()
        if cnt < ret or cnt >= cutoff:
            calc, acc[b] = True, 0.0
        else:
            acc[b] += np.poly1d(coefficients)(np.abs(inp - prev[b]).mean() / np.abs(prev[b]).mean())
            calc = not acc[b] < threshold
            if calc:
                acc[b] = 0.0
        prev[b] = inp
        if not calc:
            skipped[b].append(s)
    return skipped


@pytest.mark.parametrize("model", sorted(TEACACHE_COEFFICIENTS))
@pytest.mark.parametrize("ret_steps", [False, True])
@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.6])
def test_teacache_replays_the_published_decisions(model, ret_steps, threshold):
    steps = 24
    emb = _embeddings(steps, seed=len(model))
    config = CacheConfig.of("teacache", threshold=threshold, ret_steps=ret_steps, model=model)
    session = CacheSession(config, steps)
    outs = replay(session, [ScriptedBranchModel(ScriptedTransformer(Script(temb=emb)))], steps)
    expected = published_teacache(emb, steps, threshold, ret_steps,
                                  TEACACHE_COEFFICIENTS[model][1 if ret_steps else 0])
    assert reused(session, 0) == expected[0] and reused(session, 1) == expected[1]
    assert not ret_steps or not set(range(5)) & set(expected[0] + expected[1])  # 5 warm-up steps
    assert ret_steps or (steps - 1) not in expected[0] + expected[1]  # the last step is computed
    # a reused branch got the residual of its last computed step (1.0 per middle run here)
    for out in outs:
        assert all(torch.equal(o, torch.ones_like(o)) for o in out)


def test_teacache_threshold_zero_never_reuses_even_where_the_polynomial_is_negative():
    # T2V-14B with ret_steps: poly(0) = -0.3156 < 0, the published rule would reuse at threshold 0
    coefficients = TEACACHE_COEFFICIENTS["Wan2.1-T2V-14B"][1]
    assert np.poly1d(coefficients)(0.001) < 0
    steps = 12
    emb = [[torch.ones(DIM, dtype=torch.float64) * (1 + 0.001 * s) for s in range(steps)]] * 2
    assert published_teacache(emb, steps, 0.0, True, coefficients)[0]  # the published code reuses
    session = CacheSession(CacheConfig.of("teacache", threshold=0, ret_steps=True,
                                          model="Wan2.1-T2V-14B"), steps)
    replay(session, [ScriptedBranchModel(ScriptedTransformer(Script(temb=emb)))], steps)
    assert session.stats.reused == 0


def published_magcache(table_name, num_steps, threshold, K, retention):
    """``magcache_forward`` of MagCache4Wan2.1 (decisions only), with its table set-up."""
    cal_steps, _, _, values = MAGCACHE_TABLES[table_name]
    ratios = np.array([1.0] * 2 + list(values))
    if len(ratios) != num_steps * 2:
        def nearest_interp(src, target):
            scale = (len(src) - 1) / (target - 1)
            return src[np.round(np.arange(target) * scale).astype(int)]
        ratios = np.concatenate([nearest_interp(ratios[0::2], num_steps).reshape(-1, 1),
                                 nearest_interp(ratios[1::2], num_steps).reshape(-1, 1)], axis=1).reshape(-1)
    acc_ratio, acc_steps, acc_err, skipped = [1.0, 1.0], [0, 0], [0.0, 0.0], {0: [], 1: []}
    for cnt in range(2 * num_steps):
        b = cnt % 2
        if cnt >= int(2 * num_steps * retention):
            acc_ratio[b] *= ratios[cnt]
            acc_steps[b] += 1
            acc_err[b] += np.abs(1 - acc_ratio[b])
            if acc_err[b] < threshold and acc_steps[b] <= K:
                skipped[b].append(cnt // 2)
            else:
                acc_ratio[b], acc_steps[b], acc_err[b] = 1.0, 0, 0.0
    return skipped


@pytest.mark.parametrize("model", ["Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B", "Wan2.1-I2V-14B-480P",
                                   "Wan2.1-I2V-14B-720P", "Wan2.2-TI2V-5B"])
@pytest.mark.parametrize("steps", [50, 40, 23])
@pytest.mark.parametrize("threshold, K, retention", [(0.12, 4, 0.2), (0.24, 6, 0.2), (0.06, 2, 0.1)])
def test_magcache_replays_the_published_decisions(model, steps, threshold, K, retention):
    config = CacheConfig.of("magcache", threshold=threshold, K=K, retention=retention, model=model)
    session = CacheSession(config, steps)
    replay(session, [ScriptedBranchModel(ScriptedTransformer(Script()))], steps)
    expected = published_magcache(model, steps, threshold, K, retention)
    assert reused(session, 0) == expected[0] and reused(session, 1) == expected[1]
    assert expected[0]  # the settings do reuse


def test_magcache_uses_the_image_table_for_ti2v_with_an_image():
    text = CacheSession(CacheConfig.parse("magcache"), 50, model="Wan2.2-TI2V-5B")
    image = CacheSession(CacheConfig.parse("magcache"), 50, model="Wan2.2-TI2V-5B", has_image=True)
    for session in (text, image):
        replay(session, [ScriptedBranchModel(ScriptedTransformer(Script()))], 50)
    assert reused(text, 0) == published_magcache("Wan2.2-TI2V-5B", 50, 0.06, 2, 0.2)[0]
    assert reused(image, 0) == published_magcache("Wan2.2-TI2V-5B:i2v", 50, 0.06, 2, 0.2)[0]


def published_magcache_experts(table, num_steps, split, threshold, K, retention, mode):
    """``magcache_forward`` of MagCache4Wan2.2 (two experts; ``split`` = high-noise steps), with
    the accumulators emptied at the expert switch as fastdit does (the published code keeps them)."""
    ratios = [1.0, 1.0] + list(MAGCACHE_TABLES[table][3])
    num, split2 = 2 * num_steps, 2 * split
    acc_ratio, acc_steps, acc_err, skipped = [1.0, 1.0], [0, 0], [0.0, 0.0], {0: [], 1: []}
    for cnt in range(num):
        b = cnt % 2
        if cnt == split2:
            acc_ratio, acc_steps, acc_err = [1.0, 1.0], [0, 0], [0.0, 0.0]
        if mode == "i2v":
            use = not cnt < int(split2 + (num - split2) * retention)
        else:
            use = not (cnt < int(split2 * retention)
                       or (cnt <= ((num - split2) * retention + split2) and cnt >= split2))
        if use:
            acc_ratio[b] *= ratios[cnt]
            acc_steps[b] += 1
            acc_err[b] += np.abs(1 - acc_ratio[b])
            if acc_err[b] < threshold and acc_steps[b] <= K:
                skipped[b].append(cnt // 2)
            else:
                acc_ratio[b], acc_steps[b], acc_err[b] = 1.0, 0, 0.0
    return skipped


@pytest.mark.parametrize("model, mode, split", [("Wan2.2-T2V-A14B", "t2v", 15),
                                                ("Wan2.2-T2V-A14B", "t2v", 20),
                                                ("Wan2.2-I2V-A14B", "i2v", 18)])
@pytest.mark.parametrize("retention", [0.1, 0.2, 0.4])
def test_magcache_two_experts_follow_the_published_retention(model, mode, split, retention):
    steps, threshold, K = 40, 0.3, 3
    plan = [0] * split + [1] * (steps - split)
    config = CacheConfig.of("magcache", threshold=threshold, K=K, retention=retention)
    session = CacheSession(config, steps, plan, model=model)
    models = [ScriptedBranchModel(ScriptedTransformer(Script())) for _ in range(2)]
    replay(session, models, steps, plan=plan)
    expected = published_magcache_experts(model, steps, split, threshold, K, retention, mode)
    assert reused(session, 0) == expected[0] and reused(session, 1) == expected[1]
    if mode == "i2v":  # the high-noise expert of I2V-A14B is never cached
        assert not reused(session, 0, expert=0) and not reused(session, 1, expert=0)
    assert reused(session, 0, expert=1)


def _head_features(num_steps, seed, scale=0.08):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        f, row = rng.normal(size=(TOKENS, DIM)), []
        for _ in range(num_steps):
            row.append(torch.tensor(f, dtype=torch.float64))
            f = f + scale * rng.uniform(0.2, 1.5) * rng.normal(size=(TOKENS, DIM))
        out.append(row)
    return out


def cachedit_decisions(features, num_steps, threshold, warmup, max_cached, max_continuous):
    """cache-dit's DBCache ``can_cache`` (per branch; the reference moves on computed steps),
    with max_continuous as 'at most this many reused steps in a row'."""
    skipped = {0: [], 1: []}
    for b in (0, 1):
        ref, run = None, 0
        for k in range(num_steps):
            f = features[b][k].numpy()
            reuse = False
            if (k >= warmup and threshold > 0 and ref is not None
                    and not (0 <= max_cached <= len(skipped[b]))
                    and not (0 <= max_continuous <= run)):
                reuse = np.abs(f - ref).mean() / np.abs(ref).mean() < threshold
            if reuse:
                skipped[b].append(k)
                run += 1
            else:
                ref, run = f, 0
    return skipped


@pytest.mark.parametrize("policy", ["fbcache", "dbcache"])
@pytest.mark.parametrize("threshold, warmup, max_cached, max_continuous",
                         [(0.1, 0, -1, -1), (0.2, 3, -1, -1), (0.3, 2, 4, -1), (0.3, 0, -1, 2)])
def test_block_cache_replays_cachedit_decisions(policy, threshold, warmup, max_cached, max_continuous):
    steps = 20
    features = _head_features(steps, seed=3)
    config = CacheConfig.of(policy, threshold=threshold, warmup=warmup, max_cached=max_cached,
                            max_continuous=max_continuous, n=2, m=1)
    session = CacheSession(config, steps)
    transformer = ScriptedTransformer(Script(head=features), num_blocks=6, n=2, m=1)
    replay(session, [ScriptedBranchModel(transformer)], steps)
    expected = cachedit_decisions(features, steps, threshold, warmup, max_cached, max_continuous)
    assert reused(session, 0) == expected[0] and reused(session, 1) == expected[1]
    assert expected[0] or expected[1]
    # the middle blocks ran exactly for the computed (step, branch) pairs, batched per step
    runs = {(s, b) for s, branches in transformer.middle_runs for b in branches}
    assert runs == {(s, b) for s in range(steps) for b in (0, 1) if s not in expected[b]}


def test_taylorseer_extrapolates_the_cached_residual_to_first_order():
    steps = 8
    middle = [[torch.full((TOKENS, DIM), float(10 * s + b) ** 1.5, dtype=torch.float64)
               for s in range(steps)] for b in (0, 1)]
    head = [[torch.ones(TOKENS, DIM, dtype=torch.float64)] * steps] * 2  # no change: reuse when allowed
    config = CacheConfig.of("dbcache", threshold=0.5, warmup=3, n=1, m=0, max_continuous=2,
                            taylorseer=True)
    session = CacheSession(config, steps)
    transformer = ScriptedTransformer(Script(head=head, middle=middle), num_blocks=4, n=1)
    outs = replay(session, [ScriptedBranchModel(transformer)], steps)
    assert reused(session, 0) == [3, 4, 6, 7]
    for b in (0, 1):
        r = [m.numpy() for m in middle[b]]
        # computed 0, 1, 2, 5: the derivative needs the step counter past 1 (cache-dit)
        expected = {3: r[2] + (r[2] - r[1]) * 1, 4: r[2] + (r[2] - r[1]) * 2,
                    6: r[5] + (r[5] - r[2]) / 3 * 1, 7: r[5] + (r[5] - r[2]) / 3 * 2}
        for s, value in expected.items():
            got = outs[s][b][0].numpy() - 1.0  # minus the head blocks' residual
            np.testing.assert_allclose(got, value, rtol=1e-12)
        for s in (0, 1, 2, 5):
            np.testing.assert_allclose(outs[s][b][0].numpy() - 1.0, r[s], rtol=1e-12)


@pytest.mark.parametrize("spec", ["teacache:threshold=0,model=Wan2.1-T2V-1.3B",
                                  "magcache:threshold=0,model=Wan2.1-T2V-1.3B",
                                  "magcache:K=0,model=Wan2.1-T2V-1.3B",
                                  "magcache:retention=1,threshold=5,model=Wan2.1-T2V-1.3B",
                                  "fbcache:threshold=0", "dbcache:threshold=0,warmup=0"])
def test_threshold_zero_or_full_retention_never_reuses(spec):
    steps = 16
    script = Script(temb=[[torch.ones(DIM, dtype=torch.float64)] * steps] * 2,
                    head=[[torch.ones(TOKENS, DIM, dtype=torch.float64)] * steps] * 2)
    config = CacheConfig.parse(spec)
    n = 1 if config.policy == "fbcache" else (8 if config.policy == "dbcache" else 0)
    session = CacheSession(config, steps)
    replay(session, [ScriptedBranchModel(ScriptedTransformer(script, num_blocks=10, n=n))], steps)
    assert session.stats.reused == 0 and session.stats.run == 2 * steps


def test_models_without_constants_fail_clearly():
    model = ScriptedBranchModel(ScriptedTransformer(Script()))
    with pytest.raises(UserError, match="no published coefficients for model 'Wan2.2-T2V-A14B'"):
        CacheSession(CacheConfig.parse("teacache"), 10, model="Wan2.2-T2V-A14B").wrap(model)
    with pytest.raises(UserError, match=r"this model \(not recognised\)"):
        CacheSession(CacheConfig.parse("teacache"), 10).wrap(model)
    with pytest.raises(UserError, match="not one with a published ratio table"):
        CacheSession(CacheConfig.parse("magcache"), 10).wrap(model)
    with pytest.raises(UserError, match="no published ratio table for 'Wan2.1-FLF2V-14B-720P'"):
        CacheSession(CacheConfig.parse("magcache"), 10, model="Wan2.1-FLF2V-14B-720P").wrap(model)
    with pytest.raises(UserError, match="leave nothing to cache in a model of 6 blocks"):
        CacheSession(CacheConfig.parse("dbcache:n=4,m=2"), 10).wrap(model)


def test_published_defaults_per_model():
    model = ScriptedBranchModel(ScriptedTransformer(Script()))
    session = CacheSession(CacheConfig.parse("teacache"), 10, model="Wan2.1-I2V-14B-720P")
    session.wrap(model)
    assert session.stats.settings[0] == "model=Wan2.1-I2V-14B-720P,ret_steps=False,threshold=0.3"
    session = CacheSession(CacheConfig.parse("magcache:threshold_2=0.1"), 10, [0] * 4 + [1] * 6,
                           model="Wan2.2-I2V-A14B")
    session.wrap(model, expert=0)
    session.wrap(model, expert=1)
    assert session.stats.settings == {0: "K=2,retention=1,threshold=0.06",
                                      1: "K=2,retention=0.1,threshold=0.1"}
    assert published_table("Wan2.2-I2V-A14B", 40).source.endswith("magcache_generate.py:771")


def test_prepare_checks_settings_before_any_model_exists():
    from fastdit.models.wan.configs import WAN_CONFIGS

    with pytest.raises(UserError, match="leave nothing to cache in a model of 6 blocks"):
        CacheSession(CacheConfig.parse("dbcache:n=4,m=2"), 10).prepare(6)
    with pytest.raises(UserError, match="no published coefficients"):
        CacheSession(CacheConfig.parse("teacache"), 10, [0] * 5 + [1] * 5,
                     model="Wan2.2-I2V-A14B").prepare(40)
    session = CacheSession(CacheConfig.parse("magcache:K_2=5"), 40, [0] * 12 + [1] * 28,
                           model="Wan2.2-T2V-A14B")
    session.prepare(40, WAN_CONFIGS["Wan2.2-T2V-A14B"])
    assert session.stats.settings == {0: "K=2,retention=0.4,threshold=0.06",
                                      1: "K=5,retention=0.4,threshold=0.06"}


def test_identify_model_from_the_architecture():
    from fastdit.cache import identify_model
    from fastdit.models.wan.configs import WAN_CONFIGS

    assert identify_model("Wan2.1-T2V-14B", WAN_CONFIGS["Wan2.1-T2V-1.3B"]) == "Wan2.1-T2V-14B"
    for name in ("Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B", "Wan2.2-TI2V-5B"):
        assert identify_model(None, WAN_CONFIGS[name]) == name
    for name in ("Wan2.2-T2V-A14B", "Wan2.2-I2V-A14B"):
        assert identify_model(None, WAN_CONFIGS[name], two_experts=True) == name
    i2v = WAN_CONFIGS["Wan2.1-I2V-14B-480P"]
    assert identify_model(None, i2v, height=480, width=832) == "Wan2.1-I2V-14B-480P"
    assert identify_model(None, i2v, height=720, width=1280) == "Wan2.1-I2V-14B-720P"
    assert identify_model(None, WAN_CONFIGS["Wan2.1-FLF2V-14B-720P"]) is None
    assert identify_model(None, None) is None

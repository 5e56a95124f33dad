"""MagCache calibration: the recorded ratios against float64 norms, and the file checks."""

import json

import numpy as np
import pytest
import torch

from fastdit.cache import CacheConfig, CachedGuidance, CacheSession
from fastdit.errors import UserError

from .stand_in import CFGStrategy, StandInConfig, denoise, make_branch_model, timesteps

STEPS = 8


def _calibrate(tmp_path, model, plan=None, models=None, name="ratios.json"):
    path = tmp_path / name
    session = CacheSession(CacheConfig.parse(f"magcache:calibrate={path}"), STEPS, plan)
    out = denoise(CachedGuidance(CFGStrategy(), session), models or [model], STEPS, plan=plan)
    return path, session, out


def _residuals(model, num_steps):
    """Per step and branch, the blocks' residual of the plain guided loop, recomputed by hand."""
    sigmas, ts = timesteps(num_steps)
    x = torch.randn((1, 4, 2, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = []
    for i in range(num_steps):
        h0, ctx = model.transformer.embed(*model.inputs(x, ts[i], [0, 1]))
        h = model.transformer.run_blocks(h0, ctx)
        out.append([(h - h0)[b].numpy() for b in (0, 1)])
        cond, uncond = model.transformer.head(h, ctx).split(1)
        x = x + (sigmas[i + 1] - sigmas[i]) * (uncond + 5.0 * (cond - uncond))
    return out


def test_calibration_records_the_magnitude_ratios(tmp_path):
    model = make_branch_model()
    path, session, out = _calibrate(tmp_path, model)
    assert torch.equal(out, denoise(CFGStrategy(), [model], STEPS))  # nothing reused
    data = json.loads(path.read_text())
    assert data["format"] == "fastdit-magcache" and data["num_steps"] == STEPS
    assert data["fingerprint"] == "dim=16,num_layers=6,in_channels=4,out_channels=4,patch_size=1x2x2"
    assert data["experts"] == [0] * STEPS
    residuals = _residuals(model, STEPS)
    for b in (0, 1):
        assert data["ratios"][b][0] == 1.0
        for s in range(1, STEPS):
            r, p = residuals[s][b], residuals[s - 1][b]
            expected = (np.linalg.norm(r, axis=-1) / np.linalg.norm(p, axis=-1)).mean()
            assert data["ratios"][b][s] == pytest.approx(expected, abs=1e-5)
    assert not list(tmp_path.glob(".*partial"))


def test_a_calibrated_table_is_used(tmp_path):
    model = make_branch_model()
    path, _, _ = _calibrate(tmp_path, model)
    plain = denoise(CFGStrategy(), [model], STEPS)
    never = CacheSession(CacheConfig.parse(f"magcache:table={path},threshold=0"), STEPS)
    assert torch.equal(denoise(CachedGuidance(CFGStrategy(), never), [model], STEPS), plain)
    session = CacheSession(CacheConfig.parse(f"magcache:table={path},threshold=1,K=2"), STEPS)
    denoise(CachedGuidance(CFGStrategy(), session), [model], STEPS)
    assert session.stats.reused > 0


def test_two_expert_calibration_starts_each_expert_afresh(tmp_path):
    plan = [0] * 3 + [1] * 5
    models = [make_branch_model(seed=0), make_branch_model(seed=1)]
    path, _, _ = _calibrate(tmp_path, None, plan=plan, models=models)
    data = json.loads(path.read_text())
    assert data["experts"] == plan
    assert data["ratios"][0][3] == 1.0 and data["ratios"][1][3] == 1.0  # no previous residual
    assert data["ratios"][0][4] != 1.0


def _edit(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_file_that_does_not_match_fails_clearly(tmp_path):
    model = make_branch_model()
    path, _, _ = _calibrate(tmp_path, model)

    def use(spec, steps=STEPS, on=model, name=None):
        CacheSession(CacheConfig.parse(spec), steps, model=name).wrap(on)

    other = make_branch_model(config=StandInConfig(num_layers=4))
    with pytest.raises(UserError, match="recorded on another model.*num_layers=4"):
        use(f"magcache:table={path}", on=other)
    with pytest.raises(UserError, match=f"calibrated with {STEPS} steps, this generation runs 12"):
        use(f"magcache:table={path}", steps=12)
    _edit(path, model="Wan2.1-T2V-1.3B")
    with pytest.raises(UserError, match="recorded on Wan2.1-T2V-1.3B, this model is Wan2.1-T2V-14B"):
        use(f"magcache:table={path}", name="Wan2.1-T2V-14B")
    data = json.loads(path.read_text())
    _edit(path, ratios=[data["ratios"][0][:-1], data["ratios"][1]])
    with pytest.raises(UserError, match=f"branch 0 have length {STEPS - 1}, expected {STEPS}"):
        use(f"magcache:table={path}")
    _edit(path, ratios=[[0.0] * STEPS])
    with pytest.raises(UserError, match="positive finite"):
        use(f"magcache:table={path}")
    _edit(path, format="something")
    with pytest.raises(UserError, match="not a fastdit MagCache calibration file"):
        use(f"magcache:table={path}")
    with pytest.raises(UserError, match="no such file"):
        use(f"magcache:table={tmp_path / 'missing.json'}")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable JSON file"):
        use(f"magcache:table={tmp_path / 'bad.json'}")


def test_unwritable_calibration_path_fails_clearly(tmp_path):
    model = make_branch_model()
    with pytest.raises(UserError, match="cannot write the calibration file"):
        _calibrate(tmp_path, model, name="no/such/dir.json")

"""fastdit.cache.wiring: which model's constants a folder gets, and the checks that run before
any weights load (no weights here: specs built from named configurations)."""

import json

import pytest

from fastdit.cache import CacheConfig
from fastdit.cache.calibration import model_fingerprint
from fastdit.cache.wiring import check_cache, model_name, resolve_cache
from fastdit.errors import UserError
from fastdit.models.wan.configs import WAN_CONFIGS
from fastdit.pipelines.spec import ModelSpec

VAE = {"z_dim": 16, "scale_factor_spatial": 8, "scale_factor_temporal": 4}


def _spec(config_name, name=None, **kwargs):
    config = WAN_CONFIGS[config_name]
    return ModelSpec.from_configs(config.to_diffusers_config(), VAE, {"num_train_timesteps": 1000},
                                  name=name, **kwargs)


@pytest.mark.parametrize("config_name, kwargs, size, expected", [
    ("Wan2.1-T2V-1.3B", {}, None, "Wan2.1-T2V-1.3B"),
    ("Wan2.1-T2V-14B", {}, None, "Wan2.1-T2V-14B"),
    ("Wan2.1-I2V-14B-480P", {"pipeline_class": "WanImageToVideoPipeline"}, (480, 832), "Wan2.1-I2V-14B-480P"),
    ("Wan2.1-I2V-14B-720P", {"pipeline_class": "WanImageToVideoPipeline"}, (720, 1280), "Wan2.1-I2V-14B-720P"),
    ("Wan2.2-T2V-A14B", {"boundary_ratio": 0.875}, None, "Wan2.2-T2V-A14B"),
    ("Wan2.2-I2V-A14B", {"boundary_ratio": 0.9, "pipeline_class": "WanImageToVideoPipeline"}, None,
     "Wan2.2-I2V-A14B"),
    ("Wan2.2-TI2V-5B", {"expand_timesteps": True}, None, "Wan2.2-TI2V-5B"),
    ("Wan2.1-FLF2V-14B-720P", {"pipeline_class": "WanImageToVideoPipeline"}, None, None),
])
def test_unnamed_folders_are_named_by_their_architecture(config_name, kwargs, size, expected):
    spec = _spec(config_name, **kwargs)
    height, width = size or (None, None)
    assert model_name(spec, WAN_CONFIGS[config_name], height=height, width=width) == expected


def test_a_known_name_wins_and_an_unknown_one_is_ignored():
    config = WAN_CONFIGS["Wan2.1-T2V-14B"]
    assert model_name(_spec("Wan2.1-T2V-14B", name="Wan2.1-T2V-14B"), config) == "Wan2.1-T2V-14B"
    assert model_name(_spec("Wan2.1-T2V-14B", name="my fine-tune"), config) == "Wan2.1-T2V-14B"


def test_resolve_cache_takes_the_default_unless_told():
    spec, default = _spec("Wan2.1-T2V-1.3B", name="Wan2.1-T2V-1.3B"), CacheConfig.parse("teacache")
    kw = dict(num_steps=50, height=480, width=832, has_image=False)
    assert resolve_cache(None, default, spec, **kw) is default
    assert resolve_cache("none", default, spec, **kw) is None
    assert resolve_cache("magcache", default, spec, **kw) == CacheConfig("magcache")
    assert resolve_cache(None, None, spec, **kw) is None
    with pytest.raises(UserError, match="no published coefficients for model 'Wan2.2-T2V-A14B'"):
        resolve_cache("teacache", None, _spec("Wan2.2-T2V-A14B", boundary_ratio=0.875), **kw)
    with pytest.raises(UserError, match="leave nothing to cache in a model of 30 blocks"):
        resolve_cache("dbcache:n=20,m=10", None, spec, **kw)


def test_a_ratio_file_step_count_is_checked_once_it_is_known(tmp_path):
    spec = _spec("Wan2.1-T2V-1.3B")
    fingerprint = model_fingerprint(WAN_CONFIGS["Wan2.1-T2V-1.3B"])
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"format": "fastdit-magcache", "version": 1, "model": None,
                                "fingerprint": fingerprint, "num_steps": 20, "experts": [0] * 20,
                                "ratios": [[1.0] * 20, [1.0] * 20]}))
    config = CacheConfig.parse(f"magcache:table={path}")
    check_cache(config, spec)  # at load: the folder's default is 50 steps, the file has 20
    check_cache(config, spec, num_steps=20)
    with pytest.raises(UserError, match="calibrated with 20 steps, this generation runs 50"):
        check_cache(config, spec, num_steps=50)
    with pytest.raises(UserError, match="recorded on another model"):
        check_cache(config, _spec("Wan2.1-T2V-14B"))


def test_a14b_per_expert_settings_are_checked():
    spec = _spec("Wan2.2-T2V-A14B", boundary_ratio=0.875)
    check_cache(CacheConfig.parse("magcache:threshold_1=0.02,threshold_2=0.1"), spec)
    with pytest.raises(UserError, match="leave nothing to cache"):
        check_cache(CacheConfig.parse("dbcache:n_2=40"), spec)

"""``NAME[:key=value,...]`` parsing and validation."""

import pytest

from fastdit.cache import CacheConfig, as_cache_config
from fastdit.cache.config import KNOBS
from fastdit.errors import UserError


def test_parse_types_and_canonical_spec():
    config = CacheConfig.parse(" MagCache : threshold=0.06, k=3 ,retention=0.1,K_2=1 ")
    assert config.policy == "magcache"
    assert dict(config.options) == {"threshold": 0.06, "K": 3, "retention": 0.1, "K_2": 1}
    assert isinstance(dict(config.options)["K"], int)
    assert CacheConfig.parse(config.spec()) == config
    assert CacheConfig.parse("teacache:ret_steps=yes").get("ret_steps") is True
    assert CacheConfig.parse("dbcache:taylorseer=0").get("taylorseer") is False
    assert CacheConfig.parse("fbcache") == CacheConfig("fbcache")


@pytest.mark.parametrize("text", ["none", "off", "None", ""])
def test_off(text):
    assert CacheConfig.parse(text) is None
    assert as_cache_config(text) is None


def test_per_expert_values_and_precedence():
    config = CacheConfig.of("magcache", threshold=0.1, threshold_2=0.2)
    assert config.get("threshold", expert=0) == 0.1
    assert config.get("threshold", expert=1) == 0.2
    preset = {"threshold": 0.5, "K": 4, "retention": 0.2, "retention_1": 1.0}
    assert config.resolve(0, preset) == {"threshold": 0.1, "K": 4, "retention": 1.0}
    assert config.resolve(1, preset) == {"threshold": 0.2, "K": 4, "retention": 0.2}
    mine = CacheConfig.of("magcache", retention_1=0.3, retention=0.4)
    assert mine.resolve(0, preset)["retention"] == 0.3  # the config's key_1 beats the preset's
    assert CacheConfig.of("magcache", retention=0.4).resolve(0, preset)["retention"] == 1.0


def test_as_cache_config_forms():
    config = CacheConfig.of("teacache", threshold=0.08)
    assert as_cache_config(config) is config
    assert as_cache_config("teacache:threshold=0.08") == config
    assert as_cache_config({"policy": "teacache", "threshold": 0.08}) == config
    with pytest.raises(UserError, match="'policy' key"):
        as_cache_config({"threshold": 0.08})
    with pytest.raises(UserError, match="CacheConfig or None"):
        as_cache_config(0.08)


@pytest.mark.parametrize("text, message", [
    ("tea:threshold=1", "unknown cache policy 'tea'; known: teacache, magcache, fbcache, dbcache"),
    ("teacache:thresh=0.1", "unknown setting 'thresh'; known: threshold, ret_steps, model"),
    ("teacache:threshold=-0.1", r"threshold=-0.1 must not be negative"),
    ("magcache:threshold=abc", r"threshold='abc' must be a number"),
    ("magcache:K=2.5", r"K='2.5' must be an integer"),
    ("magcache:K=-1", r"K=-1 must not be negative"),
    ("magcache:retention=1.5", r"retention=1.5 must be at most 1"),
    ("fbcache:threshold=nan", "must be finite"),
    ("dbcache:n=0", r"n=0 must not be below 1"),
    ("dbcache:taylorseer=maybe", "must be true or false"),
    ("teacache:threshold", "expected key=value, got 'threshold'"),
    ("teacache:threshold=", "expected key=value"),
    ("teacache:threshold=0.1,threshold=0.2", "'threshold' given twice"),
    ("teacache:model_2=Wan2.1-T2V-14B", "takes no expert suffix"),
    ("magcache:table=a.json,calibrate=b.json", "cannot be combined"),
])
def test_bad_settings_fail_clearly(text, message):
    with pytest.raises(UserError, match=message):
        CacheConfig.parse(text)


def test_python_values_are_checked_too():
    with pytest.raises(UserError, match="must be a number"):
        CacheConfig.of("teacache", threshold="x")
    with pytest.raises(UserError, match="must be true or false"):
        CacheConfig.of("teacache", ret_steps=1)
    with pytest.raises(UserError, match="must be an integer"):
        CacheConfig.of("magcache", K=2.0)
    assert CacheConfig.of("teacache", threshold=0).get("threshold") == 0.0


def test_every_policy_has_a_threshold_and_help():
    from fastdit.cache.config import policy_help

    text = policy_help()
    for policy, knobs in KNOBS.items():
        assert knobs[0].name == "threshold", policy
        assert f"{policy}:" in text and all(f"  {k.name} (" in text for k in knobs)


def test_brief_help_names_every_knob_on_one_line():
    from fastdit.cache.config import policy_help

    text = policy_help(brief=True)
    assert "\n" not in text and "fbcache/dbcache:" in text
    for policy, knobs in KNOBS.items():
        assert policy in text and all(k.name in text for k in knobs)

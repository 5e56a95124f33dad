"""GPU-only: the cached model on CUDA in bf16 (the stand-in transformer of tests/cache, and the
real pipeline on a tiny random model).

MagCache decides from its table on the host: a whole cached generation must not synchronise
(``torch.cuda.set_sync_debug_mode("error")`` raises on any device -> host wait); TeaCache and
the block caches wait once per cached call (the measured change). Threshold 0 stays equal to
the plain model, bit for bit.
"""

import pytest
import torch

from fastdit.cache import CacheConfig, CachedGuidance, CacheSession
from tests.cache.stand_in import CFGStrategy, denoise, make_branch_model

pytestmark = pytest.mark.gpu


def _run(spec, steps=12):
    model = make_branch_model(dtype=torch.bfloat16, device="cuda")
    session = CacheSession(CacheConfig.parse(spec), steps) if spec else None
    strategy = CFGStrategy() if session is None else CachedGuidance(CFGStrategy(), session)
    return denoise(strategy, [model], steps, device="cuda", dtype=torch.bfloat16), session


@pytest.mark.parametrize("spec", ["teacache:threshold=0,model=Wan2.1-T2V-1.3B",
                                  "magcache:threshold=0,model=Wan2.1-T2V-1.3B",
                                  "fbcache:threshold=0", "dbcache:threshold=0,n=2,warmup=0"])
def test_threshold_zero_is_the_plain_output_on_the_gpu(spec):
    plain, _ = _run(None)
    cached, session = _run(spec)
    assert torch.equal(cached, plain) and session.stats.reused == 0


def test_magcache_never_waits_for_the_gpu():
    model = make_branch_model(dtype=torch.bfloat16, device="cuda")
    session = CacheSession(CacheConfig.parse("magcache:threshold=0.5,K=3,model=Wan2.1-T2V-1.3B"), 12)
    strategy = CachedGuidance(CFGStrategy(), session)
    x = torch.randn(1, 4, 2, 4, 4, device="cuda", dtype=torch.bfloat16)
    ts = torch.linspace(999, 10, 12, device="cuda")
    x = x - 0.05 * strategy(model, x, ts[0], 0)  # first step: library handles, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 12):
            x = x - 0.05 * strategy(model, x, ts[i], i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert session.stats.reused > 0


@pytest.mark.parametrize("spec", ["teacache:threshold=1e4,model=Wan2.1-T2V-1.3B", "fbcache:threshold=0.2"])
def test_measuring_policies_reuse_in_bf16(spec):
    """The measured decisions run on CUDA in bf16 and reuse. The stand-in's random timestep
    embedding moves by about 100% a step (10^2-10^3 through the Wan2.1 polynomial, against a
    few hundredths for Wan itself), so TeaCache's threshold sits above that."""
    plain, _ = _run(None)
    cached, session = _run(spec)
    assert session.stats.reused > 0
    assert torch.isfinite(cached.float()).all() and not torch.equal(cached, plain)


# ---- the real pipeline on the GPU (tiny random model, bf16) ----------------------------------
@pytest.fixture(scope="module")
def gpu_t2v(tmp_path_factory):
    import fastdit
    from tests.pipelines.helpers import tiny_model

    return fastdit.load(tiny_model(tmp_path_factory.mktemp("tiny"), "t2v"), device="cuda", dtype=torch.bfloat16)


TINY = dict(height=32, width=32, num_frames=5, num_inference_steps=6, seed=0, negative_prompt="blurry",
            max_sequence_length=32, output_type="latent")
BORROW = ",model=Wan2.1-T2V-1.3B"


def test_pipeline_threshold_zero_is_the_uncached_output_on_the_gpu(gpu_t2v):
    plain = gpu_t2v.generate("a fox", **TINY).frames
    for spec in ("teacache:threshold=0" + BORROW, "magcache:threshold=0" + BORROW, "fbcache:threshold=0",
                 "dbcache:threshold=0,n=1,warmup=0"):
        result = gpu_t2v.generate("a fox", cache=spec, **TINY)
        assert torch.equal(result.frames, plain), spec
        assert result.stats["cache"]["forwards_reused"] == 0


def test_pipeline_reuses_on_the_gpu(gpu_t2v):
    plain = gpu_t2v.generate("a fox", **TINY).frames
    result = gpu_t2v.generate("a fox", cache="fbcache:threshold=0.3", **TINY)
    assert result.stats["cache"]["forwards_reused"] > 0
    assert torch.isfinite(result.frames).all() and not torch.equal(result.frames, plain)

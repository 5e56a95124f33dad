"""Every layout on spawned gloo ranks (2 and 4 processes) against the single-process result.

Bounds (fp32): attention and the transformer within 2e-5 absolute / 2e-5 relative of the
single-process computation (Ulysses reorders nothing but the heads; Ring adds the fp32
online-softmax merge); CFG-parallel within the same bound of the single-process CFG formula
on the same branch predictions; the parallel VAE within 1e-5 of ``vae.decode`` (the halo
convolutions run on differently sized inputs, nothing else changes).
"""

from __future__ import annotations

import pytest
import torch

from fastdit.ops.attention import attention_native
from tests.distributed import cases
from tests.distributed.spawn import run_ranks
from tests.distributed.workers import run_all

ATOL = RTOL = 2e-5
VAE_ATOL = 1e-5


@pytest.fixture(scope="module")
def models():
    return cases.build_models()


def _run(world, models, tmp_path_factory):
    vaes, model = models
    workdir = tmp_path_factory.mktemp(f"world{world}")
    torch.save({**{name: vae.state_dict() for name, vae in vaes.items()},
                "transformer": model.state_dict()}, workdir / "models.pt")
    return run_ranks(run_all, world, workdir)


@pytest.fixture(scope="module")
def world2(models, tmp_path_factory):
    return _run(2, models, tmp_path_factory)


@pytest.fixture(scope="module")
def world4(models, tmp_path_factory):
    return _run(4, models, tmp_path_factory)


def _results(request, world):
    return request.getfixturevalue(f"world{world}")


def _same_on_every_rank(results, name):
    for rank, result in enumerate(results[1:], start=1):
        assert torch.equal(result[name], results[0][name]), f"{name}: rank {rank} differs from rank 0"
    return results[0][name]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(cases.ATTENTION_CASES))
def test_attention_layout_matches_full_attention(name, request):
    _, world, length, heads = cases.ATTENTION_CASES[name]
    out = _same_on_every_rank(_results(request, world), name)
    q, k, v = cases.attention_inputs(length, heads)
    torch.testing.assert_close(out, attention_native(q, k, v), atol=ATOL, rtol=RTOL)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(cases.TRANSFORMER_CASES))
def test_sequence_parallel_transformer_matches_one_process(name, models, request):
    _, world = cases.TRANSFORMER_CASES[name]
    out = _same_on_every_rank(_results(request, world), "transformer/" + name)
    inputs = cases.transformer_inputs()
    with torch.no_grad():
        ref = models[1](inputs["latents"], inputs["timestep"], inputs["text"])
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(cases.CFG_CASES))
def test_cfg_parallel_matches_single_process_cfg(name, models, request):
    _, world = cases.CFG_CASES[name]
    out = _same_on_every_rank(_results(request, world), name)
    inputs = cases.transformer_inputs()
    model = models[1]
    with torch.no_grad():
        cond = model(inputs["latents"], inputs["timestep"], inputs["text"])
        uncond = model(inputs["latents"], inputs["timestep"], inputs["negative"])
    ref = uncond + cases.GUIDANCE_SCALE * (cond - uncond)
    assert (cond - uncond).abs().max() > 1e-3  # the two branches really differ
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("vae_name", list(cases.VAE_LATENTS))
def test_parallel_vae_decode_matches_decode(world, vae_name, models, request):
    out = _same_on_every_rank(_results(request, world), f"vae{world}/{vae_name}")
    vae = models[0][vae_name]
    with torch.no_grad():
        ref = vae.decode(cases.vae_latents(vae_name)).sample
    assert out.shape == ref.shape
    assert ref.std() > 0.1  # frames that depend on the latents
    torch.testing.assert_close(out, ref, atol=VAE_ATOL, rtol=0)

"""Every layout on spawned gloo ranks (2 and 4 processes) against the single-process result.

Bounds (fp32; measured maxima on this CPU in brackets): attention and the tiny transformer
within 2e-5 absolute + 2e-5 relative of the single-process computation [1.2e-6]; CFG-parallel
within the same bound of single-process CFG on the same branch predictions [2.3e-6]; the
parallel VAE decode within 1e-5 absolute of ``vae.decode`` [2.8e-6] (the halo convolutions
run on differently sized inputs; nothing else changes). Every rank returns bit-identical
results.
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


def run_world(world, models, workdir, setup=None, timeout_s=240.0):
    """All cases of ``world`` ranks; the per-rank result dicts."""
    vaes, model = models
    torch.save({**{name: vae.state_dict() for name, vae in vaes.items()},
                "transformer": model.state_dict()}, workdir / "models.pt")
    if setup:
        torch.save(setup, workdir / "setup.pt")
    return run_ranks(run_all, world, workdir, timeout_s=timeout_s)


def same_on_every_rank(results, name):
    for rank, result in enumerate(results[1:], start=1):
        assert torch.equal(result[name], results[0][name]), f"{name}: rank {rank} differs from rank 0"
    return results[0][name]


@torch.no_grad()
def reference(name: str, models, device="cpu") -> torch.Tensor:
    """The single-process result that case ``name`` must reproduce."""
    vaes, model = models
    if name == "broadcast":
        return torch.ones(3, device=device)
    if name in cases.ATTENTION_CASES:
        _, _, length, heads = cases.ATTENTION_CASES[name]
        return attention_native(*(t.to(device) for t in cases.attention_inputs(length, heads)))
    inputs = {key: t.to(device) for key, t in cases.transformer_inputs().items()}
    model = model.to(device)
    if name.startswith("transformer/"):
        return model(inputs["latents"], inputs["timestep"], inputs["text"])
    if name in cases.CFG_CASES:
        cond = model(inputs["latents"], inputs["timestep"], inputs["text"])
        uncond = model(inputs["latents"], inputs["timestep"], inputs["negative"])
        assert (cond - uncond).abs().max() > 1e-3  # the two branches really differ
        return uncond + cases.GUIDANCE_SCALE * (cond - uncond)
    vae_name = name.split("/")[1]
    ref = vaes[vae_name].to(device).decode(cases.vae_latents(vae_name).to(device)).sample
    assert ref.std() > 0.1  # frames that depend on the latents
    return ref


def bounds(name: str) -> dict:
    return dict(atol=VAE_ATOL, rtol=0) if name.startswith("vae") else dict(atol=ATOL, rtol=RTOL)


@pytest.fixture(scope="module")
def models():
    return cases.build_models()


@pytest.fixture(scope="module")
def world2(models, tmp_path_factory):
    return run_world(2, models, tmp_path_factory.mktemp("world2"))


@pytest.fixture(scope="module")
def world4(models, tmp_path_factory):
    return run_world(4, models, tmp_path_factory.mktemp("world4"))


def _check(name, world, models, request):
    out = same_on_every_rank(request.getfixturevalue(f"world{world}"), name)
    ref = reference(name, models)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, **bounds(name))


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", list(cases.ATTENTION_CASES))
def test_attention_layout_matches_full_attention(name, models, request):
    _check(name, cases.ATTENTION_CASES[name][1], models, request)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", list(cases.TRANSFORMER_CASES))
def test_sequence_parallel_transformer_matches_one_process(name, models, request):
    _check("transformer/" + name, cases.TRANSFORMER_CASES[name][1], models, request)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", list(cases.CFG_CASES))
def test_cfg_parallel_matches_single_process_cfg(name, models, request):
    _check(name, cases.CFG_CASES[name][1], models, request)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("world", [2, 4])
def test_broadcast_from_writer(world, request):
    out = same_on_every_rank(request.getfixturevalue(f"world{world}"), "broadcast")
    assert torch.equal(out, torch.ones(3))  # rank 0's value everywhere


@pytest.mark.timeout(420)
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("vae_name", list(cases.VAE_LATENTS))
def test_parallel_vae_decode_matches_decode(world, vae_name, models, request):
    _check(f"vae{world}/{vae_name}", world, models, request)

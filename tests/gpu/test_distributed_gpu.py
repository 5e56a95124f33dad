"""GPU-only checks of the distributed package (run by benchmarks/gpu_run.sh):

* ``attention_lse`` through each of torch's fused SDPA kernels against the native spec;
* Ring's chunk-and-merge on one GPU against full attention;
* with 2 (and 4) GPUs: every layout of tests/distributed on NCCL, against the one-GPU result.
"""

from __future__ import annotations

import pytest
import torch

from fastdit.config import override_config
from fastdit.kernels.attention.lse import attention_lse_sdpa
from fastdit.ops.attention_lse import attention_lse, attention_lse_native, merge_partial

pytestmark = pytest.mark.gpu

LSE_CASES = [("cudnn", torch.bfloat16), ("cudnn", torch.float16), ("flash", torch.bfloat16),
             ("flash", torch.float16), ("efficient", torch.bfloat16), ("efficient", torch.float32)]
OUT_TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 2e-5}


@pytest.mark.parametrize("backend,dtype", LSE_CASES)
@pytest.mark.parametrize("lq,lk", [(257, 300), (1024, 77)])
def test_attention_lse_kernels_match_native(backend, dtype, lq, lk):
    if backend == "cudnn" and (torch.version.hip or torch.cuda.get_device_capability() < (9, 0)):
        pytest.skip("cuDNN attention is chosen on NVIDIA sm90+ only")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, lq, 12, 128, device="cuda", generator=g).to(dtype)
    k, v = (torch.randn(2, lk, 12, 128, device="cuda", generator=g).to(dtype) for _ in range(2))
    with override_config(kernel={"attention_backend": backend}):
        out, lse = attention_lse_sdpa(q, k, v)
    ref_out, ref_lse = attention_lse_native(q, k, v)
    assert out.shape == ref_out.shape and lse.shape == (2, 12, lq) and lse.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref_out.float(), atol=OUT_TOL[dtype], rtol=OUT_TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-4)


def test_ring_chunks_merged_on_gpu_match_full_attention():
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(1, 4096, 12, 128, device="cuda", generator=g, dtype=torch.bfloat16)
               for _ in range(3))
    out = lse = None
    for chunk in range(4):
        sl = slice(chunk * 1024, (chunk + 1) * 1024)
        part, part_lse = attention_lse(q, k[:, sl], v[:, sl])  # the provider attention would use
        out, lse = merge_partial(out, lse, part, part_lse)
    ref = attention_lse_native(q, k, v)[0].float()
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world", [2, 4])
def test_every_layout_on_nccl_matches_one_gpu(world, tmp_path):
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs")
    from tests.distributed import cases
    from tests.distributed.test_parallel import bounds, reference, run_world, same_on_every_rank

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    models = cases.build_models()
    results = run_world(world, models, tmp_path, setup={"backend": "nccl", "device": "cuda"},
                        timeout_s=500)
    assert results[0], "no case ran"
    for name in results[0]:
        out = same_on_every_rank(results, name)
        ref = reference(name, models, device="cuda").cpu()
        torch.testing.assert_close(out, ref, **bounds(name), msg=lambda m, n=name: f"{n}: {m}")

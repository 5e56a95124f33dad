"""The quantising Triton kernels compile for an H100 (sm_90) on any machine, without register
spills (but 8 bytes in the e4m3-output epilogue; ``_compile_check_quant.py``, through ``_compile_check.py``'s compile-only driver): the
8-bit attention (both V variants, and the e4m3-output epilogue), the q/k/v quantisers, the fp8
row quantisers, the fp8 norms and the grouped fp8 product, at the Wan shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from tests.kernels.test_triton_compile import _run  # noqa: E402

SCRIPT = Path(__file__).with_name("_compile_check_quant.py")


def test_quantising_kernels_compile_for_h100_without_spills():
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("Triton's bundled ptxas is missing")
    rows = _run(script=SCRIPT, timeout=600)  # every call compiled
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"_quant_int8_rows_kernel", "_quant_v_fp8_kernel", "_attn_int8_kernel",
                       "_quant_fp8_rows_kernel", "_quant_fp8_chunked_kernel",
                       "_norm_modulate_fp8_kernel",
                       "_fp8_group_gemm_kernel"}, kernels
    for r in rows:
        # the e4m3-output epilogue of the 128x128 attention tile keeps 8 bytes on the stack
        # (after the key loop: its amax and quantisation of the fp32 tile); nothing else spills
        stack_ok = r.get("stack") <= 8 if "fp8-out" in r["call"] else r.get("stack") == 0
        assert r.get("local") == 0 and stack_ok and r["regs"] <= 255, r

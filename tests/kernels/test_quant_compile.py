"""The quantising Triton kernels compile for an H100 (sm_90) on any machine, without register
spills (but 8 bytes in the e4m3-output epilogue; ``_compile_check_quant.py``, through ``_compile_check.py``'s compile-only driver): the
8-bit attention (both V variants, and the e4m3-output epilogue), the q/k/v quantisers, the fp8
row quantisers, the fp8 norms and the grouped fp8 product, at the Wan shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

SCRIPT = Path(__file__).with_name("_compile_check_quant.py")
ROOT = Path(__file__).resolve().parents[2]


def test_quantising_kernels_compile_for_h100_without_spills():
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("Triton's bundled ptxas is missing")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT),
                                                      env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    errors = [r for r in rows if "error" in r]
    assert not errors and proc.returncode == 0, errors or proc.stderr[-3000:]
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"_quant_int8_rows_kernel", "_quant_v_fp8_kernel", "_attn_int8_kernel",
                       "_quant_fp8_rows_kernel", "_norm_modulate_fp8_kernel",
                       "_fp8_group_gemm_kernel"}, kernels
    for r in rows:
        # the e4m3-output epilogue of the 128x128 attention tile keeps 8 bytes on the stack
        # (after the key loop: its amax and quantisation of the fp32 tile); nothing else spills
        stack_ok = r.get("stack") <= 8 if "fp8-out" in r["call"] else r.get("stack") == 0
        assert r.get("local") == 0 and stack_ok and r["regs"] <= 255, r

"""The Triton provider's kernels compile for an H100 (sm_90) and an MI300 (gfx942), on any
machine: ``_compile_check.py`` stands in a compile-only Triton driver and calls every provider
function at the Wan shapes. For sm_90 it also checks the machine code: no register spills and
16-byte vector global loads and stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

SCRIPT = Path(__file__).with_name("_compile_check.py")
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, script: Path = SCRIPT, timeout: int = 300) -> list[dict]:
    """The JSON rows a compile-check script prints (run without TRITON_INTERPRET); every call
    must have compiled. ``_compile_check_quant.py`` runs through this too."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT),
                                                      env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    errors = [r for r in rows if "error" in r]
    assert not errors and proc.returncode == 0, errors or proc.stderr[-3000:]
    return rows


def test_compiles_for_h100_without_spills():
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("Triton's bundled ptxas is missing")
    rows = _run("cuda")
    calls = {r["call"] for r in rows}
    assert len(calls) == 32, sorted(calls)  # 28 DiT calls + the VAE channel norm in two layouts at two widths
    for r in rows:
        assert r.get("local") == 0 and r.get("stack") == 0, r  # no spills
        assert r["ld_v4"] > 0 and r["st_v4"] > 0, r  # vectorised global memory access
        assert r["regs"] <= 255, r  # no spill below (the tuned tiles trade registers for rows)


def test_compiles_for_mi300():
    rows = _run("hip")
    assert len({r["call"] for r in rows}) == 32
    assert all(r["amdgcn"] for r in rows)

"""`fastdit ops` prints the op/provider table for this machine."""

import json
import os
import subprocess
import sys


def run_cli(*args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastdit", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_ops_table():
    out = run_cli("ops")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("platform: ")
    for op in ("rms_norm", "layer_norm_scale_shift", "scale_residual_norm_scale_shift",
               "norm_tanh_mul_add", "mul_add", "scale_shift", "rope_qk_", "rope_qk_cache_store",
               "attention"):
        assert any(line.split()[0] == op for line in lines[3:] if line.strip()), op


def test_ops_json_honours_provider_override():
    out = run_cli("ops", "--json", env={"FASTDIT_OP_PROVIDERS": "rms_norm=triton",
                                        "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr
    rows = {row["op"]: row for row in json.loads(out.stdout)["ops"]}
    assert rows["rms_norm"]["chosen"] == "triton"
    assert rows["rms_norm"]["priority"][0] == "triton"
    assert rows["mul_add"]["chosen"] == "native"


def test_ops_unknown_provider_is_one_line_error():
    out = run_cli("ops", env={"FASTDIT_OP_PROVIDERS": "rms_norm=warp"})
    assert out.returncode == 2
    assert "unknown provider" in out.stderr and "Traceback" not in out.stderr


def test_ops_with_a_forced_platform_whose_device_is_absent():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = run_cli("ops", env={"FASTDIT_PLATFORM": "rocm"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("platform: rocm  device: unavailable")
    assert "rms_norm" in out.stdout and "aiter" in out.stdout

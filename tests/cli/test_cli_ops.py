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
    assert rows["rms_norm"]["first_available"] == "triton"
    assert rows["rms_norm"]["priority"][0] == "triton"
    assert rows["mul_add"]["first_available"] == "native"


def test_ops_shape_probe_says_what_runs():
    """--shape asks the dispatcher what runs for a call of that size: the Triton rms_norm_rope_
    takes contiguous interleaved input (it runs), and the columns are labelled."""
    out = run_cli("ops", "--shape", "1,8,32", "--heads", "2", "--dtype", "fp32",
                  env={"FASTDIT_OP_PROVIDERS": "rms_norm=triton,attention=sage",
                       "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[2] == "precision: exact (quantize=none)"
    header = lines[3]
    assert "priority (tried in order)" in header and "first available" in header
    assert "runs at 1,8,32 fp32" in header
    row = next(line.split() for line in lines if line.startswith("rms_norm "))
    assert row[-1] == "triton"
    assert any(line.startswith("first available: what runs") for line in lines)
    assert any(line.startswith("*: lossy") for line in lines)
    assert "attention: provider 'sage' was requested but is not available" in out.stderr
    js = run_cli("ops", "--json", "--shape", "2,4,16", "--heads", "2")
    rows = {row["op"]: row for row in json.loads(js.stdout)["ops"]}
    assert rows["attention"]["runs"] == "sdpa" and rows["linear"]["runs"] == "native"


def test_ops_bad_shape_is_a_usage_error():
    out = run_cli("ops", "--shape", "1,8")
    assert out.returncode == 2 and "--shape: expected B,L,D" in out.stderr
    out = run_cli("ops", "--shape", "1,8,30", "--heads", "4")
    assert out.returncode == 2 and "must split into 4 heads" in out.stderr


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

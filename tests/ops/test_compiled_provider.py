"""The ``compiled`` provider in a long-lived process: many shapes, several call structures, and
a logged fall-back to the native op (never an exception) if torch.compile refuses a call."""

import logging

import pytest
import torch

import fastdit.ops as ops
from fastdit.config import CompileConfig, KernelConfig, override_config
from fastdit.kernels.compiled import ops as compiled_ops
from fastdit.ops import registry
from fastdit.ops.norm import layer_norm_scale_shift_native


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    compiled_ops._compiled.clear()
    registry.clear_caches()
    yield
    torch._dynamo.reset()
    compiled_ops._compiled.clear()
    registry.clear_caches()


def _compiled_config(**compile_settings):
    kernel = KernelConfig(op_providers={"layer_norm_scale_shift": ("compiled",)}, strict=True)
    return override_config(kernel=kernel, compile=CompileConfig(**compile_settings))


def test_thirty_sequence_lengths_compile_once(fresh_dynamo, caplog):
    """FASTDIT_OP_PROVIDERS=layer_norm_scale_shift=compiled (strict: it must run) over 30
    sequence lengths, with inductor and dynamic shapes: one compilation, every result equal
    to the native spec, no warning."""
    mod = torch.randn(2, 1, 32) * 0.1
    with _compiled_config(dynamic=True), caplog.at_level(logging.WARNING, logger="fastdit.ops"):
        for length in range(2, 32):
            x = torch.randn(2, length, 32)
            out = ops.layer_norm_scale_shift(x, shift=mod, scale=mod)
            assert ops.resolve("layer_norm_scale_shift", x, shift=mod, scale=mod).name == "compiled"
            ref = layer_norm_scale_shift_native(x, shift=mod, scale=mod)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert len(compiled_ops._compiled) == 1  # one call structure, one compiled function
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "fastdit.ops"]


def test_structures_have_their_own_compiled_functions(fresh_dynamo):
    """Calls that differ in more than sizes (a number instead of a tensor, a dtype, the norm)
    get their own compiled copy of the spec, so their recompilations never add up against one
    recompile limit; lengths within a structure reuse it (eager backend: tracing only)."""
    mod = torch.randn(1, 1, 16)
    calls = [dict(shift=mod, scale=mod), dict(shift=0.0, scale=mod), dict(shift=mod, scale=0.5),
             dict(shift=mod, scale=mod, norm="rms")]
    with torch._dynamo.config.patch(recompile_limit=2), _compiled_config(backend="eager"):
        for length in range(1, 12):
            for kwargs in calls:
                for dtype in (torch.float32, torch.bfloat16):
                    x = torch.randn(1, length, 16).to(dtype)
                    out = ops.layer_norm_scale_shift(x, **kwargs)
                    torch.testing.assert_close(out, layer_norm_scale_shift_native(x, **kwargs))
    assert len(compiled_ops._compiled) == len(calls) * 2


_RECOMPILE_CASE = """
import logging, torch
import fastdit.ops as ops
from fastdit.config import CompileConfig, KernelConfig, override_config
from fastdit.ops.norm import layer_norm_scale_shift_native

records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger("fastdit.ops").addHandler(handler)
kernel = KernelConfig(op_providers={"layer_norm_scale_shift": ("compiled",)}, strict=True)
mod = torch.randn(1, 1, 8)
with torch._dynamo.config.patch(recompile_limit=1), \\
        override_config(kernel=kernel, compile=CompileConfig(dynamic=False, backend="eager")):
    for length in (3, 5, 5, 7):
        x = torch.randn(1, length, 8)
        out = ops.layer_norm_scale_shift(x, shift=mod, scale=mod)
        torch.testing.assert_close(out, layer_norm_scale_shift_native(x, shift=mod, scale=mod))
for r in records:
    if r.levelno >= logging.WARNING:
        print("WARNING", r.getMessage().splitlines()[0])
print("DONE")
"""


def test_recompile_limit_falls_back_to_native_with_one_warning():
    """dynamic=False and a recompile limit of 1: the second shape cannot compile; that call
    and every later one of that shape run the native op, with one WARNING naming the op.

    In its own interpreter: once dynamo has raised its recompile-limit error it leaves its
    frame-evaluation hook installed (torch 2.11-2.13), so CPython stops inlining Python calls
    and every caller holds its arguments until the call returns, which would break the
    memory-lifetime tests that run after this one in the same process."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        os.path.join(os.path.dirname(__file__), "..", "..", "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _RECOMPILE_CASE], capture_output=True, text=True,
                          env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == "DONE"
    warnings = [line for line in lines if line.startswith("WARNING ")]
    assert len(warnings) == 2, lines  # lengths 5 and 7, once each
    assert all(w.startswith("WARNING op layer_norm_scale_shift: the compiled provider cannot "
                            "compile") and "runs the native op from now on" in w for w in warnings)


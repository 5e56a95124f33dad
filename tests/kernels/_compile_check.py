"""Compile the Triton provider's kernels for a GPU target on a machine without a GPU.

Run as a script (``python tests/kernels/_compile_check.py [cuda|hip]``) with TRITON_INTERPRET
unset. It installs a stand-in Triton driver that reports a target (H100 = sm_90, or MI300 =
gfx942), makes every kernel launch compile without launching, calls the provider functions
on CPU tensors of the Wan shapes, and prints one JSON line per compiled kernel with the
register use and spills (CUDA, from ``cuobjdump -res-usage``) and whether global accesses are
vectorised (``ld.global.v4`` / ``st.global.v4`` in the PTX). The interpreter checks the math;
this checks that the code the GPU would get compiles, and how it looks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402
from triton.runtime import driver as triton_driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGETS = {"cuda": GPUTarget("cuda", 90, 32), "hip": GPUTarget("hip", "gfx942", 64)}


class _CompileOnlyDriver(DriverBase):
    def __init__(self, target):
        self.target = target

    @classmethod
    def is_active(cls):
        return True

    def map_python_to_cpp_type(self, ty):
        return ty

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        raise NotImplementedError

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def set_current_device(self, device):
        pass


RESULTS: list[dict] = []


def _install(target_name: str) -> None:
    triton_driver.set_active(_CompileOnlyDriver(TARGETS[target_name]))
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        RESULTS.append(_describe(self.fn.__name__, kernel, target_name, kwargs))
        return kernel

    JITFunction.run = run


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _describe(name, kernel, target_name, kwargs) -> dict:
    info = {"kernel": name, "num_warps": kwargs.get("num_warps"),
            "constexprs": {k: v for k, v in kwargs.items() if k.isupper()}}
    asm = kernel.asm
    if target_name == "cuda":
        ptx = asm["ptx"]
        info["ld_v4"] = len(re.findall(r"ld\.global(?:\.\w+)*\.v4", ptx))
        info["st_v4"] = len(re.findall(r"st\.global(?:\.\w+)*\.v4", ptx))
        info["ld_scalar"] = sum(1 for line in ptx.splitlines()
                                if "ld.global" in line and ".v2" not in line and ".v4" not in line)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(asm["cubin"])
            f.flush()
            out = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True,
                                 text=True).stdout
        m = re.search(r"REG:(\d+).*?STACK:(\d+).*?LOCAL:(\d+)", out)
        if m:
            info.update(regs=int(m.group(1)), stack=int(m.group(2)), local=int(m.group(3)))
    else:
        info["amdgcn"] = "amdgcn" in asm
    return info


def wan_calls():
    """(label, callable) pairs: every provider function at the Wan shapes (bf16, fp32 mods)."""
    from fastdit.kernels.triton import elementwise, norm, rope

    calls = []
    tokens = 32760
    for dim in (1536, 5120):
        x = torch.empty(1, tokens, dim, dtype=torch.bfloat16)
        mod = torch.empty(1, 1, dim, dtype=torch.float32)
        tok = torch.empty(1, tokens, dim, dtype=torch.float32)
        w = torch.empty(dim, dtype=torch.float32)
        calls += [
            (f"rms_norm D={dim}", lambda x=x, w=w: norm.rms_norm(x, w, 1e-6)),
            (f"rms_norm+residual D={dim}",
             lambda x=x, w=w: norm.rms_norm(x, w, 1e-6, residual=x)),
            (f"layer_norm_scale_shift D={dim}",
             lambda x=x, m=mod: norm.layer_norm_scale_shift(x, shift=m, scale=m)),
            (f"layer_norm_scale_shift affine D={dim}",
             lambda x=x, m=mod, w=w: norm.layer_norm_scale_shift(x, shift=m, scale=m, weight=w,
                                                                        bias=w)),
            (f"layer_norm_scale_shift per-token D={dim}",
             lambda x=x, m=tok: norm.layer_norm_scale_shift(x, shift=m, scale=m)),
            (f"scale_residual_norm_scale_shift D={dim}",
             lambda x=x, m=mod: norm.scale_residual_norm_scale_shift(x, x, shift=m, scale=m, gate=m)),
            (f"norm_tanh_mul_add D={dim}",
             lambda x=x, m=mod: norm.norm_tanh_mul_add(x, shift=m, scale=m, norm="rms")),
            (f"mul_add D={dim}", lambda x=x, m=mod: elementwise.mul_add(x, x, gate=m)),
            (f"scale_shift D={dim}", lambda x=x, m=mod: elementwise.scale_shift(x, shift=m, scale=m)),
        ]
    for heads in (12, 40):
        q = torch.empty(tokens, heads, 128, dtype=torch.bfloat16)
        cos = torch.empty(tokens, 64, dtype=torch.float32)
        w = torch.empty(heads * 128, dtype=torch.bfloat16)
        calls.append((f"rms_norm_rope_ H={heads}",
                      lambda q=q, w=w, c=cos: norm.rms_norm_rope_(q, w, c, c)))
        for interleaved in (True, False):
            calls.append((f"rope_qk_ H={heads} interleaved={interleaved}",
                          lambda q=q, c=cos, i=interleaved: rope.rope_qk_(
                              q, q, c, c, interleaved=i)))
        cache = torch.empty(tokens // 16, 16, heads, 128, dtype=torch.bfloat16)
        fp8 = torch.empty(tokens // 16, 16, heads, 128, dtype=torch.float8_e4m3fn)
        idx = torch.empty(tokens, dtype=torch.int64)
        cs = torch.empty(tokens, 128, dtype=torch.float32)
        calls.append((f"rope_qk_cache_store H={heads}",
                      lambda q=q, c=cache, i=idx, cs=cs: rope.rope_qk_cache_store(
                          q, q, q, c, c, i, i, cs)))
        calls.append((f"rope_qk_cache_store fp8 H={heads}",
                      lambda q=q, c=fp8, i=idx, cs=cs: rope.rope_qk_cache_store(
                          q, q, q, c, c, i, i, cs, k_scale=torch.ones(1), v_scale=0.5,
                          swa_slot_mapping=i)))
    from fastdit.kernels.triton import channel_norm

    for channels in (96, 384):  # the Wan2.1 VAE decoder's widths, one 4-frame chunk at 480p
        video = torch.empty(1, channels, 4, 480, 832, dtype=torch.bfloat16)
        gamma = torch.empty(channels, 1, 1, 1, dtype=torch.bfloat16)
        last = video.contiguous(memory_format=torch.channels_last_3d)
        calls.append((f"channel_rms_norm C={channels}",
                      lambda v=video, g=gamma, c=channels: channel_norm.channel_rms_norm(
                          v, g, scale=c ** 0.5, silu=True)))
        calls.append((f"channel_rms_norm channels-last C={channels}",
                      lambda v=last, g=gamma, c=channels: channel_norm.channel_rms_norm(
                          v, g, scale=c ** 0.5, silu=True)))
    return calls


def report(calls, error_chars: int = 2000) -> int:
    """Make every ``(label, call)``; print one JSON line per compiled kernel (or per failure,
    its error cut to ``error_chars``). Returns the exit status: 1 if any call failed."""
    failures = 0
    for label, call in calls:
        before = len(RESULTS)
        try:
            call()
        except Exception as exc:  # report every failure, not just the first
            failures += 1
            print(json.dumps({"call": label,
                              "error": f"{type(exc).__name__}: {exc}"[:error_chars]}))
            continue
        for info in RESULTS[before:]:
            print(json.dumps({"call": label, **info}))
    return 1 if failures else 0


def main(target_name: str = "cuda") -> int:
    _install(target_name)
    return report(wan_calls())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cuda"))

"""Why cuDNN attention runs slower inside fastdit's forward than inside diffusers' eager one.

The run6 profiles show the same cuDNN kernel taking 355 ms per 1.3B forward in fastdit and
329 ms in diffusers eager. This times that SDPA call (B=1, L=32760, 12 heads of 128, bf16)
    * back to back (as a microbenchmark runs it),
    * with memory-bound work between calls (as diffusers' eager forward has: ~3 ms of
      elementwise kernels per attention call),
    * on q/k/v laid out [B, H, L, D] contiguous instead of [B, L, H, D] transposed views,
and samples the SM clock and power of each loop (read only). Prints and writes JSON.

    python benchmarks/diag_attention.py --out out/diag_attention.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling gpu_telemetry.py
from gpu_telemetry import GpuTelemetry  # noqa: E402


def loop(q, k, v, calls: int, filler: torch.Tensor | None, filler_passes: int) -> float:
    """Milliseconds per SDPA call over ``calls`` calls (CUDA events around each call)."""
    attn_ms = []
    for _ in range(calls):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        F.scaled_dot_product_attention(q, k, v)
        e.record()
        attn_ms.append((s, e))
        for _ in range(filler_passes if filler is not None else 0):
            filler.mul_(1.0001)  # memory-bound: read + write 400 MB
    torch.cuda.synchronize()
    return sum(s.elapsed_time(e) for s, e in attn_ms) / calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    b, length, heads, dim = 1, 32760, 12, 128
    blhd = [torch.randn(b, length, heads, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    views = [t.transpose(1, 2) for t in blhd]  # (B, H, L, D) views, as the models pass them
    contiguous = [t.contiguous() for t in views]
    filler = torch.randn(100_000_000, device="cuda")  # fp32, 400 MB
    flop = 4 * b * heads * length * length * dim
    telemetry = GpuTelemetry()
    results = {}
    cases = [("back_to_back_blhd_views", views, 0), ("back_to_back_bhld_contiguous", contiguous, 0),
             ("with_3ms_memory_work_between", views, 12), ("back_to_back_again", views, 0)]
    loop(*views, 5, None, 0)  # warm-up
    for name, (q, k, v), passes in cases:
        t0 = time.time()
        ms = loop(q, k, v, args.calls, filler, passes)
        results[name] = {"ms_per_call": ms, "tflops": flop / ms / 1e9,
                         "gpu": telemetry.window(t0, time.time())}
        print(f"{name:32s} {ms:7.3f} ms  {flop / ms / 1e9:6.1f} TFLOP/s  {results[name]['gpu']}",
              flush=True)
    telemetry.close()
    with open(args.out, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "cudnn": torch.backends.cudnn.version(), "cases": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Launch the 8-bit attention kernel once per named launch candidate inside a CUDA profiler
range, for Nsight Compute (``ncu --profile-from-start off``): each candidate is compiled and
warmed up outside the range, so the profile holds exactly one launch per candidate.

    ncu --clock-control none --profile-from-start off --section ... \\
        python3 benchmarks/profile_attention.py --heads 12 --configs m64n128w4s3-fusedpv-tma

``gpu_run.sh ncu-attention`` runs it with the pipe-utilisation and warp-stall sections.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--length", type=int, default=32760)
    parser.add_argument("--configs", default="", help="candidate names (comma-separated; "
                        "default: the launch default)")
    args = parser.parse_args()
    from fastdit.kernels.triton import attention_int8 as A
    from fastdit.quant.inputs import attention_inputs

    by_name = {c.name: c for c in A.CONFIGS[128]}
    names = [n for n in args.configs.split(",") if n] or [A.CONFIGS[128][0].name]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; known: {sorted(by_name)}")
    q, k, v = attention_inputs("gaussian", (1, args.length, args.heads, 128), torch.bfloat16,
                               device="cuda")
    qkv = A.quantize_qkv(q, k, v)
    for name in names:  # compile and warm up outside the profiled range
        A.attention_quantized(qkv, q.dtype, 128 ** -0.5, by_name[name])
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for name in names:
        print(f"profiling {name}", flush=True)
        A.attention_quantized(qkv, q.dtype, 128 ** -0.5, by_name[name])
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()

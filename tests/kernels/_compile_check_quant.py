"""Compile the quantising Triton kernels (8-bit attention, fp8 quantisers, fp8 norms, the
grouped fp8 product) for sm_90 on a machine without a GPU, through the stand-in driver of
``_compile_check.py``; one JSON line per compiled kernel (registers, spills, vector accesses).

    python tests/kernels/_compile_check_quant.py [--full]     (TRITON_INTERPRET unset)
"""

from __future__ import annotations

import sys

import torch

from tests.kernels import _compile_check as CC


def quant_calls(full: bool = False):
    """Every kernel at the Wan shapes; with ``full`` every launch candidate (slow: minutes)."""
    from fastdit.kernels.triton import attention_int8 as A
    from fastdit.kernels.triton import gemm_fp8, norm_fp8, quant_fp8

    A.pv_imprecise_acc = lambda block_n: 0  # the sm_90 choices (the stand-in target is sm_90):
    A._launched = lambda config: config  # tensor descriptors kept (the CPU platform has no TMA)
    calls = []
    tokens = 32760
    for heads, dim in ((40, 128), (12, 64)) if not full else ((40, 128), (12, 128), (12, 64)):
        q = torch.empty(1, tokens, heads, dim, dtype=torch.bfloat16)
        calls.append((f"quantize_qkv H={heads} D={dim}", lambda q=q: _quantize(A, q)))
        # every D=128 candidate (the GPU benchmark times them all) with V in one term, the
        # default also with two; D=64 the default only (unless --full)
        configs = A.CONFIGS[dim] if full or dim == 128 else A.CONFIGS[dim][:1]
        for i, config in enumerate(configs):
            for split in (False, True) if i == 0 or full else (False,):
                calls.append((f"attention H={heads} D={dim} {config.name} v_split={split}",
                              lambda q=q, c=config, s=split: A.attention_quantized(
                                  _qkv(A, q, s), torch.bfloat16, dim**-0.5, c)))
        calls.append((f"attention fp8-out H={heads} D={dim}", lambda q=q: A.attention_quantized(
            _qkv(A, q, True), torch.bfloat16, dim**-0.5, out_fp8=True)))
    for dim in (1536, 5120, 8960, 13824):
        x = torch.empty(tokens, dim, dtype=torch.bfloat16)
        calls.append((f"quantize_fp8 D={dim}", lambda x=x: quant_fp8.quantize_fp8(x)))
        calls.append((f"gelu_tanh_fp8 D={dim}", lambda x=x: quant_fp8.gelu_tanh_fp8(x)))
    x = torch.empty(tokens, 8960, dtype=torch.bfloat16)  # the FFN hidden state, chunked rows
    for chunk, warps, rows in ((2048, 8, 2), (1024, 4, 4)):
        calls.append((f"gelu_tanh_fp8 chunked {chunk}x{rows} D=8960",
                      lambda x=x, c=(chunk, warps, rows): _chunked(quant_fp8, x, c)))
    for dim in (1536, 5120):
        x = torch.empty(1, tokens, dim, dtype=torch.bfloat16)
        mod = torch.empty(1, 1, dim, dtype=torch.float32)
        calls.append((f"layer_norm_scale_shift_fp8 D={dim}",
                      lambda x=x, m=mod: norm_fp8.layer_norm_scale_shift_fp8(x, shift=m, scale=m)))
        calls.append((f"scale_residual_norm_scale_shift_fp8 D={dim}",
                      lambda x=x, m=mod: norm_fp8.scale_residual_norm_scale_shift_fp8(
                          x.float(), x, shift=m, scale=m, gate=m, weight=m[0, 0], bias=m[0, 0])))
        a = torch.empty(tokens, dim, dtype=torch.float8_e4m3fn)
        sa = torch.empty(tokens, dim // 128, dtype=torch.float32)
        w = torch.empty(dim, dim, dtype=torch.float8_e4m3fn)
        sw = torch.empty(dim, dtype=torch.float32)
        for config in gemm_fp8.CONFIGS if full else gemm_fp8.CONFIGS[:1]:
            calls.append((f"grouped fp8 product {dim}x{dim} {config}",
                          lambda a=a, sa=sa, w=w, sw=sw, c=config: gemm_fp8.linear_fp8_grouped(
                              a, sa, w, sw, None, torch.bfloat16, c)))
    return calls


def _chunked(quant_fp8, x, launch):
    """The GELU quantiser with a chunked launch (``BLOCK_D < D``) in place of the rule."""
    saved = quant_fp8.quant_launch
    quant_fp8.quant_launch = lambda dim, n_rows, gelu: launch
    try:
        return quant_fp8.gelu_tanh_fp8(x)
    finally:
        quant_fp8.quant_launch = saved


def _quantize(A, q):
    """The three quantisers without the torch statistics (empty stand-ins)."""
    batch, length, heads, dim = q.shape
    stats = torch.empty(batch, heads, dim)
    A._quantize_rows(q, None, stats)
    A._quantize_rows(q, stats, stats)
    l_pad = A._padded(length)
    out = torch.empty(batch, heads, dim, l_pad, dtype=torch.float8_e4m3fn)
    A._quant_v_fp8_kernel[(l_pad // A.BLOCK_T, batch * heads)](
        q, *q.stride(), stats, stats, out, out, length, l_pad, heads, D=dim, BLOCK=A.BLOCK_T,
        SPLIT=True, INTERPRET=False, num_warps=4, enable_fp_fusion=False)


def _qkv(A, q, split):
    batch, length, heads, dim = q.shape
    l_pad = A._padded(length)
    i8 = torch.empty(batch, heads, l_pad, dim, dtype=torch.int8)
    s = torch.empty(batch, heads, l_pad)
    v = torch.empty(batch, heads, dim, l_pad, dtype=torch.float8_e4m3fn)
    return A.QuantizedQKV(i8, s, i8, s, v, torch.empty(batch, heads, dim), v if split else None,
                          length, length, torch.empty(batch, heads, dim))


def main() -> int:
    CC._install("cuda")
    return CC.report(quant_calls(full="--full" in sys.argv), error_chars=3000)


if __name__ == "__main__":
    sys.exit(main())

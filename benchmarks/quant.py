"""The low-precision paths against bf16 at Wan shapes: 8-bit attention and fp8 products; JSON.

    python benchmarks/quant.py --out out/gpu/quant.json              # H200: the issue's shapes
    python benchmarks/quant.py --tiny --out /tmp/quant-tiny.json     # CPU, seconds (interpreter)

Attention at ``[1, 32760, H, 128]`` for H in 12 and 40 (Wan2.1 1.3B and 14B): cuDNN bf16
SDPA, fastdit's Triton 8-bit kernel (every launch candidate of ``CONFIGS[128]`` with V in one
e4m3 term, the default also with two; quantisation of q/k/v included; the default's two parts
timed apart), the plain-torch spec (tiny mode only), and when importable sageattention,
cuDNN's FP8 SDPA through the ``cudnn`` frontend (per-tensor scales, quantisation included) and
FlashAttention-4. Throughput is TFLOP/s-equivalent (``4 B H L^2 D`` / time); accuracy is cosine
and relative L1 against fp32 exact attention (computed in query chunks) on the gaussian and
outlier inputs of ``fastdit.quant.inputs``. ``attention_choice`` in the JSON names, per head
count, the fastest candidate and the fastest one meeting the accuracy target (cosine >= 0.999,
L1 <= 0.03 on both kinds) with their speed-ups over cuDNN.

Linear at the six Wan products (T = 32760; K x N = 1536x1536, 1536x8960, 8960x1536,
5120x5120, 5120x13824, 13824x5120): bf16 ``F.linear`` against fp8 (``torch._scaled_mm``,
row-wise scales, fast accumulation as ``kernels/scaled_mm`` sets it, the other for reference)
with the activation quantisation excluded (pre-quantised input) and included (the Triton
quantiser: the ``triton`` provider); the fused producers (``layer_norm_scale_shift_fp8``,
``scale_residual_norm_scale_shift_fp8``, ``gelu_tanh_fp8``, ``quantize_fp8``) on the Triton
and compiled providers against their bf16 ops; a whole FFN sub-block (norm, up, GELU, down) in
bf16 and in fp8; accuracy against the fp32 product of the bf16 operands. Run 1 ruled out (and
this run no longer times) the torch quantiser before ``_scaled_mm``, the Triton product with a
scale per 128 channels, the 128x64 and 64x64 attention tiles, the integer-add conversion and
the e4m3 attention output. Every case is guarded: a failure is recorded in the JSON and the
script goes on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
import traceback
from typing import Callable

import torch
import torch.nn.functional as F

from fastdit.quant.inputs import KINDS, attention_inputs, cosine, relative_l1

WAN_LINEARS = ((1536, 1536), (1536, 8960), (8960, 1536), (5120, 5120), (5120, 13824), (13824, 5120))
TINY_LINEARS = ((128, 128), (128, 320), (320, 128))


# ---------------------------------------------------------------------------------------
# timing and bookkeeping
# ---------------------------------------------------------------------------------------
def timer(device: str) -> Callable[[Callable[[], object]], float]:
    """Milliseconds per call: ``triton.testing.do_bench`` (median) on a GPU, else the median
    of a few wall-clock runs."""
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    def cpu(fn):
        fn()
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - start) * 1e3)
        return statistics.median(runs)
    return cpu


class Recorder:
    """Rows and errors, written to the JSON file after every case."""

    def __init__(self, path: str, env: dict):
        self.path, self.result = path, {"env": env, "attention": [], "linear": [], "errors": []}

    def add(self, section: str, row: dict) -> None:
        self.result[section].append(row)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        print(section, json.dumps(shown), flush=True)
        self.save()

    def guard(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # one failing case must not stop the others
            self.result["errors"].append({"case": what, "error": f"{type(exc).__name__}: {exc}",
                                          "trace": traceback.format_exc(limit=4)})
            print(f"ERROR {what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  flush=True)
            self.save()
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def save(self) -> None:
        with open(self.path, "w") as f:
            json.dump(self.result, f, indent=1)


def environment(device: str) -> dict:
    env = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


# ---------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------
def exact_attention(q, k, v, chunk: int = 1024) -> torch.Tensor:
    """fp32 attention ``[B, L, H, D]``, queries in chunks (scores ``[B, H, chunk, Lk]``)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    kf, vf = k.float().transpose(1, 2), v.float().transpose(1, 2)  # (B, H, Lk, D)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for start in range(0, q.shape[1], chunk):
        qc = q[:, start:start + chunk].float().transpose(1, 2)  # (B, H, c, D)
        p = torch.softmax(torch.matmul(qc, kf.transpose(-1, -2)) * scale, dim=-1)
        out[:, start:start + chunk] = torch.matmul(p, vf).transpose(1, 2)
    return out


def sdpa_cudnn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


def sdpa_any(q, k, v):
    return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


def sage_candidates() -> dict[str, Callable]:
    try:
        import sageattention
    except ImportError:
        return {}
    found = {"sageattention sageattn": lambda q, k, v: sageattention.sageattn(
        q, k, v, tensor_layout="NHD", is_causal=False)}
    sm90 = getattr(sageattention, "sageattn_qk_int8_pv_fp8_cuda_sm90", None)
    if sm90 is not None:  # SageAttention 2 built with its CUDA kernels (gpu_run.sh sage-build)
        for gran in ("per_thread", "per_warp"):  # P V accumulated in fp32+fp32 (2.2.0's only
            # choice on sm90: "fp32" raises NotImplementedError there, h200-run20)
            found[f"sageattention qk_int8_pv_fp8 sm90 {gran}"] = (
                lambda q, k, v, g=gran: sm90(q, k, v, tensor_layout="NHD", qk_quant_gran=g))
    return found


def flash4_candidates() -> dict[str, Callable]:
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError:
        return {}

    def run(q, k, v):
        out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    return {"flash-attn-4 bf16": run}


def cudnn_fp8_candidate():
    """cuDNN FP8 SDPA (per-tensor scales; on Hopper the output is e4m3 too), quantisation of
    q/k/v and dequantisation of the output included. Returns a callable or None.

    Scales as the frontend defines them: ``descale_q/k/v`` dequantise the inputs (amax / 448),
    ``scale_s = 448`` / ``descale_s = 1/448`` take P in [0, 1] to e4m3 and back, ``scale_o``
    quantises O (``|O| <= max |V|``: 1 / descale_v). The output tensor must have the strides
    the graph was given."""
    try:
        import cudnn
    except ImportError:
        return None
    cache: dict = {}

    def per_tensor(t):
        amax = t.abs().amax().float().clamp_min(1e-12)
        return (t.float() * (448.0 / amax)).to(torch.float8_e4m3fn), (amax / 448.0).reshape(1, 1, 1, 1)

    def build(q8, k8, v8, scale):
        graph = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3,
                              intermediate_data_type=cudnn.data_type.FLOAT,
                              compute_data_type=cudnn.data_type.FLOAT)
        tq, tk, tv = (graph.tensor_like(t).set_data_type(cudnn.data_type.FP8_E4M3) for t in (q8, k8, v8))
        one = torch.ones(1, 1, 1, 1, device=q8.device)
        scalars = {n: graph.tensor_like(one) for n in
                   ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")}
        kwargs = dict(q=tq, k=tk, v=tv, attn_scale=scale, use_causal_mask=False, **scalars)
        try:
            o, _, amax_s, amax_o = graph.sdpa_fp8(generate_stats=False, **kwargs)
        except TypeError:
            o, _, amax_s, amax_o = graph.sdpa_fp8(is_inference=True, **kwargs)
        o.set_output(True).set_dim(list(q8.shape)).set_stride(list(q8.stride())).set_data_type(
            cudnn.data_type.FP8_E4M3)
        for t in (amax_s, amax_o):
            t.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(
                cudnn.data_type.FLOAT)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=q8.device)
        return graph, (tq, tk, tv), scalars, o, amax_s, amax_o, workspace

    def run(q, k, v):
        (q8, dq), (k8, dk), (v8, dv) = (per_tensor(t) for t in (q, k, v))
        q8, k8, v8 = (t.transpose(1, 2) for t in (q8, k8, v8))  # (B, H, L, D) views of BLHD
        key = (tuple(q8.shape), tuple(q8.stride()))
        if key not in cache:
            cache[key] = build(q8, k8, v8, 1.0 / math.sqrt(q.shape[-1]))
        graph, (tq, tk, tv), scalars, o, amax_s, amax_o, workspace = cache[key]
        # the graph was told O has q8's strides (a (B, H, L, D) view of (B, L, H, D) memory):
        # allocate it so (run 1 used a contiguous (B, H, L, D) buffer, read back as garbage)
        out = torch.empty_strided(q8.shape, q8.stride(), dtype=torch.float8_e4m3fn,
                                  device=q.device)
        scale_o = 1.0 / dv  # |O| <= max |V| = 448 dv: O / dv fits e4m3
        one = torch.ones(1, 1, 1, 1, device=q.device)
        pack = {tq: q8, tk: k8, tv: v8, o: out, amax_s: torch.empty_like(one),
                amax_o: torch.empty_like(one), scalars["descale_q"]: dq,
                scalars["descale_k"]: dk, scalars["descale_v"]: dv,
                scalars["descale_s"]: one / 448.0, scalars["scale_s"]: one * 448.0,
                scalars["scale_o"]: scale_o}
        graph.execute(pack, workspace)
        return (out.float() / scale_o).transpose(1, 2).to(q.dtype)  # (B, L, H, D)
    return run


def _dequantized(pair):
    """``(e4m3 values, scales)`` -> fp32: for accuracy figures of fp8 outputs."""
    values, scales = pair
    return values.float() * scales[..., None]


def attention_section(rec: Recorder, device: str, heads_list, length: int, tiny: bool,
                      config_names=(), split_names=()) -> None:
    """Every attention candidate at ``heads_list``; ``config_names`` limits the int8 kernel's
    launch candidates (all when empty), ``split_names`` names those also timed with V in two
    terms (the default candidate when empty)."""
    from fastdit.ops.registry import call_provider, is_supported, providers

    bench = timer(device)
    dim = 128
    triton_ok = is_supported(providers("attention")["int8_triton"])
    kernel = None
    if triton_ok:
        from fastdit.kernels.triton import attention_int8 as kernel
    for heads in heads_list:
        shape = (1, length, heads, dim)
        flops = 4 * heads * length * length * dim
        inputs = {kind: attention_inputs(kind, shape, torch.bfloat16, seed=0, device=device)
                  for kind in KINDS}
        exact = {kind: exact_attention(*inputs[kind]) for kind in KINDS}
        candidates: dict[str, Callable] = {}  # name -> fn(q, k, v)
        candidates["sdpa bf16" if device == "cpu" else "cudnn bf16 (SDPA)"] = (
            sdpa_any if device == "cpu" else sdpa_cudnn)
        if tiny:
            candidates["int8_native (spec)"] = (
                lambda q, k, v: call_provider("attention", "int8_native", q, k, v))
        if kernel is not None:  # every launch candidate (the first only in tiny mode), V in
            # one term; the default also with two (the accuracy the issue asks for)
            configs = kernel.CONFIGS[dim][:1] if tiny else kernel.CONFIGS[dim]
            if config_names:
                configs = [c for c in configs if c.name in config_names]
            for i, config in enumerate(configs):
                splits = config.name in split_names if split_names else i == 0
                for split in (False, True) if splits else (False,):
                    candidates[f"int8_triton {config.name} v_split={split}"] = (
                        lambda q, k, v, c=config, s=split: kernel.attention_int8(
                            q, k, v, config=c, v_split=s))
        candidates.update(sage_candidates())
        candidates.update(flash4_candidates())
        cudnn_fp8 = cudnn_fp8_candidate() if device == "cuda" else None
        if cudnn_fp8 is not None:
            candidates["cudnn fp8 (per-tensor, quant included)"] = cudnn_fp8
        for name, fn in candidates.items():
            def one(name=name, fn=fn):
                row = {"heads": heads, "length": length, "dim": dim, "candidate": name}
                for kind in KINDS:
                    out = fn(*inputs[kind])
                    if isinstance(out, tuple):  # (e4m3 values, scales): accuracy of their product
                        out = _dequantized(out)
                    row[f"cosine_{kind}"] = cosine(out, exact[kind])
                    row[f"rel_l1_{kind}"] = relative_l1(out, exact[kind])
                    del out
                q, k, v = inputs["gaussian"]
                row["ms"] = bench(lambda: fn(q, k, v))
                row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12
                rec.add("attention", row)
            rec.guard(f"attention H={heads} {name}", one)
        if kernel is not None:  # the two parts of the default candidate, timed apart
            def parts():
                q, k, v = inputs["gaussian"]
                qkv = kernel.quantize_qkv(q, k, v)
                quant_ms = bench(lambda: kernel.quantize_qkv(q, k, v))
                attend_ms = bench(lambda: kernel.attention_quantized(qkv, q.dtype, dim**-0.5))
                rec.add("attention", {"heads": heads, "length": length, "dim": dim,
                                      "candidate": f"int8_triton {kernel.CONFIGS[dim][0].name} parts",
                                      "quantize_ms": quant_ms, "attend_ms": attend_ms,
                                      "attend_tflops": flops / (attend_ms * 1e-3) / 1e12})
            rec.guard(f"attention H={heads} parts", parts)
        inputs = exact = None  # free the inputs before the next head count
    rec.result["attention_choice"] = choose_attention(rec.result["attention"])
    print("attention choice:", json.dumps(rec.result["attention_choice"]), flush=True)
    rec.save()


#: the accuracy a candidate must reach on both input kinds to be chosen (the issue's target)
TARGET_COSINE, TARGET_L1 = 0.999, 0.03


def choose_attention(rows: list[dict]) -> dict:
    """Per head count: the reference (cuDNN bf16, or SDPA on the CPU) and, among fastdit's
    ``int8_triton`` candidates, the fastest overall and the fastest that meets the accuracy
    target, with their speed-ups. ``CONFIGS[128][0]`` in ``kernels/triton/attention_int8.py``
    should be the fastest config (with ``v_split`` as ``ops.attention_int8.V_SPLIT``)."""
    out = {}
    for heads in sorted({r["heads"] for r in rows if "ms" in r}):
        mine = [r for r in rows if r["heads"] == heads and "ms" in r]
        ref = next((r for r in mine if r["candidate"] in ("cudnn bf16 (SDPA)", "sdpa bf16")), None)
        ours = [r for r in mine if r["candidate"].startswith("int8_triton")]
        if ref is None or not ours:
            continue
        accurate = [r for r in ours if all(r.get(f"cosine_{k}", 0) >= TARGET_COSINE and
                                           r.get(f"rel_l1_{k}", 1) <= TARGET_L1 for k in KINDS)]

        def summary(row):
            return None if row is None else {"candidate": row["candidate"], "ms": row["ms"],
                                             "speedup_vs_reference": ref["ms"] / row["ms"]}
        out[str(heads)] = {"reference": ref["candidate"], "reference_ms": ref["ms"],
                           "fastest": summary(min(ours, key=lambda r: r["ms"])),
                           "fastest_meeting_target": summary(
                               min(accurate, key=lambda r: r["ms"]) if accurate else None)}
    return out


# ---------------------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------------------
def _ffn_rows(rec: Recorder, bench, device: str, tokens: int, dim: int, hidden: int) -> None:
    """A Wan FFN sub-block (modulated norm -> up -> GELU -> down) in bf16 (fastdit's exact ops)
    and in fp8 (every activation quantised by the kernel that produces it)."""
    from fastdit import ops
    from fastdit.quant.formulas import quantize_fp8_weight
    from fastdit.quant.linear import Fp8Activation, linear_forward, linear_gelu_tanh_fp8

    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, tokens, dim, device=device, generator=gen).bfloat16()
    shift, scale = (torch.randn(1, 1, dim, device=device, generator=gen) * 0.1 for _ in range(2))
    w1 = (torch.randn(hidden, dim, device=device, generator=gen) / math.sqrt(dim)).bfloat16()
    w2 = (torch.randn(dim, hidden, device=device, generator=gen) / math.sqrt(hidden)).bfloat16()
    b1, b2 = (torch.randn(n, device=device, generator=gen).bfloat16() * 0.1 for n in (hidden, dim))
    (w1q, s1), (w2q, s2) = quantize_fp8_weight(w1), quantize_fp8_weight(w2)

    def bf16():
        h = ops.layer_norm_scale_shift(x, shift=shift, scale=scale)
        return F.linear(ops.linear_gelu_tanh(h, w1, b1), w2, b2)

    def fp8():
        act = Fp8Activation(*ops.layer_norm_scale_shift_fp8(x, shift=shift, scale=scale),
                            torch.bfloat16)
        g = linear_gelu_tanh_fp8(act, w1q, b1, s1)
        return linear_forward(g, w2q, b2, s2, "fp8")

    h32 = ops.layer_norm_scale_shift(x.float(), shift=shift, scale=scale)
    ref = F.linear(F.gelu(F.linear(h32, w1.float(), b1.float()), approximate="tanh"), w2.float(),
                   b2.float())
    flops = 2 * tokens * dim * hidden * 2
    for label, fn in (("ffn bf16 (norm, linear_gelu_tanh, linear)", bf16),
                      ("ffn fp8 (norm_fp8, fp8 up, gelu_tanh_fp8, fp8 down)", fp8)):
        out = fn()
        ms = bench(fn)
        rec.add("linear", {"tokens": tokens, "K": dim, "N": hidden, "candidate": label, "ms": ms,
                           "tflops": flops / (ms * 1e-3) / 1e12, "cosine": cosine(out, ref),
                           "rel_l1": relative_l1(out, ref)})


def linear_section(rec: Recorder, device: str, tokens: int, shapes, ffns) -> None:
    from fastdit import ops
    from fastdit.kernels.scaled_mm import ops as smm
    from fastdit.ops.registry import call_provider, is_supported, providers
    from fastdit.quant.formulas import quantize_fp8_rows, quantize_fp8_weight

    bench = timer(device)
    available = {n for n, p in providers("linear_fp8").items() if is_supported(p)}
    for k_dim, n_dim in shapes:
        flops = 2 * tokens * k_dim * n_dim

        def one(k_dim=k_dim, n_dim=n_dim, flops=flops):
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(tokens, k_dim, device=device, generator=gen).bfloat16()
            w = (torch.randn(n_dim, k_dim, device=device, generator=gen) / math.sqrt(k_dim)).bfloat16()
            b = torch.randn(n_dim, device=device, generator=gen).bfloat16()
            ref = torch.addmm(b.float(), x.float(), w.float().t())  # fp32 product
            w8, ws = quantize_fp8_weight(w)
            x8, xs = quantize_fp8_rows(x)
            case = {"tokens": tokens, "K": k_dim, "N": n_dim}
            rows = {"bf16 F.linear": (lambda: F.linear(x, w, b), "bf16")}
            if "native" in available and device == "cpu":
                rows["fp8 native (spec)"] = (lambda: ops.linear_fp8(x, w8, ws, b), "fp8")
            if "scaled_mm" in available:
                rows["fp8 scaled_mm, x pre-quantised (quant excluded)"] = (
                    lambda: smm.linear_fp8_scaled_mm_quantized(x8, xs, w8, ws, b, torch.bfloat16), "fp8")
            if "triton" in available:
                rows["fp8 triton quant + scaled_mm (quant included)"] = (
                    lambda: call_provider("linear_fp8", "triton", x, w8, ws, b), "fp8")
                rows["triton quantize_fp8 alone"] = (
                    lambda: call_provider("quantize_fp8", "triton", x), None)
            for label, (fn, kind) in rows.items():
                row = dict(case, candidate=label, fast_accum=smm.FAST_ACCUM)
                if kind is not None:
                    out = fn()
                    row["cosine"], row["rel_l1"] = cosine(out, ref), relative_l1(out, ref)
                row["ms"] = bench(fn)
                if kind is not None:
                    row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12
                rec.add("linear", row)
            if "scaled_mm" in available and device == "cuda":  # the other accumulation, for reference
                saved = smm.FAST_ACCUM
                smm.FAST_ACCUM = not saved
                try:
                    fn = lambda: smm.linear_fp8_scaled_mm_quantized(x8, xs, w8, ws, b, torch.bfloat16)  # noqa: E731
                    out = fn()
                    ms = bench(fn)
                    rec.add("linear", dict(case, candidate="fp8 scaled_mm, other accumulation "
                                           "(quant excluded)", fast_accum=not saved,
                                           ms=ms, tflops=flops / (ms * 1e-3) / 1e12,
                                           cosine=cosine(out, ref), rel_l1=relative_l1(out, ref)))
                finally:
                    smm.FAST_ACCUM = saved
        rec.guard(f"linear {k_dim}x{n_dim}", one)
    for dim, hidden in ffns:
        rec.guard(f"ffn {dim}->{hidden}", lambda d=dim, h=hidden: _ffn_rows(rec, bench, device,
                                                                              tokens, d, h))
    for dim in sorted({k for k, _ in shapes}):  # producers: norm -> e4m3 + scales, GELU -> e4m3
        def producers(dim=dim):
            x = torch.randn(1, tokens, dim, device=device).bfloat16()
            res = torch.randn(1, tokens, dim, device=device).bfloat16()
            shift, scale = (torch.randn(1, 1, dim, device=device) * 0.1 for _ in range(2))
            pairs = {"layer_norm_scale_shift bf16": lambda: ops.layer_norm_scale_shift(x, shift=shift, scale=scale),
                     "layer_norm_scale_shift_fp8": lambda: ops.layer_norm_scale_shift_fp8(x, shift=shift, scale=scale),
                     "gelu_tanh bf16 (torch)": lambda: F.gelu(x, approximate="tanh"),
                     "gelu_tanh_fp8": lambda: ops.gelu_tanh_fp8(x)}
            # each fp8 producer on each provider (the Triton kernel, the compiled spec) and the
            # single-consumer alternative: the bf16 norm, then a quantisation pass
            for name in ("triton", "compiled") if device == "cuda" else ("triton",):
                if not is_supported(providers("layer_norm_scale_shift_fp8")[name]):
                    continue
                pairs[f"layer_norm_scale_shift_fp8 [{name}]"] = lambda n=name: call_provider(
                    "layer_norm_scale_shift_fp8", n, x, shift=shift, scale=scale)
                pairs[f"scale_residual_norm_scale_shift_fp8 [{name}]"] = lambda n=name: call_provider(
                    "scale_residual_norm_scale_shift_fp8", n, res, x, shift=shift, scale=scale,
                    gate=1.0)
                pairs[f"gelu_tanh_fp8 [{name}]"] = lambda n=name: call_provider("gelu_tanh_fp8", n, x)
                pairs[f"quantize_fp8 [{name}]"] = lambda n=name: call_provider("quantize_fp8", n, x)
            pairs["scale_residual_norm_scale_shift bf16 + quantize_fp8"] = lambda: ops.quantize_fp8(
                ops.scale_residual_norm_scale_shift(res, x, shift=shift, scale=scale, gate=1.0)[0])
            for label, fn in pairs.items():
                ms = bench(fn)
                rec.add("linear", {"tokens": tokens, "K": dim, "candidate": label, "ms": ms,
                                   "gb_s": 3 * tokens * dim / (ms * 1e-3) / 1e9})
        rec.guard(f"producers D={dim}", producers)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON output path")
    parser.add_argument("--tiny", action="store_true", help="CPU mode: tiny shapes, interpreter")
    parser.add_argument("--parts", default="attention,linear", help="attention,linear")
    parser.add_argument("--heads", default="12,40", help="attention heads, comma-separated")
    parser.add_argument("--length", type=int, default=32760, help="attention sequence length")
    parser.add_argument("--configs", default="",
                        help="int8 launch candidates by name, comma-separated (default: all)")
    parser.add_argument("--split-configs", default="",
                        help="candidates also timed with V in two terms (default: the first)")
    args = parser.parse_args(argv)
    if args.tiny:
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")  # before fastdit reads its config
        device, heads, length, tokens, shapes = "cpu", (2,), 200, 64, TINY_LINEARS
        ffns = ((128, 320),)
    else:
        if not torch.cuda.is_available():
            print("benchmarks/quant.py needs a GPU (or --tiny)", file=sys.stderr)
            return 2
        device = "cuda"
        heads = tuple(int(h) for h in args.heads.split(","))
        length, tokens, shapes = args.length, 32760, WAN_LINEARS
        ffns = ((1536, 8960), (5120, 13824))  # Wan2.1 1.3B, 14B
    rec = Recorder(args.out, environment(device))
    parts = set(args.parts.split(","))
    if "attention" in parts:
        names = lambda text: tuple(n for n in text.split(",") if n)  # noqa: E731
        attention_section(rec, device, heads, length, args.tiny, names(args.configs),
                          names(args.split_configs))
    if "linear" in parts:
        linear_section(rec, device, tokens, shapes, ffns)
    print(f"{len(rec.result['errors'])} case(s) failed; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

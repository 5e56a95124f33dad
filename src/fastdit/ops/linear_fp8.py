"""FP8 matrix products: ``linear_fp8`` and the per-token activation quantisers it consumes.

Weights are stored once in e4m3 with per-output-channel scales (``quant.weights``);
activations are quantised per token, either by the op itself (``x`` in a float dtype) or
by the kernel that produced them (``x`` in e4m3 with ``x_scale``: the fp8-emitting norms of
``ops.norm_fp8`` and :func:`gelu_tanh_fp8`), so the product needs no separate pass.

    x_q, sx = quantize_fp8(x)                       per token: sx[t] = amax_t / 448
    y[t, n] = sum_k (x_q[t, k] sx[t]) (W_q[n, k] sw[n]) + b[n]

The specification computes that fp32 product of the dequantised operands; providers run it
on the fp8 tensor cores with fp32 accumulation (``torch._scaled_mm`` with row-wise scales).
"""

from __future__ import annotations

import torch

from fastdit.ops import _checks as C
from fastdit.ops.library import LibraryOp, compiling
from fastdit.ops.registry import define_op, new_plan, plans
from fastdit.ops.registry import signature as sig
from fastdit.quant.formulas import FP8_DTYPE, quantize_fp8_rows


# ---------------------------------------------------------------------------------------
# specification (native provider)
# ---------------------------------------------------------------------------------------
def quantize_fp8_native(x):
    return quantize_fp8_rows(x, dim=-1)


def gelu_tanh_fp8_native(h):
    g = torch.nn.functional.gelu(h.float(), approximate="tanh")
    return quantize_fp8_rows(g, dim=-1)


def _dequantized_rows(x_q, x_scale):
    """``x_q * x_scale`` in fp32; ``x_scale`` per token ``[...]`` or per group ``[..., G]``
    (group g covers channels ``g*K/G ... (g+1)*K/G - 1``)."""
    x32 = x_q.float()
    if x_scale.dim() == x_q.dim():  # (..., G) groups along K
        groups = x_scale.shape[-1]
        return (x32.unflatten(-1, (groups, -1)) * x_scale.float()[..., None]).flatten(-2)
    return x32 * x_scale.float()[..., None]


def linear_fp8_native(x, weight, weight_scale, bias=None, *, x_scale=None, out_dtype=None):
    if x_scale is None:
        x_q, x_scale = quantize_fp8_rows(x, dim=-1)
        out_dtype = x.dtype
    else:
        x_q = x
    w = weight.float() * weight_scale.float()[:, None]  # (N, K)
    y = torch.matmul(_dequantized_rows(x_q, x_scale), w.t())  # (..., N) fp32
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype or torch.bfloat16)


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
def check_fp8_weight(op, weight, weight_scale, k: int, x=None) -> None:
    C.check_tensor(op, "weight", weight, dtypes=(FP8_DTYPE,), min_dim=2)
    if weight.dim() != 2 or weight.shape[1] != k:
        raise C.fail(op, f"weight must be [N, K={k}] float8_e4m3fn", x=x, weight=weight)
    C.check_tensor(op, "weight_scale", weight_scale, dtypes=(torch.float32,))
    if tuple(weight_scale.shape) != (weight.shape[0],):
        raise C.fail(op, f"weight_scale must be [N={weight.shape[0]}] fp32", weight=weight,
                     weight_scale=weight_scale)


def _check_x_scale(op, x, x_scale) -> None:
    C.check_tensor(op, "x_scale", x_scale, dtypes=(torch.float32,), min_dim=0)
    per_token = tuple(x_scale.shape) == tuple(x.shape[:-1])
    grouped = (x_scale.dim() == x.dim() and tuple(x_scale.shape[:-1]) == tuple(x.shape[:-1])
               and x_scale.shape[-1] > 0 and x.shape[-1] % x_scale.shape[-1] == 0)
    if not (per_token or grouped):
        raise C.fail(op, "x_scale must be per token [...] or per group [..., G] with G dividing K",
                     x=x, x_scale=x_scale)


# ---------------------------------------------------------------------------------------
# public ops
# ---------------------------------------------------------------------------------------
def _check_quantize_fp8(x) -> None:
    C.check_tensor("quantize_fp8", "x", x)


def _check_gelu_tanh_fp8(h) -> None:
    C.check_tensor("gelu_tanh_fp8", "h", h)


def quantize_fp8(x):
    """Per-token e4m3 quantisation: ``(x_q [..., K] float8_e4m3fn, scale [...] fp32)`` with
    ``scale = max(amax_t, 1e-12) / 448`` and ``x_q = e4m3(clamp(x * (448 / amax_t), +-448))``
    (``quant.formulas.quantize_fp8_rows``), ``x ~= x_q * scale[..., None]``. x: fp32/fp16/bf16."""
    if compiling():
        return _LIB_QUANTIZE_FP8(x)
    return _plan_quantize_fp8(x).fn(x)


def _plan_quantize_fp8(x):
    key = sig(x)
    try:
        return plans("quantize_fp8")[key]
    except (KeyError, TypeError):
        _check_quantize_fp8(x)
        return new_plan("quantize_fp8", key, (x,), {})


def gelu_tanh_fp8(h):
    """``quantize_fp8(gelu_tanh(h))`` in one pass (the FFN's hidden state between its two fp8
    products): GELU (tanh approximation) in fp32 on ``h [..., K]``, then per-token e4m3.
    Returns ``(g_q [..., K] float8_e4m3fn, scale [...] fp32)``."""
    if compiling():
        return _LIB_GELU_TANH_FP8(h)
    return _plan_gelu_tanh_fp8(h).fn(h)


def _plan_gelu_tanh_fp8(h):
    key = sig(h)
    try:
        return plans("gelu_tanh_fp8")[key]
    except (KeyError, TypeError):
        _check_gelu_tanh_fp8(h)
        return new_plan("gelu_tanh_fp8", key, (h,), {})


def _check_linear_fp8(x, weight, weight_scale, bias=None, *, x_scale=None, out_dtype=None) -> None:
    op = "linear_fp8"
    if x_scale is None:
        C.check_tensor(op, "x", x)
        if out_dtype is not None and out_dtype != x.dtype:
            raise C.fail(op, "out_dtype is x's dtype when x is not quantised", x=x)
    else:
        C.check_tensor(op, "x", x, dtypes=(FP8_DTYPE,))
        _check_x_scale(op, x, x_scale)
        if out_dtype is not None and out_dtype not in C.FLOAT_DTYPES:
            raise C.fail(op, f"out_dtype must be a float dtype, got {out_dtype}")
    check_fp8_weight(op, weight, weight_scale, x.shape[-1], x)
    if bias is not None:
        C.check_tensor(op, "bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise C.fail(op, f"bias must be [N={weight.shape[0]}]", weight=weight, bias=bias)
    C.check_same_device(op, x=x, weight=weight, weight_scale=weight_scale, bias=bias,
                        x_scale=x_scale)


def linear_fp8(x, weight, weight_scale, bias=None, *, x_scale=None, out_dtype=None):
    """FP8 product ``y = dequant(x) dequant(W)^T + b``.

    ``x [..., K]``: a float tensor (quantised per token here, output in x's dtype) or an e4m3
    tensor with ``x_scale`` (per token ``[...]``, or per group ``[..., G]`` of ``K/G``
    channels) from a producer kernel, output in ``out_dtype`` (default bf16).
    ``weight [N, K]`` e4m3, ``weight_scale [N]`` fp32 (``W = weight * weight_scale[:, None]``),
    ``bias [N]`` or None. Returns ``[..., N]``. The specification computes in fp32 from the
    dequantised operands; providers accumulate the fp8 products in fp32 (``torch._scaled_mm``,
    fast accumulation: see ``kernels/scaled_mm``).
    """
    if compiling():
        return _LIB_LINEAR_FP8(x, weight, weight_scale, bias, x_scale, out_dtype)
    return _plan_linear_fp8(x, weight, weight_scale, bias, x_scale, out_dtype).fn(
        x, weight, weight_scale, bias, x_scale=x_scale, out_dtype=out_dtype)


def _plan_linear_fp8(x, weight, weight_scale, bias, x_scale, out_dtype):
    key = (sig(x), sig(weight), sig(weight_scale), sig(bias), sig(x_scale), out_dtype)
    try:
        return plans("linear_fp8")[key]
    except (KeyError, TypeError):
        _check_linear_fp8(x, weight, weight_scale, bias, x_scale=x_scale, out_dtype=out_dtype)
        return new_plan("linear_fp8", key, (x, weight, weight_scale, bias),
                        {"x_scale": x_scale, "out_dtype": out_dtype})


# ---------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------
define_op("quantize_fp8", quantize_fp8, _plan_quantize_fp8)
define_op("gelu_tanh_fp8", gelu_tanh_fp8, _plan_gelu_tanh_fp8)
define_op("linear_fp8", linear_fp8, _plan_linear_fp8)

_LIB_QUANTIZE_FP8 = LibraryOp("quantize_fp8", quantize_fp8, (("x", "Tensor"),),
                              "(Tensor, Tensor)", _check_quantize_fp8, quantize_fp8_native)
_LIB_GELU_TANH_FP8 = LibraryOp("gelu_tanh_fp8", gelu_tanh_fp8, (("h", "Tensor"),),
                               "(Tensor, Tensor)", _check_gelu_tanh_fp8, gelu_tanh_fp8_native)
_LIB_LINEAR_FP8 = LibraryOp(
    "linear_fp8", linear_fp8,
    (("x", "Tensor"), ("weight", "Tensor"), ("weight_scale", "Tensor"), ("bias", "Tensor?"),
     ("x_scale", "Tensor?"), ("out_dtype", "dtype?")),
    "Tensor", _check_linear_fp8, linear_fp8_native)

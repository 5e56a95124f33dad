"""Optional attention libraries, imported only when asked whether they are supported."""

from __future__ import annotations

import functools
import importlib
import importlib.util

import torch

from fastdit.platforms import current_platform


def _gpu() -> bool:
    return current_platform().name in ("cuda", "rocm")


@functools.cache
def _flash_module():
    """FA3's ``flash_attn_interface`` or FA2's ``flash_attn`` (looked up once), or None."""
    for name in ("flash_attn_interface", "flash_attn"):
        if importlib.util.find_spec(name) is not None:
            module = importlib.import_module(name)
            if hasattr(module, "flash_attn_func"):  # flash-attn-4 alone has only flash_attn.cute
                return module
    return None


def flash_attn_supported() -> bool:
    return _gpu() and _flash_module() is not None


def flash_attn_supports_args(q, k, v, *, causal=False, scale=None, attn_mask=None) -> bool:
    return (attn_mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256
            and all(t.stride(-1) == 1 for t in (q, k, v)))


def attention_flash_attn(q, k, v, *, causal=False, scale=None, attn_mask=None):
    out = _flash_module().flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
    return out[0] if isinstance(out, tuple) else out  # FA3 returns (out, lse)


@functools.cache
def _flash4_func():
    """FlashAttention-4's ``flash_attn.cute.flash_attn_func`` (the ``flash-attn-4`` package,
    CuTe DSL kernels for sm_90 and sm_100; looked up once), or None when it does not import."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        return importlib.import_module("flash_attn.cute").flash_attn_func
    except ImportError:  # flash-attn 2/3 without the cute package, or cutlass-dsl missing
        return None


def flash4_supported() -> bool:
    """CUDA sm_90 or newer with ``flash-attn-4`` importable."""
    platform = current_platform()
    capability = platform.compute_capability() if platform.name == "cuda" else None
    return capability is not None and capability >= (9, 0) and _flash4_func() is not None


def flash4_supports_args(q, k, v, *, causal=False, scale=None, attn_mask=None) -> bool:
    """fp16/bf16 CUDA tensors with head dims 64 or 128 and unit-stride rows, no mask. Causal
    only for ``Lq == Lk``: FlashAttention aligns a rectangular causal mask to the bottom right,
    torch's SDPA (the op's definition) to the top left."""
    if causal and q.shape[1] != k.shape[1]:
        return False
    return (attn_mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] in (64, 128) and all(t.stride(-1) == 1 for t in (q, k, v)))


def attention_flash4(q, k, v, *, causal=False, scale=None, attn_mask=None):
    """FlashAttention-4 on ``[B, L, H, D]`` (its own layout; grouped-query heads native).
    Measured on the H200 at ``[1, 32760, 12 | 40, 128]`` bf16 (benchmarks/results/h200-run21):
    9.80 / 33.61 ms against cuDNN's 11.81 / 38.54 (1.20x / 1.15x), the same error against fp32."""
    out = _flash4_func()(q, k, v, softmax_scale=scale, causal=causal)
    return out[0] if isinstance(out, tuple) else out  # (out, lse)


def sage_supported() -> bool:
    return _gpu() and importlib.util.find_spec("sageattention") is not None


def sage_supports_args(q, k, v, *, causal=False, scale=None, attn_mask=None) -> bool:
    """sageattention's kernels: fp16/bf16 on CUDA, head dims 64 and 128, no mask; its causal
    mask is only defined for ``Lq == Lk`` (it asserts ``qo_len == kv_len``), so causal calls
    with other lengths go to the next provider. A custom ``scale`` goes to the next provider
    too: sageattention 1.0.6 with ``sm_scale=0.3`` (head dim 64) measured cosine 0.959 against
    exact attention on the H200 (tests/ops/attention_cases.py, case ``scale``)."""
    if causal and q.shape[1] != k.shape[1]:
        return False
    if scale is not None and scale != q.shape[-1] ** -0.5:
        return False
    return attn_mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] in (64, 128)


@functools.cache
def _sage_smooths_in_place() -> bool:
    """True for sageattention 1.x, whose ``smooth_k`` runs ``k -= k.mean(...)`` on the
    caller's tensor; 2.x passes the mean to its quantisation kernels and leaves k alone."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("sageattention").split(".")[0]) < 2
    except (PackageNotFoundError, ValueError):
        return True  # unknown: take the copy (always correct)


def attention_sage(q, k, v, *, causal=False, scale=None, attn_mask=None):
    """sageattention's ``sageattn`` on ``[B, L, H, D]`` with its key smoothing (``softmax(q
    (k - m)^T) = softmax(q k^T)``, m the mean over the tokens). sageattention 2 subtracts m
    inside its quantisation kernel; 1.x subtracts it from ``k`` in place, so it gets a smoothed
    copy (the caller's ``k`` is left as it was). On the H200 the copy (a torch mean and a
    subtraction) cost 9.4 ms of a 376 ms 1.3B fp8 forward (h200-run23)."""
    sageattention = importlib.import_module("sageattention")
    if not _sage_smooths_in_place():
        return sageattention.sageattn(q, k, v, tensor_layout="NHD", is_causal=causal,
                                      sm_scale=scale, smooth_k=True)
    smoothed = k - k.mean(dim=1, keepdim=True)  # (B, Lk, H, D)
    return sageattention.sageattn(q, smoothed, v, tensor_layout="NHD", is_causal=causal,
                                  sm_scale=scale, smooth_k=False)

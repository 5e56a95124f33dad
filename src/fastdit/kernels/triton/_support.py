"""When the Triton provider can run, and the launch parameters of its kernels.

Nothing here imports Triton at module level: :func:`supported` imports it when asked, the
kernel modules (``norm``, ``elementwise``, ``rope``) import it when the registry loads them.

The launch tables (:func:`norm_launch`, :func:`elementwise_launch`, :func:`rope_launch`,
:func:`channel_norm_launch`) are
plain functions of the shapes so that they can be tuned in one place (see README.md).
"""

from __future__ import annotations

import torch

from fastdit.config import get_config
from fastdit.ops import _checks as C
from fastdit.ops._checks import FLOAT_DTYPES, is_number
from fastdit.ops.rope import CACHE_DTYPES, INDEX_DTYPES
MAX_ROW = 65536  # widest row a norm kernel keeps in registers


# ---------------------------------------------------------------------------------------
# availability
# ---------------------------------------------------------------------------------------
def interpreting() -> bool:
    return bool(get_config().kernel.triton_interpret)


def supported() -> bool:
    """Triton importable, and a CUDA/ROCm platform with its device present (or the Triton
    interpreter): a forced platform whose device is missing offers no Triton kernels."""
    from fastdit.platforms import current_platform

    platform = current_platform()
    if not (interpreting() or (platform.name in ("cuda", "rocm") and platform.is_available())):
        return False
    import triton  # noqa: F401  (raises ImportError when missing: the registry reads that as no)

    return True


def device_ok(*values: object) -> bool:
    """Every tensor among ``values`` is on a CUDA/HIP device, or on the CPU when interpreting."""
    want = "cpu" if interpreting() else "cuda"
    return all(v.device.type == want for v in values if isinstance(v, torch.Tensor))


def float_ok(*values: object) -> bool:
    return all(v.dtype in FLOAT_DTYPES for v in values if isinstance(v, torch.Tensor))


def modulation_ok(value: object, x: torch.Tensor) -> bool:
    """A number, or a float tensor on a usable device that broadcasts against ``x``."""
    if is_number(value):
        return True
    if not (isinstance(value, torch.Tensor) and value.dtype in FLOAT_DTYPES and device_ok(value)):
        return False
    try:
        C.modulation_layout(value, x.shape)
    except ValueError:
        return False
    return True


def row_ok(x: torch.Tensor) -> bool:
    return x.dim() >= 1 and 0 < x.shape[-1] <= MAX_ROW


# ---------------------------------------------------------------------------------------
# launch tables
# ---------------------------------------------------------------------------------------
def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling division (plain Python: ``triton.cdiv`` is a JIT function, slower on the host)."""
    return -(-a // b)


def _warp_size() -> int:
    """Threads per warp: 64 on AMD GPUs (wavefronts), 32 elsewhere (and in the interpreter)."""
    from fastdit.platforms import current_platform

    return 64 if current_platform().name == "rocm" and not interpreting() else 32


def _warps_for(elements: int, per_thread: int = 8, max_warps: int = 32) -> int:
    """Warps for a tile of ``elements`` values at about ``per_thread`` values per thread (one
    16-byte bf16 vector), as a power of two in ``[1, max_warps]``."""
    threads = max(1, elements // per_thread)
    return max(1, min(max_warps, next_pow2(threads) // _warp_size()))


# Launch parameters measured best on a GPU (benchmarks/tune_triton.py), keyed by
# ("norm", D), ("elementwise", D), ("channel_rows", C), ("rope", Hq, Hk, D) or ("quant" | "quant_gelu", D); they
# take precedence over the rules below for large inputs. Values: the tuple the launch function returns.
# ("rms", D) is the rms_norm kernel, ("norm", D) the modulated-norm kernel.
# Measured on an H100 (benchmarks/results/run2/tune.json) unless marked H200.
TUNED: dict[tuple, tuple] = {
    ("norm", 1536): (2048, 4, 4),  # layer_norm_scale_shift 2.65 TB/s, residual variant 2.83
    ("norm", 5120): (8192, 16, 2),  # 1.42 / 1.95 TB/s (4 warps: 2.36 / 1.73 but spills): wide rows defer to torch.compile (below)
    ("rms", 1536): (2048, 8, 2),  # 2.69 TB/s
    ("rms", 5120): (8192, 8, 1),  # 2.95 TB/s
    ("elementwise", 1536): (512, 2, 4),  # mul_add 2.79 TB/s
    ("elementwise", 5120): (1024, 2, 8),  # 2.91 TB/s
    ("rope", 12, 12, 128): (4, 4, 4, 4),  # rope_qk_ 2.80 TB/s (best 2.85: within noise; 16-byte NeoX access)
    ("rope", 40, 40, 128): (2, 8, 8, 4),  # 2.88 TB/s (best 2.93)
    ("rope", 32, 8, 128): (8, 8, 8, 2),  # rope_qk_cache_store 2.32 TB/s
    # the per-token e4m3 quantiser (quant_fp8.quant_launch), H200 (benchmarks/results/h200-run23/tune-tanh-gelu.json):
    # whole rows at 4-8 warps; the rule's 16-32 warps reached 2.2-3.7 TB/s
    ("quant", 1536): (2048, 4, 1),  # 3.49 TB/s (rule (2048, 16, 4): 2.76)
    ("quant", 5120): (8192, 4, 1),  # 4.04 TB/s (rule (8192, 32, 1): 2.15)
    ("quant", 8960): (16384, 8, 1),  # 3.79 TB/s (rule (16384, 32, 1): 2.83; chunked at best 3.30)
    ("quant", 13824): (16384, 8, 1),  # 4.32 TB/s (rule: 3.67)
    # GELU + quantiser, swept with the GELU as x * sigmoid(2u) (h200-run23/tune.json), before the GPU
    # path's tanh.approx (not re-swept); a row split into two or three power-of-two tiles to mask
    # fewer lanes measured slower at every width (tune-split-rows.json)
    ("quant_gelu", 1536): (2048, 4, 2),  # 2.19 TB/s (rule (2048, 16, 4): 1.91)
    ("quant_gelu", 5120): (8192, 4, 1),  # 2.11 TB/s (rule (8192, 32, 1): 1.59)
    ("quant_gelu", 8960): (16384, 8, 1),  # 1.83 TB/s with 45% of the lanes masked (best: chunked 1024x2, 1.90)
    ("quant_gelu", 13824): (16384, 8, 1),  # 2.76 TB/s (rule (16384, 32, 1): 2.49)
}
# Rows wider than this go to the next provider (torch.compile) for the modulated norms on a
# GPU: on an H100 at D=5120 the whole-row kernel reached 1.7-2.4 TB/s, compiled 2.7-2.8.
WIDE_NORM_ROW = 4096


def prefers_norm_modulate(x, *args, **kwargs) -> bool:
    """False for modulated-norm rows wider than :data:`WIDE_NORM_ROW` on a GPU."""
    return interpreting() or x.shape[-1] <= WIDE_NORM_ROW


def prefers_scale_residual(residual, x, *args, **kwargs) -> bool:
    return prefers_norm_modulate(x)


def tuned_launch(kind: str, dim: int, n_rows: int | None = None) -> tuple | None:
    """``TUNED[(kind, dim)]`` (``(BLOCK_D, num_warps, ROWS, ...)``) when set and the input is
    large (``n_rows`` None or at least 1024 programs' worth of rows), else None."""
    tuned = TUNED.get((kind, dim))
    if tuned is not None and (n_rows is None or n_rows >= 1024 * tuned[2]):
        return tuned
    return None


def norm_launch(dim: int, n_rows: int | None = None, kind: str = "norm") -> tuple[int, int, int]:
    """``(BLOCK_D, num_warps, ROWS)`` for the row-norm kernels: a program normalises a
    ``[ROWS, BLOCK_D]`` tile of whole rows (BLOCK_D = next power of two >= D).

    Tiles of 8192 values at 16 values per thread (16 warps on CUDA) while a row fits:
    D=1536 -> 4 rows of 2048; wider rows take one row at 8 values per thread, up to 32 warps:
    D=5120 -> 1 row of 8192, 32 warps. Compiled for sm_90 these keep every variant at <= 64
    registers and 32-64 resident warps per SM without spills (8 warps for 8192 would need
    120-190 registers). ROWS shrinks for small inputs (``n_rows``).
    """
    tuned = tuned_launch(kind, dim, n_rows)
    if tuned is not None:
        return tuned
    block = next_pow2(dim)
    if block < 8192:
        rows = min(64, 8192 // block)
        if n_rows is not None:
            rows = max(1, min(rows, next_pow2(n_rows)))
        return block, _warps_for(rows * block, per_thread=16), rows
    return block, _warps_for(block, per_thread=8), 1


# The channel norm's programs read their [C, BLOCK_S] column of x twice; keeping a column at
# <= 48 KiB lets the second read come from L2: about 8 programs (4 warps, 60 registers) a
# multiprocessor, 1056 on an H200's 132, hold <= 50 MB of its 60 MB L2.
CHANNEL_COLUMN_BYTES = 48 * 1024


def channel_norm_launch(channels: int, positions: int, itemsize: int = 2) -> tuple[int, int, int]:
    """``(BLOCK_C, BLOCK_S, num_warps)`` for the channel RMS norm (``[B, C, S]``, norm over C).

    Tiles of 2048 values at 4 warps: 16 values a thread, two 16-byte bf16 vectors along s. For
    sm_90 the kernel then takes 60 registers with the SiLU (46-48 without), no spills
    (2 x 4096-value tiles, 16 x 256 or 32 x 128, need 96). The tile is BLOCK_S = 128 positions x
    BLOCK_C = 16 channels (256 contiguous bytes a channel row in bf16) while a program's
    column ``C * BLOCK_S * itemsize`` fits :data:`CHANNEL_COLUMN_BYTES` (bf16: C <= 192), else
    64 x 32 (a 128-byte line a channel row; bf16 C = 384: 48 KiB columns). At the VAE shapes
    (S = 4 * 480 * 832) that is 12480 or 24960 programs a batch row. Small inputs take
    narrower blocks: BLOCK_S down to 16, BLOCK_C down to next_pow2(C).
    """
    block_s = 128 if channels * 128 * itemsize <= CHANNEL_COLUMN_BYTES else 64
    block_c = 2048 // block_s
    block_s = max(16, min(block_s, next_pow2(positions)))
    block_c = max(1, min(block_c, next_pow2(channels)))
    return block_c, block_s, 4


def channel_rows_launch(channels: int, rows: int) -> tuple[int, int, int]:
    """``(BLOCK_C, ROWS, num_warps)`` for the channels-last rows kernel: a whole row of C in
    registers (BLOCK_C = next_pow2(C)), about 4096 values a program."""
    if ("channel_rows", channels) in TUNED:
        return TUNED[("channel_rows", channels)]
    block_c = next_pow2(channels)
    per_program = max(1, min(64, 4096 // block_c))
    per_program = max(1, min(per_program, next_pow2(rows)))
    return block_c, per_program, _warps_for(per_program * block_c, per_thread=16)


def elementwise_launch(dim: int) -> tuple[int, int, int]:
    """``(BLOCK_D, ROWS, num_warps)`` for the elementwise kernels: 2-D tiles of about 4096 values.

    BLOCK_D is the largest power of two <= 1024 that divides D when there is one of at least
    256 (1536 -> 512, 5120 -> 1024: no masked lanes), else next_pow2(D) capped at 1024.
    """
    if ("elementwise", dim) in TUNED:
        return TUNED[("elementwise", dim)]
    block = min(next_pow2(dim), 1024)
    if dim > 1024:
        for candidate in (1024, 512, 256):
            if dim % candidate == 0:
                block = candidate
                break
    rows = max(1, 4096 // block)
    return block, rows, _warps_for(block * rows, per_thread=16, max_warps=8)


def rope_launch(tokens: int, heads_q: int, heads_k: int, dim: int) -> tuple[int, int, int, int]:
    """``(BLOCK_T, BLOCK_HQ, BLOCK_HK, num_warps)`` for the RoPE kernels.

    Heads are processed in chunks of BLOCK_H (the largest power of two <= 16 that divides H, so
    12 -> 4 and 40 -> 8 heads need no masked lanes); a program handles BLOCK_T tokens and all
    their q and k heads, loading each token's cos/sin once. Tiles are about 2048 values.
    """
    tuned = TUNED.get(("rope", heads_q, heads_k, dim))
    if tuned is not None and tokens >= 16 * tuned[0]:
        return tuned
    block_d = next_pow2(dim)

    def head_block(heads: int) -> int:
        for candidate in (16, 8, 4, 2):
            if heads % candidate == 0 and candidate * block_d <= 4096:
                return candidate
        return max(1, min(next_pow2(heads), max(1, 2048 // block_d)))

    bhq, bhk = head_block(heads_q), head_block(heads_k)
    block_t = max(1, min(16, 2048 // (max(bhq, bhk) * block_d)))
    block_t = min(block_t, next_pow2(max(tokens, 1)))
    return block_t, bhq, bhk, _warps_for(block_t * max(bhq, bhk) * block_d, per_thread=16,
                                         max_warps=8)


# ---------------------------------------------------------------------------------------
# supports_args: same signatures as the ops; False (never an exception) for what the kernels
# cannot take, so that dispatch falls back
# ---------------------------------------------------------------------------------------
def _affine_ok(x, weight, bias) -> bool:
    return all(t is None or (isinstance(t, torch.Tensor) and float_ok(t) and device_ok(t)
                             and tuple(t.shape) == (x.shape[-1],)) for t in (weight, bias))


def _tensor_ok(*values) -> bool:
    return (all(isinstance(v, torch.Tensor) for v in values) and float_ok(*values)
            and device_ok(*values))


def rms_norm_args(x, weight, eps=1e-6, *, residual=None, variance_size=None) -> bool:
    if not (_tensor_ok(x) and row_ok(x) and _affine_ok(x, weight, None) and is_number(eps)):
        return False
    if residual is not None and not (_tensor_ok(residual) and residual.shape == x.shape):
        return False
    return variance_size is None or (is_number(variance_size) and 0 < variance_size <= x.shape[-1])


def channels_last_rows(x) -> bool:
    """Whether ``x [B, C, ...]`` is channels-last dense (NHWC / NDHWC: C the innermost, the
    positions packed), so that it is a ``[B * S, C]`` row-major matrix."""
    if x.dim() < 3:
        return False
    order = (0, *range(2, x.dim()), 1)
    return x.permute(order).is_contiguous()


def channel_rms_norm_args(x, gamma, bias=None, *, scale, eps=1e-12, silu=False) -> bool:
    """``x [B, C, ...]`` contiguous (seen as ``[B, C, S]``) or channels-last dense (seen as
    ``[B * S, C]`` rows, C <= 4096); other layouts go to the next provider. gamma/bias of x's
    dtype with one value per channel (flattened), numbers."""
    layout_ok = x.dim() >= 3 and (x.is_contiguous() or (channels_last_rows(x) and x.shape[1] <= 4096))
    if not (_tensor_ok(x) and layout_ok and is_number(scale) and is_number(eps) and isinstance(silu, bool)):
        return False
    return all(t is None or (_tensor_ok(t) and t.dtype == x.dtype and t.numel() == x.shape[1])
               for t in (gamma, bias)) and gamma is not None


def _norm_family_ok(x, mods, weight, bias, eps, norm, residual=None) -> bool:
    if not (_tensor_ok(x) and row_ok(x) and norm in ("layer", "rms") and is_number(eps)):
        return False
    if residual is not None and not (_tensor_ok(residual) and residual.shape == x.shape):
        return False
    return _affine_ok(x, weight, bias) and all(modulation_ok(m, x) for m in mods)


def layer_norm_scale_shift_args(x, *, shift, scale, weight=None, bias=None, eps=1e-6,
                                norm="layer") -> bool:
    return _norm_family_ok(x, (shift, scale), weight, bias, eps, norm)


def scale_residual_norm_scale_shift_args(residual, x, *, shift, scale, gate, weight=None,
                                         bias=None, eps=1e-6, norm="layer") -> bool:
    return _norm_family_ok(x, (shift, scale, gate), weight, bias, eps, norm, residual=residual)


def norm_tanh_mul_add_args(x, *, shift, scale, weight=None, bias=None, eps=1e-6,
                           norm="layer") -> bool:
    return _norm_family_ok(x, (shift, scale), weight, bias, eps, norm)


def mul_add_args(a, c, *, gate, k=0) -> bool:
    return (_tensor_ok(a, c) and a.shape == c.shape and a.dim() >= 1 and is_number(k)
            and modulation_ok(gate, a))


def scale_shift_args(x, *, shift, scale, scale_constant=1.0) -> bool:
    return (_tensor_ok(x) and x.dim() >= 1 and is_number(scale_constant)
            and modulation_ok(scale, x) and modulation_ok(shift, x))


def _index_ok(t, length) -> bool:
    return (isinstance(t, torch.Tensor) and t.dtype in INDEX_DTYPES and device_ok(t)
            and t.dim() == 1 and t.shape[0] == length)


def _qk_ok(q, k) -> bool:
    return (_tensor_ok(q, k) and q.dim() >= 3 and k.dim() >= 3 and q.shape[:-2] == k.shape[:-2]
            and q.shape[-1] == k.shape[-1] and q.shape[-1] > 0 and q.shape[-1] % 2 == 0)


def rope_qk_args(q, k, cos, sin, *, positions=None, interleaved=True) -> bool:
    if not (_qk_ok(q, k) and _tensor_ok(cos, sin) and cos.dim() == 2 and sin.shape == cos.shape
            and cos.shape[1] == q.shape[-1] // 2):
        return False
    if positions is None:
        return cos.shape[0] == q.shape[-3]
    return _index_ok(positions, q.shape[-3])


def rms_norm_rope_args(x, weight, cos, sin, *, eps=1e-6, interleaved=True) -> bool:
    """Contiguous x (rows of H*D written in place), interleaved pairs, cos/sin [T, D/2]."""
    if not (_tensor_ok(x, cos, sin) and x.dim() >= 3 and x.is_contiguous() and interleaved
            and is_number(eps) and x.shape[-1] % 2 == 0):
        return False
    dim = x.shape[-2] * x.shape[-1]
    if weight is not None and not (_tensor_ok(weight) and tuple(weight.shape) == (dim,)):
        return False
    return (0 < dim <= MAX_ROW
            and tuple(cos.shape) == tuple(sin.shape) == (x.shape[-3], x.shape[-1] // 2))


def rope_qk_cache_store_args(q, k, v, key_cache, value_cache, slot_mapping, positions,
                             cos_sin_cache, *, interleaved=True, k_scale=None, v_scale=None,
                             swa_slot_mapping=None) -> bool:
    if not (_qk_ok(q, k) and q.dim() == 3 and _tensor_ok(v) and v.shape == k.shape
            and q.shape[1] % max(k.shape[1], 1) == 0):
        return False
    caches = (key_cache, value_cache)
    if not all(isinstance(c, torch.Tensor) and c.dtype in CACHE_DTYPES and device_ok(c)
               and c.dim() == 4 and tuple(c.shape[2:]) == tuple(k.shape[1:]) for c in caches):
        return False
    if key_cache.shape != value_cache.shape or key_cache.shape[1] < 1:
        return False
    tokens = q.shape[0]
    if not (_index_ok(slot_mapping, tokens) and _index_ok(positions, tokens)):
        return False
    if not (_tensor_ok(cos_sin_cache) and cos_sin_cache.dim() == 2
            and cos_sin_cache.shape[1] == q.shape[-1]):
        return False
    if swa_slot_mapping is not None and not (
            isinstance(swa_slot_mapping, torch.Tensor) and swa_slot_mapping.dtype in INDEX_DTYPES
            and device_ok(swa_slot_mapping) and swa_slot_mapping.dim() == 1):
        return False
    for scale in (k_scale, v_scale):
        if scale is None or is_number(scale):
            continue
        if not (isinstance(scale, torch.Tensor) and scale.numel() == 1 and device_ok(scale)
                and scale.dtype in FLOAT_DTYPES):
            return False
    return True

"""The attention provider grid: shapes (self, cross, grouped-query heads, causal square and
rectangular, boolean and additive masks, one token, odd lengths, head size 128, a custom scale,
strided q/k/v views) times dtypes, for every registered attention provider that is available.
Shared by the CPU grid (tests/ops/test_attention_providers.py) and the GPU one."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tests.ops.tolerances import DTYPES

# output tolerance of a provider against the fp32 native spec, by dtype: the output is a convex
# combination of v rows, rounded once; GPU kernels also round P to the input dtype
ATTENTION_TOLERANCES = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}
LOSSY_MIN_COSINE = 0.99  # providers with exact=False: cosine similarity per output


@dataclass(frozen=True)
class AttentionCase:
    id: str
    batch: int
    lq: int
    lk: int
    heads_q: int
    heads_k: int
    dim: int
    causal: bool = False
    mask: str | None = None  # "bool" [B, 1, Lq, Lk] or "float" [1, Hq, Lq, Lk]
    scale: float | None = None
    strided: bool = False  # q, k, v are views of one packed [B, L, 3, H, D] tensor
    extra: dict = field(default_factory=dict)


SHAPES = (
    AttentionCase("self-odd", 1, 33, 33, 4, 4, 64),
    AttentionCase("cross", 2, 7, 19, 4, 4, 64),
    AttentionCase("gqa", 2, 17, 17, 8, 2, 64),
    AttentionCase("causal-square", 1, 33, 33, 2, 2, 64, causal=True),
    AttentionCase("causal-rect", 1, 5, 17, 2, 2, 64, causal=True),
    AttentionCase("gqa-causal", 1, 9, 9, 4, 1, 32, causal=True),
    AttentionCase("bool-mask", 2, 9, 13, 2, 2, 32, mask="bool"),
    AttentionCase("float-mask", 1, 9, 13, 2, 2, 32, mask="float"),
    AttentionCase("one-token", 1, 1, 1, 2, 2, 64),
    AttentionCase("d128", 1, 77, 77, 2, 2, 128),
    AttentionCase("scale", 1, 11, 11, 2, 2, 64, scale=0.3),
    AttentionCase("strided", 2, 13, 13, 2, 2, 64, strided=True),
)
CASES = [(shape, dtype) for shape in SHAPES for dtype in DTYPES]


def build(case: AttentionCase, dtype: torch.dtype, device: str = "cpu", seed: int = 7
          ) -> tuple[tuple, dict]:
    """``(q, k, v), kwargs`` of a case: random data (never zeros), on ``device``."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    if case.strided:
        packed = rand(case.batch, case.lq, 3, case.heads_q, case.dim)  # (B, L, 3, H, D)
        q, k, v = packed.unbind(2)
    else:
        q = rand(case.batch, case.lq, case.heads_q, case.dim)
        k = rand(case.batch, case.lk, case.heads_k, case.dim)
        v = rand(case.batch, case.lk, case.heads_k, case.dim)
    kwargs: dict = {"causal": case.causal, "scale": case.scale}
    if case.mask == "bool":
        keep = torch.rand(case.batch, 1, case.lq, case.lk, generator=g) > 0.3
        keep[..., 0] = True  # every query keeps a key
        kwargs["attn_mask"] = keep.to(device)
    elif case.mask == "float":
        kwargs["attn_mask"] = rand(1, case.heads_q, case.lq, case.lk)
    return (q, k, v), kwargs


def case_id(case: AttentionCase, dtype: torch.dtype) -> str:
    return f"{case.id}-{str(dtype).removeprefix('torch.')}"


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))

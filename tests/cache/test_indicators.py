"""The decision quantities against float64 formulas written out here."""

import math

import numpy as np
import pytest
import torch

from fastdit.cache.indicators import (magnitude_stats, nearest_interp, relative_l1,
                                      relative_l1_sums, rescale)
from fastdit.cache.magcache import published_table
from fastdit.cache.tables import MAGCACHE_TABLES
from fastdit.cache.teacache import TEACACHE_COEFFICIENTS


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relative_l1_against_float64(dtype):
    g = torch.Generator().manual_seed(1)
    prev = torch.randn(2, 7, 33, generator=g).to(dtype)
    cur = (prev.float() + 0.05 * torch.randn(2, 7, 33, generator=g)).to(dtype)
    a, b = cur.double().numpy(), prev.double().numpy()
    expected = np.abs(a - b).mean() / np.abs(b).mean()
    assert relative_l1(cur, prev) == pytest.approx(expected, rel=1e-5)
    sums = relative_l1_sums(cur, prev)
    assert sums.dtype == torch.float32 and sums.shape == (2,)
    assert sums.tolist() == pytest.approx([np.abs(a - b).sum(), np.abs(b).sum()], rel=1e-5)
    assert relative_l1(prev, prev) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        relative_l1_sums(cur, prev[:1])


@pytest.mark.parametrize("model", sorted(TEACACHE_COEFFICIENTS))
@pytest.mark.parametrize("variant", [0, 1])
def test_rescale_is_the_published_poly1d(model, variant):
    coefficients = TEACACHE_COEFFICIENTS[model][variant]
    assert len(coefficients) == 5
    for x in (0.0, 0.003, 0.01, 0.05, 0.2, 1.0):
        expected = sum(c * x ** (4 - i) for i, c in enumerate(coefficients))  # highest degree first
        assert rescale(coefficients, x) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert rescale(coefficients, x) == pytest.approx(float(np.poly1d(coefficients)(x)), rel=1e-12,
                                                         abs=1e-12)


def test_nearest_interp_indices():
    values = [10.0, 11.0, 12.0, 13.0, 14.0]
    assert nearest_interp(values, 5).tolist() == values
    assert nearest_interp(values, 3).tolist() == [10.0, 12.0, 14.0]
    assert nearest_interp(values, 1).tolist() == [14.0]
    # 5 -> 9: i * 0.5, rounded half to even: 0, 0, 1, 2, 2, 2, 3, 4, 4
    assert nearest_interp(values, 9).tolist() == [10, 10, 11, 12, 12, 12, 13, 14, 14]
    for length in (2, 7, 30, 77):
        expected = [values[round(i * 4 / (length - 1))] for i in range(length)]  # round() is half-even
        assert nearest_interp(values, length).tolist() == expected


@pytest.mark.parametrize("name", sorted(MAGCACHE_TABLES))
def test_published_tables_deinterleave_and_resample(name):
    steps, _, _, values = MAGCACHE_TABLES[name]
    assert len(values) == 2 * steps - 2
    table = published_table(name, steps)
    padded = [1.0, 1.0] + list(values)
    for b in (0, 1):
        assert table.ratios[b] == tuple(padded[b::2])
        assert table.ratio(b, 0) == 1.0
    short = published_table(name, 20)
    for b in (0, 1):
        column = padded[b::2]
        assert list(short.ratios[b]) == [column[round(i * (steps - 1) / 19)] for i in range(20)]


def test_published_table_values_spot_checks():
    # first and last entries of the published lists (MagCache4Wan2.1 lines 910/912, Wan2.2 line 695)
    assert published_table("Wan2.1-T2V-1.3B", 50).ratios[0][1] == 1.0124
    assert published_table("Wan2.1-T2V-1.3B", 50).ratios[1][-1] == 0.81939
    assert published_table("Wan2.1-T2V-14B", 50).ratios[0][1] == 1.02504
    assert published_table("Wan2.2-T2V-A14B", 40).ratios[0][1] == 1.00124


def test_magnitude_stats_against_float64():
    g = torch.Generator().manual_seed(2)
    prev = torch.randn(1, 9, 16, generator=g)
    cur = 0.97 * prev + 0.1 * torch.randn(1, 9, 16, generator=g)
    r, p = cur.double().numpy()[0], prev.double().numpy()[0]
    rho = np.linalg.norm(r, axis=-1) / np.linalg.norm(p, axis=-1)
    cos = (r * p).sum(-1) / np.maximum(np.linalg.norm(r, axis=-1) * np.linalg.norm(p, axis=-1), 1e-8)
    got = magnitude_stats(cur, prev).tolist()
    assert got == pytest.approx([rho.mean(), rho.std(ddof=1), (1 - cos).mean()], rel=1e-5, abs=1e-7)
    assert math.isclose(magnitude_stats(prev, prev)[0].item(), 1.0, rel_tol=1e-6)

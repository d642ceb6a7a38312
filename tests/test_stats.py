"""tg_utils.metrics.stats: bootstrap intervals over prompts and Pearson correlations."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from tg_utils.metrics.stats import mean_ci, pearson, spearman


def test_mean_ci_per_layer_profile():
    rng = np.random.default_rng(0)
    values = rng.normal(loc=np.arange(5.0), scale=1.0, size=(400, 5))     # prompts x layers
    res = mean_ci(values)
    assert res.mean.shape == res.low.shape == res.high.shape == (5,)
    np.testing.assert_allclose(res.mean, values.mean(0))
    assert np.all(res.low < res.mean) and np.all(res.mean < res.high)
    half_width = 1.96 * values.std(0, ddof=1) / np.sqrt(400)               # normal approximation
    np.testing.assert_allclose(res.high - res.low, 2 * half_width, rtol=0.15)


def test_mean_ci_is_seeded_and_level_and_axis_work():
    values = np.random.default_rng(1).gamma(2.0, size=(30, 4, 3))
    a, b = mean_ci(values, seed=3), mean_ci(values, seed=3)
    for field in ("mean", "low", "high"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(mean_ci(values, seed=4).low, a.low)
    wide, narrow = mean_ci(values, level=0.99), mean_ci(values, level=0.5)
    assert np.all(wide.high - wide.low > narrow.high - narrow.low)
    moved = mean_ci(np.moveaxis(values, 0, 2), axis=2, seed=3)
    np.testing.assert_allclose(moved.low, a.low)
    one = mean_ci(values[:, 0, 0])
    assert isinstance(one.mean, float) and one.low < one.mean < one.high


def test_mean_ci_errors():
    with pytest.raises(ValueError, match="at least 3"):
        mean_ci(np.ones((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        mean_ci(np.array([1.0, np.nan, 2.0, 3.0]))
    with pytest.raises(ValueError, match="level"):
        mean_ci(np.ones(5), level=95)


def test_pearson_matches_scipy_for_vectors_and_columns():
    rng = np.random.default_rng(2)
    y = rng.normal(size=25)
    x = np.stack([y + rng.normal(scale=s, size=25) for s in (0.1, 1.0, 10.0)], axis=1)
    res = pearson(x, y)                                            # per-layer columns vs a vector
    r, p = res.r, res.p
    assert r.shape == p.shape == (3,)
    for j in range(3):
        expected = sps.pearsonr(x[:, j], y)
        assert r[j] == pytest.approx(expected.statistic, abs=1e-12)
        assert p[j] == pytest.approx(expected.pvalue, rel=1e-9)
    np.testing.assert_allclose(pearson(y, x).r, r)                 # either order
    single = pearson(x[:, 1], y)
    assert isinstance(single.r, float)
    assert single.p == pytest.approx(sps.pearsonr(x[:, 1], y).pvalue, rel=1e-9)
    exact = pearson(y, 3 * y + 1)
    assert (exact.r, exact.p) == pytest.approx((1.0, 0.0))
    const = pearson(np.ones(10), y[:10])                           # constant input: undefined
    assert np.isnan(const.r) and np.isnan(const.p)


def test_pearson_errors():
    with pytest.raises(ValueError, match="at least 3"):
        pearson([1.0, 2.0], [2.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        pearson([1.0, 2.0, np.nan, 4.0], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="samples"):
        pearson(np.arange(5.0), np.arange(6.0))


def test_spearman_is_pearson_of_ranks_over_the_pairs_without_nan():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x ** 3) == pytest.approx(1.0)            # any increasing map: 1
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)
    y = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    d = np.argsort(np.argsort(x)) - np.argsort(np.argsort(y))    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1))
    assert spearman(x, y) == pytest.approx(1 - 6 * (d ** 2).sum() / (5 * 24))
    assert spearman(np.append(x, np.nan), np.append(y, 7.0)) == pytest.approx(spearman(x, y))
    ties = np.array([1.0, 1.0, 2.0, 3.0, 3.0])
    assert spearman(ties, y) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4.5, 4.5], [2, 1, 4, 3, 5])[0, 1])
    assert np.isnan(spearman(np.ones(5), y)) and np.isnan(spearman(x[:2], y[:2]))
    with pytest.raises(ValueError, match="pair them"):
        spearman(x, y[:4])

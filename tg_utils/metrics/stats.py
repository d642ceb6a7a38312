"""Statistics over prompts: bootstrap means with intervals, Pearson and Spearman correlations.

Both functions are vectorised over every axis but the sample axis, so a whole layer profile
(prompts x layers, or prompts x layers x scales) is summarised in one call; both are seeded or
deterministic, and reject inputs with fewer than 3 samples or with NaN/inf values.

mean_ci(values, axis=0, n_boot=1000, level=0.95, seed=0) -> MeanCI(mean, low, high)
pearson(x, y)                                          -> Pearson(r, p)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ._arrays import _to_numpy

__all__ = ["MeanCI", "Pearson", "mean_ci", "pearson", "MIN_SAMPLES"]

MIN_SAMPLES = 3


@dataclass(frozen=True)
class MeanCI:
    """Mean over samples and its bootstrap percentile interval; each has the input's shape
    without the sample axis (floats for a 1-d input)."""
    mean: np.ndarray | float
    low: np.ndarray | float
    high: np.ndarray | float


@dataclass(frozen=True)
class Pearson:
    """Pearson correlation coefficient and its two-sided p-value (t-test, n - 2 degrees of
    freedom); floats for two vectors, else one value per column."""
    r: np.ndarray | float
    p: np.ndarray | float


def _samples(values, name: str, axis: int = 0) -> np.ndarray:
    """values as float64 with the sample axis first, checked for size and finiteness."""
    v = np.asarray(_to_numpy(values), dtype=np.float64)
    if v.ndim == 0:
        raise ValueError(f"{name} must have a sample axis, got a scalar.")
    v = np.moveaxis(v, axis, 0)
    if v.shape[0] < MIN_SAMPLES:
        raise ValueError(f"{name} has {v.shape[0]} samples along its sample axis; at least "
                         f"{MIN_SAMPLES} are needed (use more prompts).")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or inf; drop those samples first "
                         "(e.g. v[np.isfinite(v).all(axis=1)]).")
    return v


def _scalar_or_array(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x


def mean_ci(values, axis: int = 0, n_boot: int = 1000, level: float = 0.95,
            seed: int = 0) -> MeanCI:
    """Mean over `axis` (the prompts) and a bootstrap percentile interval at `level`.

    values: e.g. (n_prompts, n_layers) -> mean, low, high of shape (n_layers,). Every bootstrap
    replicate resamples the prompts with replacement (the same resample for every column, so a
    profile's layers stay paired); the interval is the (1 - level)/2 and (1 + level)/2 percentiles
    of the replicate means. Seeded: equal inputs and seed give equal intervals.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}.")
    v = _samples(values, "values", axis)
    n, rest = v.shape[0], v.shape[1:]
    flat = v.reshape(n, -1)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=int(n_boot))   # (n_boot, n) resamples
    boot = counts @ flat / n                                               # (n_boot, columns)
    low, high = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)], axis=0)
    mean = flat.mean(0)
    return MeanCI(*(_scalar_or_array(a.reshape(rest)) for a in (mean, low, high)))


def pearson(x, y) -> Pearson:
    """Pearson r and its two-sided p-value between samples x and y (sample axis first).

    x, y: (n,) or (n, m); a vector is paired with every column of the other, e.g. x (n_prompts,
    n_layers) vs y (n_prompts,) gives one (r, p) per layer. A constant column gives NaN.
    The p-value is that of scipy.stats.pearsonr: t = r sqrt((n - 2) / (1 - r^2)), n - 2 d.o.f.
    """
    xs, ys = _samples(x, "x"), _samples(y, "y")
    if xs.shape[0] != ys.shape[0]:
        raise ValueError(f"x has {xs.shape[0]} samples and y {ys.shape[0]}; pair them one to one.")
    if xs.ndim > 2 or ys.ndim > 2:
        raise ValueError("x and y must be vectors (n,) or matrices (n, m) with samples in rows.")
    xs, ys = np.broadcast_arrays(xs if xs.ndim == 2 else xs[:, None],
                                 ys if ys.ndim == 2 else ys[:, None])
    xc, yc = xs - xs.mean(0), ys - ys.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(0) / np.sqrt((xc**2).sum(0) * (yc**2).sum(0))
        r = np.clip(r, -1.0, 1.0)
        dof = xs.shape[0] - 2
        t = r * np.sqrt(dof / (1.0 - r**2))
    p = np.where(np.isnan(r), np.nan, 2 * stats.t.sf(np.abs(t), dof))
    single = np.ndim(x) == 1 and np.ndim(y) == 1
    return Pearson(float(r[0]), float(p[0])) if single else Pearson(r, p)


def spearman(x, y) -> float:
    """Spearman rank correlation of x and y (1-D) over the pairs where neither is NaN: the Pearson r of their
    average ranks. NaN with fewer than 3 such pairs or with a constant side (no ranking to correlate)."""
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x has {x.size} values and y {y.size}; pair them one to one.")
    ok = ~np.isnan(x) & ~np.isnan(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return float("nan")
    return float(np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1])

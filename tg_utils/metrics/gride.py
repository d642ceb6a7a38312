"""GRIDE intrinsic dimension (Denti et al. 2022) at the scales n1 = 1, 2, 4, ..., as DADApy 0.3
computes it, from the neighbour distances at ranks 1, 2, 4, ..., 2^S."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._arrays import _clouds, _is_torch, _to_numpy, torch
from .knn import Neighbors, _centred, _neighbor_table, _Table

# GRIDE constants of DADApy 0.3 `return_id_scaling_gride`
GRIDE_D0, GRIDE_D1 = 1e-3, 1e3          # search interval of the maximum-likelihood ID
GRIDE_TOL = 1e-7                         # bisection tolerance; 2 GRIDE_TOL floors 1 - mu^-d
_EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class GrideResult:
    """GRIDE intrinsic dimension at the scales n1 = 1, 2, 4, ... (n2 = 2 n1).

    ids, errs, rs: float64 (..., S): the ID, its error 1/sqrt(Fisher information), and the mean of
        the n1-th and n2-th neighbour distances, one value per scale held. In a batch whose clouds
        reach different scales, the scales a cloud cannot reach hold NaN.
    n1, n2: int64 (S,): neighbour ranks of the scales held (n2 <= range_max, n2 < n_unique).
    n_unique: int or int64 (...,): distinct points used (exact duplicate rows are dropped first).
    """
    ids: np.ndarray
    errs: np.ndarray
    rs: np.ndarray
    n1: np.ndarray
    n2: np.ndarray
    n_unique: np.ndarray | int

    @property
    def id(self):
        """Headline ID: scale 0 (n1 = 1, n2 = 2); a float for one cloud, else (...,)."""
        return float(self.ids[0]) if self.ids.ndim == 1 else self.ids[..., 0]


def gride_scales(n_points: int, range_max: int = 256) -> np.ndarray:
    """n1 of the GRIDE scales a cloud of n_points distinct points holds: n1 = 1, 2, 4, ... with
    n2 = 2 n1 <= range_max and n2 <= n_points - 1 (a point has n_points - 1 neighbours)."""
    top = min(int(range_max), int(n_points) - 1)
    n_scales = top.bit_length() - 1 if top >= 2 else 0             # largest i with 2^(i+1) <= top
    return 2 ** np.arange(n_scales, dtype=np.int64)


class _GrideDerivative:
    """-dL/dd of the GRIDE log-likelihood at every scale (DADApy's `_neg_dloglik_did`):

        f(d) = sum_kept ((1 - n2 + n1) / (1 - mu^-d) + n2 - 1) log mu - (N_kept - 1) / d,

    with 1 - mu^-d floored at 2 GRIDE_TOL as DADApy does. f increases with d, so the
    maximum-likelihood ID is its root. mus, keep: (N, S); n1, n2, d: (S,). Arrays are held as
    (S, N), one contiguous row per scale.
    """

    def __init__(self, mus, keep, n1, n2):
        self.log_mu = np.log(mus.T)                                 # (S, N)
        self.w_log = np.where(keep.T, self.log_mu, 0.0)             # log mu of the kept points
        self.w_log2 = self.w_log * self.log_mu
        self.n_kept = keep.sum(0)
        self.sum_log = self.w_log.sum(1)
        self.n1, self.n2 = n1, n2

    def __call__(self, d, with_slope: bool = False):
        mu_pow = np.exp(-d[:, None] * self.log_mu)                  # mu^-d, (S, N)
        one_m = np.maximum(1.0 - mu_pow, 2 * GRIDE_TOL)
        f = ((1 - self.n2 + self.n1) * (self.w_log / one_m).sum(1)
             + (self.n2 - 1) * self.sum_log - (self.n_kept - 1) / d)
        if not with_slope:
            return f
        free = one_m > 2 * GRIDE_TOL                                # not at the floor
        slope = (np.where(free, self.w_log2, 0.0) * mu_pow / one_m**2).sum(1)
        return f, (self.n2 - self.n1 - 1) * slope + (self.n_kept - 1) / d**2


def _gride_root(f: _GrideDerivative, n_scales: int, max_iter: int = 60):
    """Root of the increasing f per scale by Newton's method on t = log d (to ~1e-14 in t), within
    [GRIDE_D0, GRIDE_D1] (an end of it when f does not change sign there). Also returns
    f(GRIDE_D1), whose sign steers DADApy's bisection."""
    f_lo = f(np.full(n_scales, GRIDE_D0))
    f_hi = f(np.full(n_scales, GRIDE_D1))
    inside = (f_lo < 0) & (f_hi > 0)
    t_lo, t_hi = math.log(GRIDE_D0), math.log(GRIDE_D1)
    # 1 - mu^-d lies below d log mu (small d) and 1 (large d): with either, f is larger, so
    # the roots of those approximations bound the root from below (the floor aside): start
    # Newton at the larger one
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = np.maximum(((f.n2 - f.n1) * f.n_kept - 1) / ((f.n2 - 1) * f.sum_log),
                           (f.n_kept - 1) / (f.n1 * f.sum_log))
    t = np.clip(np.log(np.where(inside & (guess > 0), guess, 1.0)), t_lo, t_hi)
    for _ in range(max_iter):
        d = np.exp(t)
        fd, slope = f(d, with_slope=True)
        step = np.where(inside, fd / (slope * d), 0.0)
        t = np.clip(t - step, t_lo, t_hi)
        if np.all(np.abs(step) < 1e-14):
            break
    return np.where(f_lo >= 0, GRIDE_D0, np.where(f_hi <= 0, GRIDE_D1, np.exp(t))), f_hi


def _replay_bisection(root, f_hi):
    """The value DADApy's `_argmax_loglik` returns: bisection of [GRIDE_D0, GRIDE_D1] until the
    bracket is narrower than GRIDE_TOL, moving the upper end to the midpoint when
    f(mid) f(GRIDE_D1) > 0. As f increases, sign f(mid) = sign(mid - root): the root replays it.
    root, f_hi: (S,); a loop of Python floats (~34 steps per scale) beats numpy on so few values."""
    out = np.empty(len(root))
    for s, (r, sign) in enumerate(zip(root.tolist(), np.sign(f_hi).tolist())):
        d0, d1 = GRIDE_D0, GRIDE_D1
        while abs(d0 - d1) > GRIDE_TOL:
            d2 = (d0 + d1) / 2.0
            if (sign > 0 and d2 > r) or (sign < 0 and d2 < r):     # f(d2) has the sign of f(d1)
                d1 = d2
            else:
                d0 = d2
        out[s] = (d0 + d1) / 2.0
    return out


def _gride_ml(mus, keep, n1, n2):
    """Maximum-likelihood ID per scale as DADApy's bisection on [GRIDE_D0, GRIDE_D1] with
    tolerance GRIDE_TOL gives it. mus, keep: (N, S); n1, n2: (S,). Returns (S,)."""
    f = _GrideDerivative(mus, keep, n1, n2)
    root, f_hi = _gride_root(f, mus.shape[1])
    return _replay_bisection(root, f_hi)


def _gride_fisher_error(ids, mus, n1, n2):
    """1 / sqrt(J), J = N / d^2 + (n2 - n1 - 1) sum (log mu)^2 mu^-d / (1 - mu^-d)^2 over every
    (unfiltered) mu, 1 - mu^-d floored at 5 machine epsilons (DADApy `_fisher_info_scaling`)."""
    mu_pow = mus ** (-ids)
    one_m = 1.0 - mu_pow
    one_m = np.where(one_m < 5 * _EPS64, 5 * _EPS64, one_m)
    j1 = (n2 - n1 - 1) * ((np.log(mus) / one_m) ** 2 * mu_pow).sum(0)
    return 1.0 / np.sqrt(mus.shape[0] / ids**2 + j1)


def gride_from_rank_distances(r: np.ndarray):
    """GRIDE at every scale from the neighbour distances at ranks 1, 2, 4, ..., 2^S.

    r: float64 (N, S + 1); column i holds each point's distance to its 2^i-th neighbour.
    Scale i (n1 = 2^i, n2 = 2 n1) uses mu = r[:, i + 1] / r[:, i]; mu == 1 is raised to
    1 + 10 eps; the ID maximises the likelihood on mu < q50 + 20 (q95 - q50); the error uses every
    mu; rs is the mean of the two neighbour distances over all points.
    Returns (ids, errs, rs), (S,) each.
    """
    mus = r[:, 1:] / r[:, :-1]
    mus = np.where(mus == 1.0, 1.0 + 10 * _EPS64, mus)
    q95, q50 = np.percentile(mus, [95, 50], axis=0)
    keep = mus < q50 + 20 * (q95 - q50)
    n1 = 2.0 ** np.arange(mus.shape[1])
    n2 = 2 * n1
    ids = _gride_ml(mus, keep, n1, n2)
    errs = _gride_fisher_error(ids, mus, n1, n2)
    rs = (r[:, :-1].mean(0) + r[:, 1:].mean(0)) / 2.0
    return ids, errs, rs


def _first_occurrences(X) -> np.ndarray:
    """Sorted indices of the first occurrence of every distinct row of a 2-d array or tensor."""
    if _is_torch(X):
        _, inverse = torch.unique(X, dim=0, return_inverse=True)
        rows = torch.arange(X.shape[0], device=X.device)
        first = torch.full((int(inverse.max()) + 1,), X.shape[0], device=X.device)
        return np.sort(first.scatter_reduce(0, inverse, rows, "amin").cpu().numpy())
    rows = np.ascontiguousarray(X).view(np.dtype((np.void, X.dtype.itemsize * X.shape[1])))
    return np.sort(np.unique(rows.ravel(), return_index=True)[1])


def _gride_ranks(n_points: int, range_max: int) -> np.ndarray:
    """The neighbour ranks whose distances GRIDE uses: 1, 2, 4, ..., 2^S for the S scales a cloud
    of n_points distinct points holds (none when it holds no scale)."""
    n1 = gride_scales(n_points, range_max)
    return np.append(n1, 2 * n1[-1]) if len(n1) else n1


def _surely_distinct(table: _Table) -> bool:
    """True when a cloud's neighbour table shows no duplicate rows: each nearest-neighbour distance
    is above 1e-5 |x_i - mean|, beyond the round-off a duplicate pair gets from the Gram formula
    on the centred cloud (at most ~sqrt(3 d eps) |x_i - mean| < 3e-6 |x_i - mean| for d <= 10^4).
    False means "maybe": the exact row comparison decides."""
    return table.distances.shape[1] > 0 and bool(np.all(table.distances[:, 0] > 1e-5 * table.norms))


def _gride_one(X, range_max: int, table: _Table | None = None):
    """GRIDE of one validated cloud X (N, d), any float dtype: (ids, errs, rs, n_unique).

    table: X's neighbour table with the distances at the ranks _gride_ranks(N, range_max), e.g.
    shared with the neighbourhood overlap; computed when not given. It is used when it shows no
    duplicate rows; otherwise those are dropped and the distances recomputed.
    """
    n = X.shape[0]
    if table is None:
        table = _neighbor_table(X, 0, _gride_ranks(n, range_max))
    first = None if _surely_distinct(table) else _first_occurrences(X)
    n_unique = n if first is None else len(first)
    if n_unique < 3:
        raise ValueError(f"GRIDE needs at least 3 distinct points; this cloud has {n_unique} "
                         f"distinct rows out of {n}. Skip it or use a longer prompt.")
    if n_unique < n:
        X = X[torch.as_tensor(first, device=X.device) if _is_torch(X) else first]
        table = _neighbor_table(X, 0, _gride_ranks(n_unique, range_max))
    ids, errs, rs = gride_from_rank_distances(table.distances)      # ranks 1, 2, 4, ..., 2^S
    return ids, errs, rs, n_unique


def _stack_gride(rows, lead: tuple, range_max: int) -> GrideResult:
    """Stack per-cloud GRIDE results (ids, errs, rs, n_unique); NaN where a scale is missing."""
    n_unique = np.array([r[3] for r in rows], dtype=np.int64)
    n1 = gride_scales(int(n_unique.max()), range_max)
    out = np.full((3, len(rows), len(n1)), np.nan)
    for i, (ids, errs, rs, _) in enumerate(rows):
        out[:, i, :len(ids)] = ids, errs, rs
    shape = lead + (len(n1),)
    return GrideResult(out[0].reshape(shape), out[1].reshape(shape), out[2].reshape(shape),
                       n1, 2 * n1, n_unique.reshape(lead) if lead else int(n_unique[0]))


def _split_neighbors(neighbors: Neighbors | None, n_clouds: int):
    """Per-cloud Neighbors of a (possibly batched) table, or Nones."""
    if neighbors is None:
        return [None] * n_clouds
    d = np.asarray(neighbors.distances)
    i = np.asarray(neighbors.indices)
    d = d.reshape((-1,) + d.shape[-2:])
    i = i.reshape((-1,) + i.shape[-2:])
    if len(d) != n_clouds:
        raise ValueError(f"neighbors holds {len(d)} tables for {n_clouds} clouds; pass "
                         "knn(X, k) of the same X.")
    return [Neighbors(i[c], d[c]) for c in range(n_clouds)]


def _gride_table(X, nb: Neighbors | None, range_max: int) -> _Table | None:
    """The part of a knn table (N, k) of one cloud X that GRIDE uses, or None when the table does
    not reach the largest rank GRIDE needs."""
    n = X.shape[0]
    ranks = _gride_ranks(n, range_max)
    if nb is None or len(ranks) == 0 or nb.distances.shape[0] != n \
            or nb.distances.shape[1] < ranks[-1]:
        return None
    Xc = _centred(X)
    norms = np.sqrt(_to_numpy((Xc * Xc).sum(1)))
    return _Table(np.asarray(nb.indices), np.asarray(nb.distances)[:, ranks - 1], norms)


def gride(X, range_max: int = 256, neighbors: Neighbors | None = None) -> GrideResult:
    """GRIDE intrinsic dimension (Denti et al. 2022) at scales n1 = 1, 2, 4, ..., n2 = 2 n1.

    Equals DADApy 0.3 `Data(distances=D).return_id_scaling_gride(range_max)` on each cloud of
    X (..., N, d) with its exact duplicate rows dropped. Scales with n2 > range_max or
    n2 >= n_unique are left out (GrideResult.n1 says which are held). `neighbors`: optionally a
    `knn(X, k)` table of the same clouds with k >= the largest n2, reused for clouds without
    duplicate rows (the neighbours of the distinct rows are recomputed otherwise).
    Raises ValueError for a cloud with fewer than 3 distinct points or with NaN/inf values.
    """
    C, lead = _clouds(X)
    if int(range_max) < 2:
        raise ValueError(f"range_max must be >= 2 (the first scale uses n2 = 2), got {range_max}.")
    tables = _split_neighbors(neighbors, len(C))
    rows = [_gride_one(c, int(range_max), _gride_table(c, nb, int(range_max)))
            for c, nb in zip(C, tables)]
    return _stack_gride(rows, lead, int(range_max))

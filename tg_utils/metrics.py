"""Geometry metrics of token point clouds: pure functions of arrays.

A *cloud* is the N token states of one prompt at one layer, an array of shape (N, d). Every
function accepts numpy arrays or torch tensors (any device, any float dtype) and is batched over
leading dimensions: an input of shape (..., N, d) (e.g. prompts x layers x tokens x features)
gives outputs with the same leading shape (...). Results are numpy arrays, or Python floats for a
single cloud; distances are always float64. Definitions follow DESIGN.md, "Metric definitions".

Neighbours are computed once per cloud by `knn` (one float64 Gram product per cloud: a symmetric
rank-k update on CPU, a matmul on an accelerator, then a partial selection); the table is shared by
`gride` and `neighborhood_overlap`, and `layer_profile` does this for a stack of layers. No Python
loop runs over tokens; loops run over clouds, scales or solver steps.

Public API
----------
cosine_similarity_mean(X, include_diagonal=True)      -> float | (...,)
knn(X, k)                                             -> Neighbors(indices, distances), (..., N, k)
gride(X, range_max=256, neighbors=None)               -> GrideResult (ids, errs, rs per scale, ...)
neighborhood_overlap(X_a, X_b, k_max=31, ...)         -> (..., k_max + 1); index k holds chi_k
eigenspectrum(X)                                      -> (..., min(N, d)), descending, sums to 1
rankme(eigs, variant="covariance")                    -> float | (...,)
alpha_req(eigs)                                       -> AlphaReq(alpha, r2, r2_100)
token_convergence(states_t, states_final)             -> (...,): cosine per matching state
layer_profile(X, range_max=256, k_max=31)             -> LayerProfile (ID, chi_k, cosine per layer)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

try:  # the metrics run on numpy alone; torch tensors are accepted when torch is installed
    import torch
except ImportError:  # pragma: no cover - torch is a dependency of the project
    torch = None

__all__ = [
    "Neighbors", "GrideResult", "AlphaReq", "LayerProfile",
    "cosine_similarity_mean", "knn", "gride", "gride_scales", "gride_from_rank_distances",
    "neighborhood_overlap", "overlap_from_indices", "eigenspectrum", "rankme", "alpha_req",
    "token_convergence", "layer_profile",
]

# GRIDE constants of DADApy 0.3 `return_id_scaling_gride`
GRIDE_D0, GRIDE_D1 = 1e-3, 1e3          # search interval of the maximum-likelihood ID
GRIDE_TOL = 1e-7                         # bisection tolerance; 2 GRIDE_TOL floors 1 - mu^-d
_EPS64 = float(np.finfo(np.float64).eps)

# alpha-ReQ windows, 1-based ranks (the Tracing paper's stringer_get_powerlaw(eig, arange(11, 100)))
ALPHA_FIT_RANKS = (12, 100)              # weighted least squares of log(lambda) on log(rank)
ALPHA_R2_FIRST_RANK = 13                 # r2 over ranks 13..500 (or ..n-10), r2_100 over 13..100


# ============================================================================ result types

class Neighbors(NamedTuple):
    """k-nearest-neighbour table of one cloud or of a batch of clouds, self excluded.

    indices:   int64   (..., N, k)  neighbours of point i, by increasing distance
    distances: float64 (..., N, k)  their Euclidean distances
    """
    indices: np.ndarray
    distances: np.ndarray


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


class AlphaReq(NamedTuple):
    """alpha-ReQ: power-law exponent of an eigenspectrum and the quality (R^2) of its fit."""
    alpha: float | np.ndarray
    r2: float | np.ndarray
    r2_100: float | np.ndarray


@dataclass(frozen=True)
class LayerProfile:
    """Per-layer geometry of a stack of clouds X (..., L, N, d).

    gride: GrideResult with ids, errs, rs (..., L, S) and n_unique (..., L)
    chi: float64 (..., L - 1, k_max + 1); chi[..., l, k] = chi_k between layers l and l + 1
    cos_full, cos_offdiag: float64 (..., L): mean cosine with / without the diagonal
    """
    gride: GrideResult
    chi: np.ndarray
    cos_full: np.ndarray
    cos_offdiag: np.ndarray


# ============================================================================ input handling

def _is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _check_finite(x, name: str) -> None:
    ok = bool(torch.isfinite(x).all()) if _is_torch(x) else bool(np.isfinite(x).all())
    if not ok:
        raise ValueError(f"{name} contains NaN or inf values; drop or repair those states (e.g. "
                         "check the extraction dtype for overflow) before computing metrics.")


def _validated(x, name: str):
    """x as a numpy array (or a torch tensor kept on its accelerator), checked to hold finite real
    numbers; its float dtype is kept (clouds are cast to float64 one at a time)."""
    if _is_torch(x):
        x = x.detach()
        if x.device.type == "cpu":
            x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()   # numpy has no bfloat16
    else:
        x = np.asarray(x)
    if _is_torch(x):
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}.")
    elif not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}.")
    _check_finite(x, name)
    return x


def _f64(x):
    """float64 copy of an array or tensor (a no-op for float64 numpy arrays)."""
    return x.to(torch.float64) if _is_torch(x) else np.asarray(x, dtype=np.float64)


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


def _clouds(X, name: str = "X"):
    """Validate a cloud or a stack of clouds: (stack (C, N, d) in X's dtype, leading shape)."""
    X = _validated(X, name)
    if X.ndim < 2 or X.shape[-2] < 1 or X.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., N, d) (tokens x features), "
                         f"got {tuple(X.shape)}.")
    return X.reshape((-1,) + tuple(X.shape[-2:])), tuple(X.shape[:-2])


def _unbatch(values, lead: tuple):
    """Reshape per-cloud results (C, ...) to lead + (...); one cloud's scalar becomes a float."""
    values = np.asarray(values)
    out = values.reshape(lead + values.shape[1:])
    return float(out) if out.ndim == 0 else out


# ============================================================================ cosine similarity

def _cosine_sums(X):
    """For one cloud (N, d): the sum of its N x N cosine matrix and of that matrix's diagonal.

    sum_ij cos_ij = |sum_i u_i|^2 with u_i = x_i / |x_i|; a zero row has cosine 0 with every row
    (as in scikit-learn), so the diagonal sum is the number of non-zero rows.
    """
    X = _to_numpy(_f64(X))
    sq = np.einsum("nd,nd->n", X, X)
    inv = np.divide(1.0, np.sqrt(sq), out=np.zeros_like(sq), where=sq > 0)
    return float((inv @ X) @ (inv @ X)), float((sq > 0).sum())


def _cosine_means(C):
    """(full mean, off-diagonal mean) of the cosine matrices of clouds (C, N, d), (C,) each."""
    n = C.shape[-2]
    total, diag = np.array([_cosine_sums(c) for c in C]).T
    off = (total - diag) / (n * (n - 1)) if n > 1 else np.full(len(total), np.nan)
    return total / n**2, off


def cosine_similarity_mean(X, include_diagonal: bool = True):
    """Mean of the N x N cosine-similarity matrix of each cloud X (..., N, d).

    include_diagonal=True: token_geometry's mean cosine similarity (full matrix, diagonal of ones
    included); False: the Analyzer's off-diagonal mean. The N x N matrix is never formed.
    Returns a float for one cloud, else an array (...).
    """
    C, lead = _clouds(X)
    if not include_diagonal and C.shape[-2] < 2:
        raise ValueError("The off-diagonal mean cosine needs at least 2 tokens per cloud.")
    full, off = _cosine_means(C)
    return _unbatch(full if include_diagonal else off, lead)


# ============================================================================ nearest neighbours

def _sq_dist_scores_numpy(Xc: np.ndarray, block: int = 128):
    """Squared-distance scores of one centred float64 cloud Xc (N, d).

    Returns S (N, N), S[i, j] = |x_j|^2 - 2 x_i.x_j = |x_i - x_j|^2 - |x_i|^2 (each row orders the
    neighbours like the squared distance) with +inf on the diagonal, and |x_i|^2 (N,).
    One BLAS symmetric rank-k update (half a matrix product); the other triangle is then copied
    block by block.
    """
    from scipy.linalg import blas
    S = blas.dsyrk(-2.0, Xc.T, trans=1).T           # C-ordered; lower triangle holds -2 x_i.x_j
    sq = S.diagonal() * -0.5
    n = len(S)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        S[b0:b1, b1:] = S[b1:, b0:b1].T
        diag_block = S[b0:b1, b0:b1]
        diag_block[...] = np.tril(diag_block) + np.tril(diag_block, -1).T
    S += sq[None, :]
    np.fill_diagonal(S, np.inf)
    return S, sq


def _knn_numpy(Xc: np.ndarray, k: int):
    """(indices (N, k), distances (N, k)) of one centred float64 cloud."""
    S, sq = _sq_dist_scores_numpy(Xc)
    part = np.argpartition(S, k - 1, axis=1)[:, :k]                 # the k smallest, unordered
    vals = np.take_along_axis(S, part, axis=1)
    order = np.argsort(vals, axis=1)
    d2 = np.take_along_axis(vals, order, axis=1)
    d2 += sq[:, None]
    return np.take_along_axis(part, order, axis=1), np.sqrt(np.maximum(d2, 0.0, out=d2))


def _knn_torch(Xc, k: int):
    """Same as _knn_numpy for a float64 tensor (used on accelerators): matmul and topk."""
    G = Xc @ Xc.T
    sq = torch.diagonal(G).clone()
    S = sq[None, :] - 2.0 * G
    S.fill_diagonal_(float("inf"))
    vals, idx = torch.topk(S, k, dim=1, largest=False, sorted=True)
    d = torch.sqrt(torch.clamp(vals + sq[:, None], min=0.0))
    return idx.cpu().numpy(), d.cpu().numpy()


def _knn_one(X, k: int):
    """kNN table of one float64 cloud (N, d). The cloud is centred first: distances do not change
    and the Gram formula |x|^2 + |y|^2 - 2 x.y loses less precision."""
    X = _f64(X)
    if _is_torch(X):
        return _knn_torch(X - X.mean(0, keepdim=True), k)
    return _knn_numpy(X - X.mean(0, keepdims=True), k)


def _check_k(k: int, n: int, what: str = "k") -> None:
    if not 1 <= k <= n - 1:
        raise ValueError(f"{what}={k} neighbours need 1 <= {what} <= N - 1 = {n - 1}; use a "
                         f"smaller {what} or clouds with more tokens.")


def knn(X, k: int) -> Neighbors:
    """k-nearest-neighbour table of each cloud X (..., N, d), self excluded, sorted by distance.

    Distances are float64 Euclidean (Gram formula on the centred cloud: one product per cloud).
    Exact ties (duplicate points) come in an arbitrary but deterministic order.
    Returns Neighbors(indices (..., N, k) int64, distances (..., N, k) float64).
    """
    C, lead = _clouds(X)
    _check_k(k, C.shape[-2])
    tables = [_knn_one(c, k) for c in C]
    idx = np.stack([t[0] for t in tables]).astype(np.int64, copy=False)
    dist = np.stack([t[1] for t in tables])
    return Neighbors(idx.reshape(lead + idx.shape[1:]), dist.reshape(lead + dist.shape[1:]))


# ============================================================================ GRIDE

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
    maximum-likelihood ID is its root. mus, keep: (N, S); n1, n2, d: (S,).
    """

    def __init__(self, mus, keep, n1, n2):
        self.log_mu = np.log(mus)
        self.w_log = np.where(keep, self.log_mu, 0.0)              # log mu of the kept points
        self.n_kept = keep.sum(0)
        self.sum_log = self.w_log.sum(0)
        self.n1, self.n2 = n1, n2

    def __call__(self, d, with_slope: bool = False):
        mu_pow = np.exp(-d * self.log_mu)
        one_m = np.maximum(1.0 - mu_pow, 2 * GRIDE_TOL)
        f = ((1 - self.n2 + self.n1) * (self.w_log / one_m).sum(0)
             + (self.n2 - 1) * self.sum_log - (self.n_kept - 1) / d)
        if not with_slope:
            return f
        free = 1.0 - mu_pow > 2 * GRIDE_TOL                         # not at the floor
        slope = np.where(free, self.w_log * self.log_mu * mu_pow / one_m**2, 0.0).sum(0)
        return f, (self.n2 - self.n1 - 1) * slope + (self.n_kept - 1) / d**2


def _gride_root(f: _GrideDerivative, n_scales: int, max_iter: int = 60):
    """Root of the increasing f per scale by Newton's method on t = log d (to ~1e-14 in t), within
    [GRIDE_D0, GRIDE_D1] (an end of it when f does not change sign there). Also returns
    f(GRIDE_D1), whose sign steers DADApy's bisection."""
    f_lo = f(np.full(n_scales, GRIDE_D0))
    f_hi = f(np.full(n_scales, GRIDE_D1))
    inside = (f_lo < 0) & (f_hi > 0)
    t_lo, t_hi = math.log(GRIDE_D0), math.log(GRIDE_D1)
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = (f.n_kept - 1) / (f.n1 * f.sum_log)                 # the large-d asymptote
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
    f(mid) f(GRIDE_D1) > 0. As f increases, sign f(mid) = sign(mid - root): the root replays it."""
    d0, d1 = np.full(root.shape, GRIDE_D0), np.full(root.shape, GRIDE_D1)
    active = np.abs(d0 - d1) > GRIDE_TOL
    while active.any():
        d2 = (d0 + d1) / 2.0
        same_sign = np.where(f_hi > 0, d2 > root, np.where(f_hi < 0, d2 < root, False))
        d1 = np.where(active & same_sign, d2, d1)
        d0 = np.where(active & ~same_sign, d2, d0)
        active = np.abs(d0 - d1) > GRIDE_TOL
    return (d0 + d1) / 2.0


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


def _surely_distinct(X, neighbors: Neighbors | None) -> bool:
    """True when a kNN table of X shows no duplicate rows: each point's nearest-neighbour distance
    is above 1e-5 |x_i - mean|, beyond the round-off a duplicate pair gets from the Gram formula
    on the centred cloud (at most ~sqrt(3 d eps) |x_i - mean| < 3e-6 |x_i - mean| for d <= 10^4).
    False means "maybe": the exact row comparison decides."""
    if neighbors is None or neighbors.distances.shape[-2] != X.shape[0]:
        return False
    Xc = X - X.mean(0)
    norms = _to_numpy((Xc * Xc).sum(1)) ** 0.5
    return bool(np.all(np.asarray(neighbors.distances)[:, 0] > 1e-5 * norms))


def _gride_one(X, range_max: int, neighbors: Neighbors | None):
    """GRIDE of one validated float64 cloud (N, d): (ids, errs, rs, n_unique)."""
    n = X.shape[0]
    first = None if _surely_distinct(X, neighbors) else _first_occurrences(X)
    n_unique = n if first is None else len(first)
    if n_unique < 3:
        raise ValueError(f"GRIDE needs at least 3 distinct points; this cloud has {n_unique} "
                         f"distinct rows out of {n}. Skip it or use a longer prompt.")
    n1 = gride_scales(n_unique, range_max)
    max_rank = int(2 * n1[-1])
    if (neighbors is not None and n_unique == n and neighbors.distances.shape[-2] == n
            and neighbors.distances.shape[-1] >= max_rank):
        dist = np.asarray(neighbors.distances)
    elif n_unique == n:
        dist = _knn_one(X, max_rank)[1]
    else:
        keep = torch.as_tensor(first, device=X.device) if _is_torch(X) else first
        dist = _knn_one(X[keep], max_rank)[1]
    ranks = np.concatenate([n1, [max_rank]])                        # 1, 2, 4, ..., 2^S
    ids, errs, rs = gride_from_rank_distances(dist[:, ranks - 1])
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
    rows = [_gride_one(_f64(c), int(range_max), nb) for c, nb in zip(C, tables)]
    return _stack_gride(rows, lead, int(range_max))


# ============================================================================ neighbourhood overlap

def overlap_from_indices(idx_a, idx_b, k_max: int = 31) -> np.ndarray:
    """chi_k, k = 0..k_max, from two sorted neighbour-index tables (..., N, >= k_max).

    chi_k = mean over points of |kNN_a(i) ∩ kNN_b(i)| / k. A neighbour at position p of row i in
    table a and q in table b is in both top-k sets iff max(p, q) < k, so one table lookup per
    neighbour serves every k. Returns float64 (..., k_max + 1), index 0 = 0.
    """
    A = np.asarray(idx_a)[..., :k_max]
    B = np.asarray(idx_b)[..., :k_max]
    if A.shape != B.shape or A.shape[-1] < k_max:
        raise ValueError(f"Neighbour tables must have equal shapes with >= k_max={k_max} columns, "
                         f"got {np.shape(idx_a)} and {np.shape(idx_b)}.")
    lead, n = A.shape[:-2], A.shape[-2]
    A, B = A.reshape(-1, n, k_max), B.reshape(-1, n, k_max)
    rows = np.arange(n)[:, None]
    n_points = max(n, int(A.max(initial=0)) + 1, int(B.max(initial=0)) + 1)
    position_in_b = np.full((n, n_points), k_max, dtype=np.int16 if k_max < 2**15 else np.int64)
    shared = np.zeros((len(A), k_max + 1), dtype=np.int64)
    for m in range(len(A)):                                         # one pair of clouds at a time
        position_in_b[rows, B[m]] = np.arange(k_max)                # k_max: not among b's
        # neighbour p of row i in a is in both top-k sets for every k > max(p, its place in b)
        first_k = np.maximum(np.arange(k_max), position_in_b[rows, A[m]])
        position_in_b[rows, B[m]] = k_max
        shared[m] = np.bincount(first_k.ravel(), minlength=k_max + 1)
    chi = np.zeros((len(A), k_max + 1))
    chi[:, 1:] = np.cumsum(shared[:, :k_max], -1) / (n * np.arange(1, k_max + 1))
    return chi.reshape(lead + (k_max + 1,))


def neighborhood_overlap(X_a, X_b, k_max: int = 31, neighbors_a: Neighbors | None = None,
                         neighbors_b: Neighbors | None = None) -> np.ndarray:
    """Neighbourhood overlap chi_k between two representations of the same tokens.

    X_a (..., N, d_a), X_b (..., N, d_b): equal leading shape and N (e.g. layers l and l + 1; the
    feature sizes may differ). chi_k = mean over tokens of |kNN_a(i) ∩ kNN_b(i)| / k, self
    excluded, float64 distances, k = 1..k_max. Precomputed `knn` tables (k >= k_max) of the same
    clouds may be passed. Returns float64 (..., k_max + 1), index k holding chi_k (index 0 is 0).
    """
    A, lead_a = _clouds(X_a, "X_a")
    B, lead_b = _clouds(X_b, "X_b")
    if lead_a + A.shape[-2:-1] != lead_b + B.shape[-2:-1]:
        raise ValueError(f"X_a {tuple(X_a.shape)} and X_b {tuple(X_b.shape)} must hold the same "
                         "tokens: their shapes must agree except in the last (feature) axis.")
    _check_k(k_max, A.shape[-2], "k_max")
    ia = knn(A, k_max).indices if neighbors_a is None else np.asarray(neighbors_a.indices)
    ib = knn(B, k_max).indices if neighbors_b is None else np.asarray(neighbors_b.indices)
    chi = overlap_from_indices(ia.reshape(A.shape[:2] + ia.shape[-1:]),
                               ib.reshape(B.shape[:2] + ib.shape[-1:]), k_max)
    return chi.reshape(lead_a + (k_max + 1,))


# ============================================================================ eigenspectrum

def _covariance_eigenvalues(X) -> np.ndarray:
    """Eigenvalues (descending, >= 0) of X_c^T X_c for one cloud X (N, d), X_c = X centred;
    min(N, d) of them, from the d x d matrix or the N x N Gram matrix when N < d."""
    X = _f64(X)
    n, d = X.shape
    if _is_torch(X):
        Xc = X - X.mean(0, keepdim=True)
        lam = torch.linalg.eigvalsh(Xc.T @ Xc if n >= d else Xc @ Xc.T).flip(-1).cpu().numpy()
    else:
        Xc = X - X.mean(0, keepdims=True)
        lam = np.linalg.eigvalsh(Xc.T @ Xc if n >= d else Xc @ Xc.T)[::-1]
    return np.maximum(lam, 0.0)                                     # round-off below zero


def eigenspectrum(X) -> np.ndarray:
    """Covariance eigenvalues of each centred cloud X (..., N, d), normalised to sum 1, descending:
    float64 (..., min(N, d)), i.e. scikit-learn PCA's explained_variance_ratio_."""
    C, lead = _clouds(X)
    lam = np.stack([_covariance_eigenvalues(c) for c in C])
    total = lam.sum(-1, keepdims=True)
    if np.any(total == 0):
        raise ValueError("A cloud has zero variance (all its tokens are identical); its "
                         "eigenspectrum is undefined.")
    return (lam / total).reshape(lead + lam.shape[-1:])


def _spectra(eigs) -> np.ndarray:
    e = _to_numpy(_f64(_validated(eigs, "eigs")))
    if e.ndim < 1 or e.shape[-1] < 1:
        raise ValueError(f"eigs must have shape (..., n) with n >= 1, got {e.shape}.")
    return e


def rankme(eigs, variant: str = "covariance"):
    """RankMe effective rank exp(-sum p log p) of eigenspectra eigs (..., n).

    variant="covariance" (default; the Tracing paper): p = lambda / sum|lambda| + 1e-7 on the
    covariance eigenvalues. variant="singular" (the original RankMe paper, Garrido et al. 2023):
    the same on the singular values sigma = sqrt(lambda). Returns a float or (...).
    """
    e = _spectra(eigs)
    if variant == "singular":
        e = np.sqrt(np.maximum(e, 0.0))
    elif variant != "covariance":
        raise ValueError(f"variant must be 'covariance' or 'singular', got {variant!r}.")
    p = e / np.abs(e).sum(-1, keepdims=True) + 1e-7
    out = np.exp(-(p * np.log(p)).sum(-1))
    return float(out) if out.ndim == 0 else out


def _r2(y, y_fit, mask):
    """Coefficient of determination of y_fit for y over the masked entries of the last axis."""
    n = mask.sum(-1)
    mean = np.where(mask, y, 0.0).sum(-1) / n
    ss_res = np.where(mask, (y - y_fit) ** 2, 0.0).sum(-1)
    ss_tot = np.where(mask, (y - mean[..., None]) ** 2, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - ss_res / ss_tot


def alpha_req(eigs) -> AlphaReq:
    """alpha-ReQ (Agrawal et al. 2022): power-law exponent of eigenspectra eigs (..., n), descending.

    As the Tracing paper's `stringer_get_powerlaw(eig, np.arange(11, 100))`: weighted least
    squares of log(lambda_r) on [-log r, 1] over ranks r = 12..100 with weights 1/r (rounded to
    float32, as there); alpha is the slope. r2: R^2 of the fitted line over ranks 13..500
    (13..n-10 when n < 512); r2_100: over ranks 13..100. Eigenvalues <= 0 (a rank-deficient tail)
    are left out, and with fewer than 100 positive ones the windows end at the last of them (an
    empty r2 window gives NaN). Returns AlphaReq(alpha, r2, r2_100), floats or (...) arrays.
    """
    e = _spectra(eigs)
    lead = e.shape[:-1]
    e = e.reshape(-1, e.shape[-1])
    if np.any(np.diff(e, axis=-1) > 0):
        raise ValueError("alpha_req needs eigenvalues in descending order (as eigenspectrum "
                         "returns them); sort them with np.sort(eigs)[..., ::-1].")
    n_pos = (e > 0).sum(-1)                                        # positive ones lead (descending)
    if n_pos.min() < ALPHA_R2_FIRST_RANK + 1:
        raise ValueError(f"alpha-ReQ needs at least {ALPHA_R2_FIRST_RANK + 1} positive eigenvalues "
                         f"(its fit starts at rank {ALPHA_FIT_RANKS[0]}), got {int(n_pos.min())}; "
                         "use clouds with more tokens and features.")
    rank = np.arange(1, e.shape[-1] + 1)
    valid = rank <= n_pos[:, None]
    with np.errstate(divide="ignore"):
        logs = np.where(valid, np.log(np.abs(e)), 0.0)
    fit = valid & (rank >= ALPHA_FIT_RANKS[0]) & (rank <= ALPHA_FIT_RANKS[1])
    w = np.where(fit, (1.0 / rank.astype(np.float32)).astype(np.float64), 0.0)     # (C, n)
    x = np.stack([-np.log(rank), np.ones(len(rank))], -1)                         # (n, 2)
    lhs = np.einsum("cn,ni,nj->cij", w, x, x)
    rhs = np.einsum("cn,ni,cn->ci", w, x, logs)
    b = np.linalg.solve(lhs, rhs[..., None])[..., 0]                              # (C, 2)
    log_fit = b[:, :1] * x[:, 0] + b[:, 1:]
    last = np.where(n_pos >= 512, 500, n_pos - 10)[:, None]
    from_13 = valid & (rank >= ALPHA_R2_FIRST_RANK)
    r2 = _r2(logs, log_fit, from_13 & (rank <= last))
    r2_100 = _r2(logs, log_fit, from_13 & (rank <= 100))
    out = [v.reshape(lead) for v in (b[:, 0], r2, r2_100)]
    return AlphaReq(*[float(v) if v.ndim == 0 else v for v in out])


# ============================================================================ token convergence

def token_convergence(states_t, states_final):
    """Cosine between matching states: states_t and states_final of the same shape (..., d), e.g.
    a word's last-token state at checkpoint t and at the final checkpoint, (n_words, L, d) ->
    (n_words, L), one cosine per word per layer. Average within word groups (by token count) with
    `tg_utils.stats.mean_ci`. A zero vector has cosine 0 with everything.
    """
    a = _to_numpy(_f64(_validated(states_t, "states_t")))
    b = _to_numpy(_f64(_validated(states_final, "states_final")))
    if a.shape != b.shape or a.ndim < 1:
        raise ValueError(f"states_t {a.shape} and states_final {b.shape} must have the same shape "
                         "(..., d): one state per word (and layer) in both.")
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    denom = na * nb
    cos = np.divide(np.einsum("...d,...d->...", a, b), denom, out=np.zeros_like(denom),
                    where=denom > 0)
    return float(cos) if cos.ndim == 0 else cos


# ============================================================================ per-layer profile

def layer_profile(X, range_max: int = 256, k_max: int = 31) -> LayerProfile:
    """ID at every scale, chi_k between consecutive layers and mean cosine of a stack of layers.

    X: (..., L, N, d), e.g. one prompt's token states at every layer. One kNN table per cloud
    (k = max(largest GRIDE n2, k_max)) serves both GRIDE and the neighbourhood overlap.
    """
    C, lead = _clouds(X)
    if len(lead) < 1:
        raise ValueError(f"layer_profile needs X of shape (..., L, N, d), got {tuple(X.shape)}.")
    n = C.shape[-2]
    _check_k(k_max, n, "k_max")
    scales = gride_scales(n, range_max)
    k = min(max(2 * int(scales[-1]) if len(scales) else 2, k_max), n - 1)
    idx = np.empty((len(C), n, k_max), dtype=np.int64)
    rows = []
    for c_i, c in enumerate(C):
        c = _f64(c)
        nb = Neighbors(*_knn_one(c, k))
        idx[c_i] = nb.indices[:, :k_max]
        rows.append(_gride_one(c, int(range_max), nb))
    L = lead[-1]
    idx = idx.reshape((-1, L, n, k_max))
    chi = overlap_from_indices(idx[:, :-1], idx[:, 1:], k_max).reshape(lead[:-1] + (L - 1, k_max + 1))
    cos_full, cos_off = _cosine_means(C)
    return LayerProfile(_stack_gride(rows, lead, int(range_max)), chi,
                        cos_full.reshape(lead), cos_off.reshape(lead))

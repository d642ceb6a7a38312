"""Geometry metrics of token point clouds: pure functions of arrays.

A *cloud* is the N token states of one prompt at one layer, an array of shape (N, d). Every
function accepts numpy arrays or torch tensors (any device, any float dtype) and is batched over
leading dimensions: an input of shape (..., N, d) (e.g. prompts x layers x tokens x features)
gives outputs with the same leading shape (...). Results are numpy arrays, or Python floats for a
single cloud; distances are always float64. Definitions follow DESIGN.md, "Metric definitions".

Neighbours are computed once per cloud and shared by GRIDE and the neighbourhood overlap
(`layer_profile` does this for a stack of layers): on CPU a float32 score matrix (a symmetric
rank-k update) selects the candidates, a rigorous error bound tells where the float32 order is
certain, and the float64 distances that matter are recomputed, so the results equal the float64
ones (see "nearest neighbours" below); `knn` returns the full float64 table; on an accelerator, a
float64 matmul and topk. No Python loop runs over tokens; loops run over clouds, blocks of rows,
scales or solver steps.

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

import contextlib
import functools

import math
import warnings
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
    if _is_torch(x):
        ok = bool(torch.isfinite(x).all())
    else:        # min and max carry any NaN or inf, without a boolean array as large as x
        ok = x.size == 0 or bool(np.isfinite(x.min()) and np.isfinite(x.max()))
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
    u = inv @ X                                                     # sum_i u_i
    return float(u @ u), float((sq > 0).sum())


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
#
# Neighbours of a cloud come from a score matrix S[i, j] = |x_j|^2 - 2 x_i.x_j = |x_i - x_j|^2
# - |x_i|^2 (a row orders the neighbours of x_i like their squared distances) by partial
# selections, never a full sort of a row. What the metrics need of a cloud is a `_Table`: the
# k_max nearest indices (neighbourhood overlap) and the distances at a few ranks (GRIDE's 1, 2, 4,
# ..., 256), with exact ties (duplicate points) in index order. Two ways give the same table:
#
# float64 (`_table_f64`; `knn` too): the float64 score matrix; a partition of each row puts its
#   r_max smallest values first and only those are sorted (values: ties do not matter); the k_max
#   nearest are the entries <= the k_max-th smallest value, ordered by (score, index).
#
# float32 selection, float64 values (`_table_f32`, the default on CPU; half the product's cost):
#   1. the float32 score matrix of the cloud scaled by a power of two; the K = r_max + margin
#      smallest scores of each row, ordered;
#   2. a rigorous bound E_i on the error of row i's float32 scores (`_f32_score_error`) tells
#      where their order is certain: a "break" after position p when the float32 gap to the next
#      candidate exceeds 2 E_i and every non-candidate is certainly farther. Positions between
#      breaks form a cluster whose set of points is certain, not its order;
#   3. a row without a break at or after position r_max (a non-candidate might belong to its r_max
#      nearest) is done in float64 (its row of the float64 score matrix);
#   4. the float64 squared distances |x_i|^2 + |x_j|^2 - 2 x_i.x_j of the pairs at the wanted
#      ranks and of every cluster that holds an uncertain wanted position (10-13 pairs per row on
#      SmolLM2 clouds) are computed directly (a sampled product), and those clusters are
#      re-sorted by them (then by index).
#   Float32 rounding thus never decides a neighbour's place, and every distance is float64.

_SELECTION_BLOCK = 2**17                 # score entries per block of rows (1 MB in float64)
_U32 = 2.0 ** -24                        # unit round-off of float32


def _scores(X: np.ndarray, sq: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Score matrix of one centred cloud X (N, d) in X's dtype: S[i, j] = sq_j - 2 x_i.x_j with
    sq = |x_j|^2 (N,), +inf at the point itself; (N, N), or (len(rows), N) for some rows.
    numpy evaluates X @ X.T as a symmetric rank-k update (half a matrix product)."""
    if rows is None:
        S = X @ X.T
        rows = np.arange(len(X))
    else:
        S = X[rows] @ X.T
    S *= -2
    S += sq[None, :]
    S[np.arange(len(rows)), rows] = np.inf
    return S


def _smallest_sorted(S: np.ndarray, r: int) -> np.ndarray:
    """The r smallest values of every row of S (n, N), ascending: (n, r). A partition of each row,
    then a sort of its first r values only."""
    if r >= S.shape[1]:
        return np.sort(S, axis=1)
    return np.sort(np.partition(S, r - 1, axis=1)[:, :r], axis=1)


def _k_nearest(S: np.ndarray, k: int, kth_value: np.ndarray | None = None):
    """Columns of the k smallest entries of every row of S (n, N) and their values, both (n, k),
    ordered by (value, column index).

    kth_value (n,): the k-th smallest value of each row, when already known. The entries <= it are
    exactly the k wanted ones unless it repeats past position k (exact ties); such rows are
    ordered by a stable sort of the whole row, which keeps the lowest indices.
    """
    n, N = S.shape
    if kth_value is None:
        kth_value = np.partition(S, k - 1, axis=1)[:, k - 1]
    below = S <= kth_value[:, None]                                 # (n, N), >= k per row
    flat = np.flatnonzero(below)                                    # row-major: ascending columns
    if len(flat) == n * k:
        cols = flat.reshape(n, k) - (np.arange(n) * N)[:, None]
    else:                                                           # rows with more than k
        tied = below.sum(1) > k
        below[tied] = False
        cols = np.empty((n, k), dtype=np.int64)
        cols[~tied] = (np.flatnonzero(below) % N).reshape(-1, k)
        cols[tied] = np.argsort(S[tied], axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(S, cols, axis=1)
    order = np.argsort(vals, axis=1, kind="stable")                 # equal values keep index order
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _table_f64(Xc: np.ndarray, sq: np.ndarray, n_index: int, ranks: np.ndarray):
    """(indices (N, n_index), squared distances at `ranks` (N, R)) from the float64 scores."""
    S = _scores(Xc, sq)
    n, r_max = len(S), max(n_index, int(ranks.max(initial=0)))
    idx, d2 = np.empty((n, n_index), dtype=np.int64), np.empty((n, len(ranks)))
    block = max(1, _SELECTION_BLOCK // n)
    for b0 in range(0, n, block):                                   # blocks of rows: temporaries
        rows = slice(b0, b0 + block)                                # stay small and in cache
        smallest = _smallest_sorted(S[rows], r_max)                 # (block, r_max), ascending
        d2[rows] = smallest[:, ranks - 1]
        if n_index:
            idx[rows] = _k_nearest(S[rows], n_index, kth_value=smallest[:, n_index - 1])[0]
    return idx, d2 + sq[:, None]


def _f32_scores(Xc: np.ndarray, sq: np.ndarray):
    """float32 score matrix (N, N) of a centred float64 cloud Xc (N, d) scaled by a power of two
    (exactly) to max |x_ik| in [1/2, 1), and the scaled norms |x_i| (N,) in float64."""
    scale = 2.0 ** -np.frexp(max(Xc.max(), -Xc.min()))[1]
    norms = np.sqrt(sq) * scale
    X32 = np.multiply(Xc, scale, out=np.empty(Xc.shape, np.float32), casting="same_kind")
    return _scores(X32, (norms**2).astype(np.float32)), norms


def _f32_score_error(d: int):
    """Bound on |S32_ij - S_ij| for the float32 scores of a cloud scaled so that |x_ik| < 1, as a
    function of |x_i| and |x_j|: c_cross |x_i||x_j| + c_sq |x_j|^2 + c_abs.

    Rounding the coordinates to float32 moves x_i.x_j by <= (2u + u^2)|x_i||x_j| (u = 2^-24), the
    float32 dot product of d terms by <= gamma_d |x_i||x_j| (gamma_d = d u / (1 - d u), any
    summation order, with or without FMA), rounding |x_j|^2 by <= u |x_j|^2 and the final sum by
    <= u (|x_j|^2 + 2|x_i||x_j|): in all (2 gamma_d + 6u)|x_i||x_j| + 2u |x_j|^2, rounded up to
    cover second-order terms and the float64 arithmetic of the bound. c_abs covers underflow
    (below 2^-149 in float32; a few units of 2^-150 per term).
    """
    gamma = d * _U32 / (1 - d * _U32)
    c_cross, c_sq, c_abs = 2 * gamma + 8 * _U32, 3 * _U32, d * 2.0 ** -140
    return lambda norm_i, norm_j: c_cross * norm_i * norm_j + c_sq * norm_j**2 + c_abs


def _f32_order_keys(vals: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """int64 keys that sort like (vals, cols), for float32 vals (no NaN) and columns < 2^31: the
    float32 bits as an int32 of the same order in the high half, the column in the low half."""
    bits = vals.view(np.int32)
    return ((bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64) << 32) | cols


def _k_smallest_f32(S: np.ndarray, k: int):
    """Columns (n, k) of the k smallest entries of each row of a float32 matrix S (n, N), ordered
    by (value, column), and those values. As _k_nearest, with one sort of packed int64 keys."""
    n, N = S.shape
    below = S <= np.partition(S, k - 1, axis=1)[:, k - 1:k]         # (n, N), >= k per row
    tied = np.zeros(n, dtype=bool)
    flat = np.flatnonzero(below)                                    # row-major: ascending columns
    if len(flat) > n * k:                                           # the k-th value repeats
        tied = np.bincount(flat // N, minlength=n) > k
        below[tied] = False
        flat = np.flatnonzero(below)
    keys = np.empty((n, k), dtype=np.int64)
    rows = np.flatnonzero(~tied)
    keys[rows] = _f32_order_keys(S.ravel()[flat].reshape(-1, k),
                                 flat.reshape(-1, k) - (rows * N)[:, None])
    if tied.any():
        keys[tied] = np.sort(_f32_order_keys(S[tied], np.arange(N)), axis=1)[:, :k]
    keys.sort(axis=1)
    bits = (keys >> 32).astype(np.int32)
    return keys & 0xFFFFFFFF, (bits ^ ((bits >> 31) & 0x7FFFFFFF)).view(np.float32)


def _f32_candidates(S: np.ndarray, norms: np.ndarray, K: int, d: int):
    """The K smallest float32 scores of each row of S (N, N) (from `_f32_scores`, norms (N,)),
    and where their order is certain.

    Returns cand (N, K) int64, ordered by float32 score, and brk (N, K) bool: brk[i, p] when
    candidates 0..p of row i are certainly nearer (whatever the float32 rounding) than every later
    candidate and every non-candidate. With E_i the error bound of row i's candidates (that of
    the largest one), a break needs a float32 gap > 2 E_i to the next candidate and a margin over
    the non-candidates (float32 score >= the K-th; the 16 largest points are bounded one by one, so
    that a few huge states, e.g. a massive first token, do not loosen the bound of the others).
    """
    n = len(S)
    err = _f32_score_error(d)
    by_norm = np.argsort(norms)
    big, rest = by_norm[-16:], (norms[by_norm[-17]] if n > 16 else 0.0)
    cand = np.empty((n, K), dtype=np.int64)
    brk = np.empty((n, K), dtype=bool)
    block = max(1, 2 * _SELECTION_BLOCK // n)
    for b0 in range(0, n, block):                                   # blocks of rows
        rows = slice(b0, b0 + block)
        cand[rows], v = _k_smallest_f32(S[rows], K)                 # (b, K), ascending
        v = v.astype(np.float64)
        norm_i = norms[rows, None]                                  # (b, 1)
        E = err(norm_i, norms[cand[rows]].max(1, keepdims=True))    # (b, 1)
        if K < n - 1:                                               # lower bound of non-candidates
            S_big = S[rows, big].astype(np.float64)                 # (b, 16)
            S_big = np.where(S_big >= v[:, -1:], S_big - err(norm_i, norms[big]), np.inf)
            beyond = np.minimum(v[:, -1:] - err(norm_i, rest), S_big.min(1, keepdims=True))
        else:                                                       # every other point is one
            beyond = np.full_like(E, np.inf)
        brk[rows, :-1] = (np.diff(v, axis=1) > 2 * E) & (v[:, :-1] + E < beyond)
        brk[rows, -1] = (v[:, -1:] + E < beyond)[:, 0]
    return cand, brk


def _f64_rows(Xc: np.ndarray, sq: np.ndarray, cand: np.ndarray, brk: np.ndarray, r_max: int):
    """Rows of cand, brk (N, K) without a break at or after position r_max (a non-candidate might
    be among their r_max nearest) get their r_max nearest from their row of the float64 score
    matrix, in order (every break set). In place; returns those rows."""
    unsure = np.flatnonzero(~brk[:, r_max - 1:].any(1))
    if len(unsure):
        cand[unsure, :r_max] = _k_nearest(_scores(Xc, sq, unsure), r_max)[0]
        brk[unsure] = True
    return unsure


def _pair_dots(X: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 dot products x_rows[p] . x_cols[p] (P,) of pairs of rows of X (N, d).

    torch's sampled dense-dense product computes them straight from the rows of X (one dot per
    pair; ~6x faster than gathering the rows with numpy, the fallback without torch).
    """
    if torch is None:                                               # pragma: no cover
        return np.einsum("pd,pd->p", X[rows], X[cols])
    n = len(X)
    order = np.argsort(rows * n + cols)                             # CSR: by row, then column
    crow = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    Xt = torch.from_numpy(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)                # "CSR support is in beta"
        pattern = torch.sparse_csr_tensor(
            torch.from_numpy(crow), torch.from_numpy(cols[order]),
            torch.ones(len(rows), dtype=Xt.dtype), size=(n, n), check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, Xt, Xt.T, beta=0.0).values().numpy()
    out = np.empty(len(rows))
    out[order] = dots
    return out


def _f64_resolve(Xc: np.ndarray, sq: np.ndarray, cand: np.ndarray, brk: np.ndarray,
                 n_index: int, ranks: np.ndarray):
    """float64 squared distances of the pairs at the wanted ranks and of every cluster (positions
    between breaks) holding an uncertain wanted position; such clusters are re-sorted by them,
    then by index. cand, brk (N, K) as from `_f32_candidates` (cand is reordered in place).
    Returns (indices (N, n_index), squared distances at `ranks` (N, R))."""
    n, K = cand.shape
    wanted = np.zeros(K, dtype=bool)                                # positions the metrics use
    wanted[:n_index] = True
    wanted[ranks - 1] = True
    alone = brk.copy()                                              # breaks on both sides
    alone[:, 1:] &= brk[:, :-1]
    cluster = np.cumsum(brk, axis=1) - brk + (np.arange(n) * K)[:, None]    # ids grow along rows
    redo = np.zeros(n * K, dtype=bool)
    redo[cluster[~alone & wanted]] = True
    redo = redo[cluster]                                            # (N, K)
    redo[:, ranks - 1] = True
    flat = np.flatnonzero(redo)                                     # (P,): by row, then position
    r, p = np.divmod(flat, K)
    c = cand.ravel()[flat]
    d2 = sq[r] + sq[c] - 2.0 * _pair_dots(Xc, r, c)                 # (P,) float64
    g = np.flatnonzero(~alone.ravel()[flat])                        # in uncertain clusters
    order = g[np.lexsort((c[g], d2[g], cluster.ravel()[flat[g]]))]  # each cluster in its places
    c[g], d2[g] = c[order], d2[order]
    np.put(cand, flat[g], c[g])
    rank_column = np.full(K, -1)
    rank_column[ranks - 1] = np.arange(len(ranks))
    at_rank = rank_column[p] >= 0
    out = np.empty((n, len(ranks)))
    out[r[at_rank], rank_column[p[at_rank]]] = d2[at_rank]
    return cand[:, :n_index], out


def _f32_candidate_count(n: int, r_max: int, margin: int | None = None) -> int:
    """K, the float32 candidates per row: r_max + margin (default max(8, r_max / 16)), < n."""
    return min(n - 1, r_max + (max(8, r_max // 16) if margin is None else margin))


def _table_f32(Xc: np.ndarray, sq: np.ndarray, n_index: int, ranks: np.ndarray,
               margin: int | None = None):
    """(indices (N, n_index), squared distances at `ranks` (N, R)) by float32 selection and
    float64 recomputation (see the notes above); margin: see `_f32_candidate_count`."""
    r_max = max(n_index, int(ranks.max(initial=0)))
    S, norms = _f32_scores(Xc, sq)                                  # 1.
    cand, brk = _f32_candidates(S, norms, _f32_candidate_count(len(Xc), r_max, margin),
                                Xc.shape[1])                        # 1., 2.
    del S
    _f64_rows(Xc, sq, cand, brk, r_max)                             # 3.
    return _f64_resolve(Xc, sq, cand, brk, n_index, ranks)          # 4.


class _Table(NamedTuple):
    """What the metrics use of one cloud's neighbours (self excluded).

    indices:   int64   (N, n_index) the nearest neighbours, by distance (exact ties by index)
    distances: float64 (N, R)       distance to the r-th nearest neighbour, for each wanted rank r
    norms:     float64 (N,)         |x_i - mean|, the scale of the Gram formula's round-off
    """
    indices: np.ndarray
    distances: np.ndarray
    norms: np.ndarray


def _centred(X):
    """Centred float64 copy of one cloud (array or tensor, any float dtype): distances do not
    change, and the Gram formula |x|^2 + |y|^2 - 2 x.y loses less precision."""
    if _is_torch(X):
        X = _f64(X)
        return X - X.mean(0, keepdim=True)
    return np.subtract(X, X.mean(0, dtype=np.float64), dtype=np.float64)


def _neighbor_table(X, n_index: int, ranks, method: str = "auto") -> _Table:
    """The n_index nearest-neighbour indices and the distances at the 1-based ranks `ranks` (e.g.
    GRIDE's 1, 2, 4, ..., 256) of one cloud X (N, d).

    method: "float32" (float32 selection, float64 distances), "float64" (float64 score matrix) or
    "auto": float32 for numpy clouds of up to 2^14 features (its error bound grows with d).
    Tensors on an accelerator: a float64 matmul and topk (exact ties in topk's order).
    """
    ranks = np.asarray(ranks, dtype=np.int64).reshape(-1)
    r_max = max(int(n_index), int(ranks.max(initial=0)))
    Xc = _centred(X)
    sq = (Xc * Xc).sum(1)
    norms = np.sqrt(_to_numpy(sq))
    if r_max == 0:
        return _Table(np.empty((len(norms), 0), np.int64), np.empty((len(norms), 0)), norms)
    if _is_torch(Xc):
        idx, dist = _knn_torch(Xc, r_max)
        return _Table(idx[:, :n_index], dist[:, ranks - 1], norms)
    if method == "auto":
        method = "float32" if Xc.shape[1] <= 2**14 else "float64"
    table = _table_f32 if method == "float32" else _table_f64
    idx, d2 = table(Xc, sq, int(n_index), ranks)
    return _Table(idx, np.sqrt(np.maximum(d2, 0.0, out=d2)), norms)


@functools.cache
def _thread_controller():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def _one_thread(C):
    """One BLAS / OpenMP thread while the CPU tables of a stack of clouds are built. Measured on 2
    cores (30 clouds of 1024 x 576, interleaved A/B): 39 ms per cloud against 46 ms with two
    threads, since most of the work (selection, GRIDE) is single-threaded and idle OpenBLAS / OpenMP
    threads spinning between the calls get in its way. Scoped: the caller's settings come back on
    exit. Tensors on an accelerator are left alone."""
    if _is_torch(C) and C.device.type != "cpu":
        return contextlib.nullcontext()
    return _thread_controller().limit(limits=1)


def _knn_numpy(Xc: np.ndarray, k: int):
    """(indices (N, k), distances (N, k)) of one centred float64 cloud, from its float64 scores."""
    sq = (Xc * Xc).sum(1)
    idx, vals = _k_nearest(_scores(Xc, sq), k)
    d2 = vals + sq[:, None]
    return idx, np.sqrt(np.maximum(d2, 0.0, out=d2))


def _knn_torch(Xc, k: int):
    """Same as _knn_numpy for a float64 tensor (used on accelerators): matmul and topk (exact ties
    in topk's order)."""
    G = Xc @ Xc.T
    sq = torch.diagonal(G).clone()
    S = sq[None, :] - 2.0 * G
    S.fill_diagonal_(float("inf"))
    vals, idx = torch.topk(S, k, dim=1, largest=False, sorted=True)
    d = torch.sqrt(torch.clamp(vals + sq[:, None], min=0.0))
    return idx.cpu().numpy(), d.cpu().numpy()


def _knn_one(X, k: int):
    """kNN table (indices (N, k), distances (N, k)) of one cloud (N, d)."""
    Xc = _centred(X)
    return _knn_torch(Xc, k) if _is_torch(Xc) else _knn_numpy(Xc, k)


def _check_k(k: int, n: int, what: str = "k") -> None:
    if not 1 <= k <= n - 1:
        raise ValueError(f"{what}={k} neighbours need 1 <= {what} <= N - 1 = {n - 1}; use a "
                         f"smaller {what} or clouds with more tokens.")


def knn(X, k: int) -> Neighbors:
    """k-nearest-neighbour table of each cloud X (..., N, d), self excluded, sorted by distance.

    Distances are float64 Euclidean (Gram formula on the centred cloud: one float64 product per
    cloud). Exact ties (duplicate points) come in index order (on an accelerator, in torch.topk's
    order). Returns Neighbors(indices (..., N, k) int64, distances (..., N, k) float64).
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


def _nearest_indices(C, k: int) -> np.ndarray:
    """Indices of the k nearest neighbours of every point of clouds C (C, N, d): (C, N, k)."""
    return np.stack([_neighbor_table(c, k, ())[0] for c in C])


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
    ia = _nearest_indices(A, k_max) if neighbors_a is None else np.asarray(neighbors_a.indices)
    ib = _nearest_indices(B, k_max) if neighbors_b is None else np.asarray(neighbors_b.indices)
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

    X: (..., L, N, d), e.g. one prompt's token states at every layer. One score matrix per cloud
    gives both the k_max nearest indices (neighbourhood overlap) and the distances at GRIDE's
    ranks 1, 2, 4, ..., largest n2.
    """
    C, lead = _clouds(X)
    if len(lead) < 1:
        raise ValueError(f"layer_profile needs X of shape (..., L, N, d), got {tuple(X.shape)}.")
    n = C.shape[-2]
    _check_k(k_max, n, "k_max")
    ranks = _gride_ranks(n, int(range_max))                         # for clouds without duplicates
    idx = np.empty((len(C), n, k_max), dtype=np.int64)
    rows = []
    with _one_thread(C):
        for c_i, c in enumerate(C):
            table = _neighbor_table(c, k_max, ranks)
            idx[c_i] = table.indices
            rows.append(_gride_one(c, int(range_max), table if len(ranks) else None))
    L = lead[-1]
    idx = idx.reshape((-1, L, n, k_max))
    chi = overlap_from_indices(idx[:, :-1], idx[:, 1:], k_max).reshape(lead[:-1] + (L - 1, k_max + 1))
    cos_full, cos_off = _cosine_means(C)
    return LayerProfile(_stack_gride(rows, lead, int(range_max)), chi,
                        cos_full.reshape(lead), cos_off.reshape(lead))

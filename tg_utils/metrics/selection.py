"""Neighbour selection of one centred cloud from its score matrix: partial selections in float64,
and the float32 selection with float64 resolution that `knn._neighbor_table` uses on the CPU."""
from __future__ import annotations

import warnings

import numpy as np

from ._arrays import torch      # None without torch: its sampled product then has a numpy fallback

# Neighbours of a cloud come from a score matrix S[i, j] = |x_j|^2 - 2 x_i.x_j = |x_i - x_j|^2
# - |x_i|^2 (a row orders the neighbours of x_i like their squared distances) by partial
# selections, never a full sort of a row. What the metrics need of a cloud is a `knn._Table`: the
# k_max nearest indices (neighbourhood overlap) and the distances at a few ranks (GRIDE's 1, 2, 4,
# ..., 256), with neighbours at equal distance in index order. (Exactly tied neighbours, e.g.
# copies of one point, can still come in another order on another CPU: the BLAS kernel rounds the
# Gram products x_i.x_j differently, so their float64 distances may differ in the last bits.)
# Two ways give the same table:
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

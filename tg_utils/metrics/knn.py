"""Nearest-neighbour tables of token clouds: `knn` (the full float64 table) and the table the
metrics share (`_neighbor_table`: nearest indices and the distances at a few ranks)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import _check_k, _clouds, _f64, _is_torch, _to_numpy, torch
from .selection import _k_nearest, _scores, _table_f32, _table_f64


@dataclass(frozen=True)
class Neighbors:
    """k-nearest-neighbour table of one cloud or of a batch of clouds, self excluded.

    indices:   int64   (..., N, k)  neighbours of point i, by increasing distance (equal
                                    distances by index; see `knn` on exact ties)
    distances: float64 (..., N, k)  their Euclidean distances
    """
    indices: np.ndarray
    distances: np.ndarray


@dataclass(frozen=True)
class _Table:
    """What the metrics use of one cloud's neighbours (self excluded).

    indices:   int64   (N, n_index) the nearest neighbours, by distance (equal distances by index)
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
    Neighbours at equal (computed) distance are ordered by index. The order of exactly tied
    neighbours (copies of one point) may differ between CPUs: BLAS kernels round the Gram
    products differently, so their distances can differ in the last bits; the metric values
    computed from the table stay within their tolerances.
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


def knn(X, k: int) -> Neighbors:
    """k-nearest-neighbour table of each cloud X (..., N, d), self excluded, sorted by distance.

    Distances are float64 Euclidean (Gram formula on the centred cloud: one float64 product per
    cloud). Neighbours at equal distance are ordered by index (on an accelerator, in torch.topk's
    order). The order of exactly tied neighbours (e.g. copies of one point) may differ between
    CPUs: BLAS kernels round the Gram products differently, so distances that are equal in exact
    arithmetic can differ in their last bits; every metric value stays within its tolerance.
    Returns Neighbors(indices (..., N, k) int64, distances (..., N, k) float64).
    """
    C, lead = _clouds(X)
    _check_k(k, C.shape[-2])
    tables = [_knn_one(c, k) for c in C]
    idx = np.stack([t[0] for t in tables]).astype(np.int64, copy=False)
    dist = np.stack([t[1] for t in tables])
    return Neighbors(idx.reshape(lead + idx.shape[1:]), dist.reshape(lead + dist.shape[1:]))

"""Neighbourhood overlap chi_k between two representations of the same tokens."""
from __future__ import annotations

import numpy as np

from ._arrays import _check_k, _clouds
from .knn import Neighbors, _neighbor_table


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
    for name, T in (("idx_a", A), ("idx_b", B)):
        if T.size and (T.min() < 0 or T.max() >= n):
            raise ValueError(f"{name} holds neighbour indices outside 0..{n - 1} (its clouds have {n} points): "
                             f"got {int(T.min())}..{int(T.max())}; pass tables of the same clouds.")
    A, B = A.reshape(-1, n, k_max), B.reshape(-1, n, k_max)
    rows = np.arange(n)[:, None]
    position_in_b = np.full((n, n), k_max, dtype=np.int16 if k_max < 2**15 else np.int64)
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
    return np.stack([_neighbor_table(c, k, ()).indices for c in C])


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

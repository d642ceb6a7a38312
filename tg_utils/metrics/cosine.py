"""Cosine similarity of token clouds: the mean of each cloud's cosine matrix (with or without its
diagonal), and the cosine between matching states (token convergence)."""
from __future__ import annotations

import numpy as np

from ._arrays import _clouds, _f64, _to_numpy, _unbatch, _validated


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


def token_convergence(states_t, states_final):
    """Cosine between matching states: states_t and states_final of the same shape (..., d), e.g.
    a word's last-token state at checkpoint t and at the final checkpoint, (n_words, L, d) ->
    (n_words, L), one cosine per word per layer. Average within word groups (by token count) with
    `tg_utils.metrics.stats.mean_ci`. A zero vector has cosine 0 with everything.
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

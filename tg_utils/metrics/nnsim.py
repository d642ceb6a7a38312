"""Nearest-neighbour difference similarity of token clouds (`nn_sim`, as token_geometry's src/utils.py
computes it): per token, the cosine between x_i - (its nearest neighbour) and x_i - (its second nearest)."""
from __future__ import annotations

import numpy as np

from ._arrays import _clouds, _f64, _one_thread, _to_numpy, _unbatch
from .knn import _neighbor_table


def nn_sim_from_indices(X, indices) -> np.ndarray:
    """nn_sim of one cloud X (N, d) from its nearest-neighbour indices (N, >= 2), self excluded, by
    increasing distance: cos(x_i - x_a, x_i - x_b) with a, b the first two columns, in float64.

    A zero difference vector (a neighbour that is an exact copy of x_i, e.g. a repeated token at the
    embedding output) leaves the angle undefined: NaN for that token. Clipped to [-1, 1].
    """
    X = _to_numpy(_f64(X))
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.shape[0] != len(X) or idx.shape[1] < 2:
        raise ValueError(f"indices must have shape (N, >= 2) = ({len(X)}, >= 2), got {idx.shape}.")
    # token_geometry src/utils.py:43-45: v1 = x_i - x_nn1, v2 = x_i - x_nn2, 1 - scipy cosine distance
    v1 = X - X[idx[:, 0]]
    v2 = X - X[idx[:, 1]]
    n1 = np.sqrt(np.einsum("nd,nd->n", v1, v1))
    n2 = np.sqrt(np.einsum("nd,nd->n", v2, v2))
    dot = np.einsum("nd,nd->n", v1, v2)
    denom = n1 * n2
    out = np.divide(dot, denom, out=np.full(len(X), np.nan), where=denom > 0)
    return np.clip(out, -1.0, 1.0, out=out, where=~np.isnan(out))


def nn_sim(X) -> np.ndarray:
    """Per token, the cosine between the vectors from its nearest and from its second-nearest
    neighbour to it: cos(x_i - x_nn1(i), x_i - x_nn2(i)), neighbours among the other tokens of the
    same cloud by Euclidean distance (float64; equal distances by index).

    X: (..., N, d) with N >= 3. Returns float64 (..., N); NaN where a neighbour is an exact copy of
    the token. Analytic cases: an equilateral triangle gives 0.5 at every point; the points 0, 1, 3
    on a line give 1, -1, 1 (the sign does not depend on whether the vectors point to or from x_i).
    The original (token_geometry src/utils.py:37-46) takes the neighbours as columns 1 and 2 of an
    argsort of float32 distances, so it may differ from this on exact ties only.
    """
    C, lead = _clouds(X)
    if C.shape[-2] < 3:
        raise ValueError(f"nn_sim needs two neighbours per token: clouds of N >= 3 tokens, got N = {C.shape[-2]}.")
    with _one_thread(C):
        out = [nn_sim_from_indices(c, _neighbor_table(c, 2, ()).indices) for c in C]
    return _unbatch(np.stack(out), lead)


def nn_angle(cos) -> np.ndarray:
    """The angle in degrees of nn_sim values (NaN stays NaN): the quantity the original's notebook
    plots (token_geometry results/plots/shuffle_experiment.ipynb: np.degrees(np.arccos(nn_sim)))."""
    return np.degrees(np.arccos(np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)))

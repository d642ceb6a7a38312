"""Per-layer geometry of a stack of clouds in one pass: ID at every GRIDE scale, chi_k between
consecutive layers, the mean cosine and the mean nn_sim, from one neighbour table per cloud."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import _check_k, _clouds, _one_thread
from .cosine import _cosine_means
from .gride import GrideResult, _gride_one, _gride_ranks, _stack_gride
from .knn import _neighbor_table
from .nnsim import nn_angle, nn_sim_from_indices
from .overlap import overlap_from_indices


@dataclass(frozen=True)
class LayerProfile:
    """Per-layer geometry of a stack of clouds X (..., L, N, d).

    gride: GrideResult with ids, errs, rs (..., L, S) and n_unique (..., L)
    chi: float64 (..., L - 1, k_max + 1); chi[..., l, k] = chi_k between layers l and l + 1
    cos_full, cos_offdiag: float64 (..., L): mean cosine with / without the diagonal
    nn_sim, nn_angle: float64 (..., L): mean over tokens of nn_sim and of its angle in degrees (tokens
        whose value is undefined, a neighbour an exact copy, left out; NaN if none is left or N < 3)
    """
    gride: GrideResult
    chi: np.ndarray
    cos_full: np.ndarray
    cos_offdiag: np.ndarray
    nn_sim: np.ndarray
    nn_angle: np.ndarray


def _finite_mean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def layer_profile(X, range_max: int = 256, k_max: int = 31) -> LayerProfile:
    """ID at every scale, chi_k between consecutive layers and mean cosine of a stack of layers.

    X: (..., L, N, d), e.g. one prompt's token states at every layer. One score matrix per cloud
    gives the k_max nearest indices (neighbourhood overlap), the two nearest (nn_sim) and the
    distances at GRIDE's ranks 1, 2, 4, ..., largest n2.
    """
    C, lead = _clouds(X)
    if len(lead) < 1:
        raise ValueError(f"layer_profile needs X of shape (..., L, N, d), got {tuple(X.shape)}.")
    n = C.shape[-2]
    _check_k(k_max, n, "k_max")
    ranks = _gride_ranks(n, int(range_max))                         # for clouds without duplicates
    n_index = max(k_max, 2) if n >= 3 else k_max                    # nn_sim needs two neighbours
    idx = np.empty((len(C), n, k_max), dtype=np.int64)
    nn = np.full((2, len(C)), np.nan)
    rows = []
    with _one_thread(C):
        for c_i, c in enumerate(C):
            table = _neighbor_table(c, n_index, ranks)
            idx[c_i] = table.indices[:, :k_max]
            if n >= 3:
                cos = nn_sim_from_indices(c, table.indices[:, :2])
                nn[:, c_i] = _finite_mean(cos), _finite_mean(nn_angle(cos))
            rows.append(_gride_one(c, int(range_max), table if len(ranks) else None))
    L = lead[-1]
    idx = idx.reshape((-1, L, n, k_max))
    chi = overlap_from_indices(idx[:, :-1], idx[:, 1:], k_max).reshape(lead[:-1] + (L - 1, k_max + 1))
    cos_full, cos_off = _cosine_means(C)
    return LayerProfile(_stack_gride(rows, lead, int(range_max)), chi,
                        cos_full.reshape(lead), cos_off.reshape(lead), nn[0].reshape(lead), nn[1].reshape(lead))

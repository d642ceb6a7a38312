"""The per-layer measures of one prompt's stack of layers in one pass over each layer's centred token
Gram matrix: prompt entropy, token-trajectory curvature, anisotropy, CKA with the next layer, and the
depth curvature; equal to the functions of `information` and `similarity`, at a fraction of the cost."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigvalsh

from ._arrays import _clouds, _f64, _to_numpy
from .information import _normalise_entropy, curvature, depth_curvature, matrix_entropy
from .similarity import anisotropy, linear_cka


@dataclass(frozen=True)
class LayerMeasures:
    """Per-layer measures of a stack X (..., L, N, d), float64 (..., L).

    entropy: `matrix_entropy` (the reference's clamped prompt entropy, alpha 1, / min(ln N, ln d))
    curvature: `curvature` (token trajectory, |cos|, unit rows), radians
    anisotropy: `anisotropy` (centred)
    cka_next: `linear_cka` of layer l and l + 1 at l (NaN at the last layer)
    depth_curvature: `depth_curvature` (NaN at the first and last layer)
    """
    entropy: np.ndarray
    curvature: np.ndarray
    anisotropy: np.ndarray
    cka_next: np.ndarray
    depth_curvature: np.ndarray


def _from_gram(G: np.ndarray, n: int, d: int):
    """Entropy, curvature and anisotropy of one cloud from its centred Gram G (N x N), N <= d."""
    top = eigvalsh(G, subset_by_index=[n - 1, n - 1])[0]
    tr = np.trace(G)
    aniso = top / tr if tr > 0 else np.nan
    g = np.sqrt(np.maximum(np.diag(G), 0.0))
    inv = np.where(g > 0, 1.0 / np.where(g > 0, g, 1.0), 0.0)
    S = G * inv[:, None] * inv[None, :]                         # Gram of the unit rows (`unit_rows`)
    lam = np.linalg.eigvalsh(np.maximum(S, 0.0))                # the reference's clamp
    lam = lam[lam > 0]
    p = lam / lam.sum()
    ent = float(_normalise_entropy(-(p * np.log(p)).sum(), "maxEntropy", n, d))
    # displacements v_k = z_{k+1} - z_k of the unit rows: v_k . v_{k+1} and |v_k|^2 from S
    k = np.arange(n - 2)
    dot = S[k + 1, k + 2] - S[k + 1, k + 1] - S[k, k + 2] + S[k, k + 1]
    sq = np.diag(S)[1:] + np.diag(S)[:-1] - 2 * S[np.arange(n - 1), np.arange(1, n)]
    nv = np.sqrt(np.maximum(sq, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((nv[:-1] > 0) & (nv[1:] > 0), np.abs(dot) / (nv[:-1] * nv[1:]), 1.0)
    curv = float(np.arccos(np.clip(cos, -1.0, 1.0)).mean())
    return ent, curv, aniso


def layer_measures(X) -> LayerMeasures:
    """Per-layer measures of stacks X (..., L, N, d), e.g. one prompt's token states at every layer.

    With N <= d (a prompt of fewer tokens than dimensions, the default) one centred Gram matrix per
    layer gives the anisotropy (its top eigenvalue over its trace), the prompt entropy (the same matrix
    scaled to unit rows, clamped), the curvature (the displacements' inner products read off it) and
    the CKA of consecutive layers; otherwise the functions themselves are called. Needs L >= 3, N >= 3."""
    C, lead = _clouds(X)
    if len(lead) < 1 or lead[-1] < 3 or C.shape[-2] < 3:
        raise ValueError(f"layer_measures needs X of shape (..., L, N, d) with L >= 3 and N >= 3, got "
                         f"{tuple(X.shape)}.")
    L = lead[-1]
    n, d = C.shape[-2:]
    Z = _to_numpy(_f64(C)).reshape((-1, L, n, d))
    out = np.full((4, len(Z), L), np.nan)
    for b, stack in enumerate(Z):
        if n <= d:
            Xc = stack - stack.mean(-2, keepdims=True)
            G = Xc @ Xc.transpose(0, 2, 1)                           # (L, N, N)
            for l in range(L):
                out[:3, b, l] = _from_gram(G[l], n, d)
            norms = np.linalg.norm(G, axis=(-2, -1))
            with np.errstate(invalid="ignore", divide="ignore"):
                out[3, b, :-1] = (G[:-1] * G[1:]).sum((-2, -1)) / (norms[:-1] * norms[1:])
        else:
            out[0, b] = matrix_entropy(stack)
            out[1, b] = curvature(stack)
            out[2, b] = anisotropy(stack)
            out[3, b, :-1] = linear_cka(stack[:-1], stack[1:])
    shape = lead
    return LayerMeasures(*(o.reshape(shape) for o in out), depth_curvature(X))

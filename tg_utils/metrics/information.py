"""Layer by Layer's (Skean et al., ICML 2025) information measures of token clouds: matrix-based
(von Neumann / Renyi) prompt and dataset entropies and the curvature of a prompt's token trajectory;
plus our depth curvature (each token's path through the layers)."""
from __future__ import annotations

import math

import numpy as np

from ._arrays import _clouds, _f64, _to_numpy, _unbatch

ENTROPY_NORMALIZATIONS = ("raw", "maxEntropy", "logN", "logD")
POOLINGS = ("mean", "last")


def unit_rows(X) -> np.ndarray:
    """Each cloud X (..., N, d) centred over its tokens, then every row scaled to unit length, float64
    (information_flow experiments/utils/misc/model_dataloader_utils.py:288-294, `normalize`, applied to
    every layer's states before any measure, metric_utils.py:101). A row equal to the mean stays 0."""
    C, lead = _clouds(X)
    C = _to_numpy(_f64(C))
    C = C - C.mean(-2, keepdims=True)
    n = np.linalg.norm(C, axis=-1, keepdims=True)
    return (C / np.where(n == 0, 1.0, n)).reshape(lead + C.shape[-2:])


def _entropy_of(c: np.ndarray, alpha: float, clamp: bool) -> float:
    n, d = c.shape
    # metric_utils.py:161-166: the smaller of Z^T Z (d x d) and Z Z^T (N x N), clamped at 0 entrywise
    m = c.T @ c if n > d else c @ c.T
    if clamp:
        m = np.maximum(m, 0.0)
    lam = np.linalg.eigvalsh(m)
    lam = lam[lam > 0]                     # repitl matrix_itl.py vonNeumannEntropy: positive eigenvalues,
    if len(lam) == 0:                      # divided by their sum (the trace normalisation)
        return float("nan")
    p = lam / lam.sum()
    if alpha == 1:
        return float(-(p * np.log(p)).sum())                         # natural log (matrix_itl.py:191)
    return float(math.log((p ** alpha).sum()) / (1.0 - alpha))       # matrixAlphaEntropy, alpha != 1


def _normalise_entropy(h: np.ndarray, normalization: str, n: int, d: int) -> np.ndarray:
    """metric_utils.py:51-77 `entropy_normalization`."""
    if normalization == "raw":
        return h
    scale = {"maxEntropy": min(math.log(n), math.log(d)), "logN": math.log(n), "logD": math.log(d)}
    return h / scale[normalization]


def _check_entropy_args(alpha: float, normalization: str) -> None:
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (1 = von Neumann entropy), got {alpha}.")
    if normalization not in ENTROPY_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {ENTROPY_NORMALIZATIONS}, got {normalization!r}.")


def matrix_entropy(X, alpha: float = 1.0, normalization: str = "maxEntropy", clamp: bool = True,
                   normalize_rows: bool = True):
    """Matrix-based alpha-entropy of each cloud X (..., N, d), as Layer by Layer's code computes its
    prompt entropy (information_flow experiments/utils/misc/metric_utils.py:158-169, repitl
    matrixAlphaEntropy):

    1. normalize_rows: tokens centred, rows scaled to unit length (`unit_rows`);
    2. K = Z Z^T (N x N) or Z^T Z (d x d), whichever is smaller (the same non-zero spectrum);
    3. clamp=True: K's negative entries set to 0 (the reference does; it breaks rotation invariance,
       so clamp=False, the entropy of the Gram spectrum itself, is our labelled variant `spectral`);
    4. eigenvalues > 0 divided by their sum: p; alpha = 1: -sum p ln p (von Neumann), else
       log(sum p^alpha) / (1 - alpha);
    5. normalization: 'maxEntropy' (the reference default) divides by min(ln N, ln d); 'logN', 'logD',
       'raw' as there.

    Between 0 (rank one) and ln min(N, d) (isotropic). Returns a float or (...)."""
    _check_entropy_args(alpha, normalization)
    C, lead = _clouds(X)
    n, d = C.shape[-2:]
    if n < 2:
        raise ValueError(f"matrix_entropy needs clouds of at least 2 tokens, got {n}.")
    Z = unit_rows(C) if normalize_rows else _to_numpy(_f64(C))
    h = np.array([_entropy_of(c, float(alpha), clamp) for c in Z])
    return _unbatch(_normalise_entropy(h, normalization, n, d), lead)


def prompt_embeddings(X, pooling: str = "mean") -> np.ndarray:
    """One vector per prompt from clouds X (..., N, d): 'mean' (the reference's dataset-level input:
    the mean of the prompt's unit rows, metric_utils.py:145-146) or 'last' (the last token's state,
    as the paper describes its dataset entropy). Returns float64 (..., d)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    C, lead = _clouds(X)
    if pooling == "mean":
        return unit_rows(C).mean(-2).reshape(lead + (C.shape[-1],))
    return _to_numpy(_f64(C))[:, -1].reshape(lead + (C.shape[-1],))


def dataset_entropy(E, alpha: float = 1.0, normalization: str = "maxEntropy", clamp: bool = True):
    """Layer by Layer's dataset entropy: the matrix entropy of the P prompt vectors E (..., P, d) (one per
    prompt, from `prompt_embeddings`) of one layer, computed as the reference's compute_entropy on them
    (no further centring or row scaling, metric_utils.py:115-156, 158-169). Returns a float or (...)."""
    return matrix_entropy(E, alpha=alpha, normalization=normalization, clamp=clamp, normalize_rows=False)


def _angles(u: np.ndarray, v: np.ndarray, absolute: bool) -> np.ndarray:
    """Angle between the rows of u and v (..., d); 0 where either is zero (metric_functions.py@703d566,
    calculate_paired_curvature: a zero displacement counts as no bend)."""
    nu, nv = np.linalg.norm(u, axis=-1), np.linalg.norm(v, axis=-1)
    dot = (u * v).sum(-1)
    if absolute:
        dot = np.abs(dot)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((nu > 0) & (nv > 0), dot / (nu * nv), 1.0)
    return np.arccos(np.clip(cos, -1.0, 1.0))


def curvature(X, absolute: bool = True, normalize_rows: bool = True):
    """Layer by Layer's curvature of each cloud X (..., N, d) taken as a trajectory over token positions:
    v_k = z_{k+1} - z_k, the mean over k of the angle (radians) between v_k and v_{k+1}
    (information_flow experiments/utils/metrics/metric_functions.py@703d566, compute_curvature; the paper
    after Hosseini & Fedorenko 2023). As the reference: rows first centred and unit-scaled
    (normalize_rows), and absolute=True takes arccos |cos|, in [0, pi/2]; absolute=False (our labelled
    variant, the paper's equation) arccos cos, in [0, pi]. A zero displacement (two equal rows) counts
    as angle 0, as there. 0 for points on a straight line. Needs N >= 3."""
    C, lead = _clouds(X)
    if C.shape[-2] < 3:
        raise ValueError(f"curvature needs at least 3 tokens, got {C.shape[-2]}.")
    Z = unit_rows(C) if normalize_rows else _to_numpy(_f64(C))
    v = np.diff(Z, axis=-2)
    return _unbatch(_angles(v[:, :-1], v[:, 1:], absolute).mean(-1), lead)


def depth_curvature(X):
    """Our per-layer curvature of each token's path through the layers, X (..., L, N, d) a stack of
    layers: at layer l (1..L-2) the mean over tokens of the angle (radians, in [0, pi]) between the
    displacements z_l - z_{l-1} and z_{l+1} - z_l of the same token (raw states, no normalisation; a zero
    displacement counts as angle 0).
    Returns float64 (..., L) with NaN at the first and last layer (no angle there)."""
    C, lead = _clouds(X)
    if len(lead) < 1:
        raise ValueError(f"depth_curvature needs a stack of layers (..., L, N, d), got {tuple(X.shape)}.")
    L = lead[-1]
    if L < 3:
        raise ValueError(f"depth_curvature needs at least 3 layers, got {L}.")
    Z = _to_numpy(_f64(C)).reshape((-1, L) + C.shape[-2:])
    v = np.diff(Z, axis=1)                                                   # (B, L-1, N, d)
    ang = _angles(v[:, :-1], v[:, 1:], absolute=False).mean(-1)        # (B, L-2)
    out = np.full((len(Z), L), np.nan)
    out[:, 1:-1] = ang
    return out.reshape(lead)

"""Covariance eigenspectra of token clouds and what is read from them: RankMe, alpha-ReQ and the
log-intercept of alpha-ReQ's power-law fit."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import _clouds, _f64, _is_torch, _to_numpy, _validated, torch

# alpha-ReQ windows, 1-based ranks (the Tracing paper's stringer_get_powerlaw(eig, arange(11, 100)))
ALPHA_FIT_RANKS = (12, 100)              # weighted least squares of log(lambda) on log(rank)
ALPHA_R2_FIRST_RANK = 13                 # r2 over ranks 13..500 (or ..n-10), r2_100 over 13..100
# the Tracing paper's PCA keeps at most 2048 components (utils/powerlaw.py:89-92, get_eigenspectrum)
PCA_MAX_COMPONENTS = 2048


@dataclass(frozen=True)
class AlphaReq:
    """alpha-ReQ: power-law exponent of an eigenspectrum and the quality (R^2) of its fit."""
    alpha: float | np.ndarray
    r2: float | np.ndarray
    r2_100: float | np.ndarray


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


def eigenspectrum(X, max_components: int | None = None) -> np.ndarray:
    """Covariance eigenvalues of each centred cloud X (..., N, d) as fractions of the total variance,
    descending: float64 (..., k), k = min(N, d, max_components), i.e. scikit-learn PCA's
    explained_variance_ratio_ with n_components = k. With max_components = None (or >= min(N, d)) the
    fractions sum to 1; with a cap only the k largest are kept, still divided by the *total* variance
    (as sklearn's svd_solver='full' does; the Tracing paper caps k at PCA_MAX_COMPONENTS = 2048,
    utils/powerlaw.py:89-94), so they sum to less than 1."""
    if max_components is not None and max_components < 1:
        raise ValueError(f"max_components must be positive or None, got {max_components}")
    C, lead = _clouds(X)
    lam = np.stack([_covariance_eigenvalues(c) for c in C])
    total = lam.sum(-1, keepdims=True)
    if np.any(total == 0):
        raise ValueError("A cloud has zero variance (all its tokens are identical); its "
                         "eigenspectrum is undefined.")
    k = lam.shape[-1] if max_components is None else min(lam.shape[-1], int(max_components))
    return (lam[..., :k] / total).reshape(lead + (k,))


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
    total = np.abs(e).sum(-1, keepdims=True)
    if (total == 0).any():
        raise ValueError("rankme of an all-zero spectrum is undefined: the cloud has no variance "
                         "(all its states are equal); leave such clouds out.")
    p = e / total + 1e-7
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


@dataclass(frozen=True)
class _PowerLawFit:
    """What alpha-ReQ's weighted least squares fit of eigenspectra (flattened to (C, n)) works on."""
    rank: np.ndarray           # int64 (n,): 1..n
    valid: np.ndarray          # bool (C, n): rank <= n_pos (the positive eigenvalues)
    logs: np.ndarray           # float64 (C, n): log(lambda_r) where valid, else 0
    fit: np.ndarray            # bool (C, n): the fit ranks ALPHA_FIT_RANKS among the valid ones
    w: np.ndarray              # float64 (C, n): 1/r (rounded to float32) on the fit ranks, else 0
    n_pos: np.ndarray          # int64 (C,)
    lead: tuple                # the leading shape (...) of the spectra


def _power_law_fit(eigs) -> _PowerLawFit:
    """Check eigenspectra eigs (..., n) for alpha-ReQ and set up its fit (ranks ALPHA_FIT_RANKS,
    eigenvalues <= 0 left out)."""
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
    return _PowerLawFit(rank, valid, logs, fit, w, n_pos, lead)


def _floats(values, lead: tuple):
    """Per-spectrum results (C,) reshaped to lead; a float for a single spectrum."""
    out = values.reshape(lead)
    return float(out) if out.ndim == 0 else out


def alpha_req(eigs) -> AlphaReq:
    """alpha-ReQ (Agrawal et al. 2022): power-law exponent of eigenspectra eigs (..., n), descending.

    As the Tracing paper's `stringer_get_powerlaw(eig, np.arange(11, 100))`: weighted least
    squares of log(lambda_r) on [-log r, 1] over ranks r = 12..100 with weights 1/r (rounded to
    float32, as there); alpha is the slope. r2: R^2 of the fitted line over ranks 13..500
    (13..n-10 when n < 512); r2_100: over ranks 13..100. Eigenvalues <= 0 (a rank-deficient tail)
    are left out, and with fewer than 100 positive ones the windows end at the last of them (an
    empty r2 window gives NaN). Returns AlphaReq(alpha, r2, r2_100), floats or (...) arrays.
    """
    f = _power_law_fit(eigs)
    rank, valid, logs, w, n_pos = f.rank, f.valid, f.logs, f.w, f.n_pos
    x = np.stack([-np.log(rank), np.ones(len(rank))], -1)                         # (n, 2)
    lhs = np.einsum("cn,ni,nj->cij", w, x, x)
    rhs = np.einsum("cn,ni,cn->ci", w, x, logs)
    b = np.linalg.solve(lhs, rhs[..., None])[..., 0]                              # (C, 2)
    log_fit = b[:, :1] * x[:, 0] + b[:, 1:]
    last = np.where(n_pos >= 512, 500, n_pos - 10)[:, None]
    from_13 = valid & (rank >= ALPHA_R2_FIRST_RANK)
    r2 = _r2(logs, log_fit, from_13 & (rank <= last))
    r2_100 = _r2(logs, log_fit, from_13 & (rank <= 100))
    return AlphaReq(*(_floats(v, f.lead) for v in (b[:, 0], r2, r2_100)))


def power_law_intercept(eigs, alpha):
    """Log-intercept b of the alpha-ReQ fit log(lambda_r) = b - alpha log r of eigenspectra eigs
    (..., n), descending, given its exponent alpha (...) (from `alpha_req`): on alpha_req's fit
    (ranks 12..100, weights 1/r), the weighted least squares intercept for that slope,
    b = sum w (log lambda + alpha log r) / sum w. Returns a float or (...)."""
    f = _power_law_fit(eigs)
    a = np.asarray(alpha, dtype=np.float64).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(f.fit, f.logs + a[:, None] * np.log(f.rank), 0.0)
        return _floats((f.w * y).sum(-1) / f.w.sum(-1), f.lead)

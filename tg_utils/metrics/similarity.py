"""Similarity of two clouds of the same tokens (layers, models, checkpoints): linear CKA, mutual k-NN
alignment, LLM-Microscope's Procrustes linearity; and the anisotropy of one cloud."""
from __future__ import annotations

import numpy as np

from ._arrays import _check_k, _clouds, _f64, _to_numpy, _unbatch
from .spectra import eigenspectrum


def _pair(A, B, what: str):
    """Validated float64 stacks (C, N, d_a), (C, N, d_b) of two clouds of the same N tokens, lead."""
    CA, lead_a = _clouds(A, "A")
    CB, lead_b = _clouds(B, "B")
    if lead_a != lead_b or CA.shape[-2] != CB.shape[-2]:
        raise ValueError(f"{what} compares the same tokens in two spaces: A {tuple(A.shape)} and "
                         f"B {tuple(B.shape)} must share their leading shape and N (their d may differ).")
    return _to_numpy(_f64(CA)), _to_numpy(_f64(CB)), lead_a


def _centre(C: np.ndarray) -> np.ndarray:
    return C - C.mean(-2, keepdims=True)


def linear_cka(A, B):
    """Linear CKA (Kornblith et al. 2019) of clouds A (..., N, d_a) and B (..., N, d_b) of the same tokens:
    HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = A A^T, L = B B^T and the biased HSIC
    tr(K H L H) (platonic-rep metrics.py `cka(kernel_metric='ip')` with `hsic_biased`, metrics.py:252-255),
    computed in feature space as ||A_c^T B_c||_F^2 / (||A_c^T A_c||_F ||B_c^T B_c||_F) on centred clouds
    (the reference adds 1e-6 to the denominator; we do not, and raise on a constant cloud). In [0, 1];
    invariant to rotations, isotropic scalings and translations of either cloud. Returns a float or (...)."""
    A, B, lead = _pair(A, B, "linear_cka")
    A, B = _centre(A), _centre(B)
    n, da, db = A.shape[-2], A.shape[-1], B.shape[-1]
    if n <= max(da, db):                       # the N x N Gram form: <K_c, L_c>_F / (|K_c| |L_c|)
        K, L = A @ A.transpose(0, 2, 1), B @ B.transpose(0, 2, 1)
        num = (K * L).sum((-2, -1))
        den = np.linalg.norm(K, axis=(-2, -1)) * np.linalg.norm(L, axis=(-2, -1))
    else:
        At = A.transpose(0, 2, 1)
        num = ((At @ B) ** 2).sum((-2, -1))
        den = np.linalg.norm(At @ A, axis=(-2, -1)) * np.linalg.norm(B.transpose(0, 2, 1) @ B, axis=(-2, -1))
    if np.any(den == 0):
        raise ValueError("linear_cka of a cloud whose tokens are all equal is undefined; leave it out.")
    return _unbatch(num / den, lead)


def _cosine_knn(C: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) of the k largest cosines of each row with the others (self excluded, ties by
    index): platonic-rep's compute_nearest_neighbors (metrics.py:272-285) on rows scaled to unit length
    (measure_alignment.py:55-57)."""
    n = np.linalg.norm(C, axis=-1, keepdims=True)
    U = C / np.where(n == 0, 1.0, n)
    S = U @ U.T
    np.fill_diagonal(S, -np.inf)
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


def mutual_knn(A, B, k: int = 10):
    """Mutual k-NN alignment (Huh et al. 2024, platonic-rep metrics.py `mutual_knn`, metrics.py:55-85) of
    clouds A (..., N, d_a) and B (..., N, d_b) of the same tokens: the mean over tokens of
    |kNN_A(i) ∩ kNN_B(i)| / k, neighbours by cosine among the other tokens of the same cloud (k = 10, the
    reference's default, measure_alignment.py:34). The reference also clips outlying feature values (its
    prepare_features, 95th percentile) before; we do not. In [0, 1]. Returns a float or (...)."""
    A, B, lead = _pair(A, B, "mutual_knn")
    _check_k(int(k), A.shape[-2])
    out = np.empty(len(A))
    for c in range(len(A)):
        ia, ib = _cosine_knn(A[c], k), _cosine_knn(B[c], k)
        hit = (ia[:, :, None] == ib[:, None, :]).any(-1).sum(-1)
        out[c] = (hit / k).mean()
    return _unbatch(out, lead)


def linearity(A, B, residual: bool = False):
    """LLM-Microscope's linearity score ("Your Transformer is Secretly Linear", Razzhigaev et al. 2024;
    LLM_microscope.ipynb `procrustes_similarity`) of the map from cloud A (..., N, d) to B (..., N, d_b):
    both centred and scaled to unit Frobenius norm, B fitted by the least-squares linear map B ≈ A T, the
    score is 1 - ||A T - B||_F^2 (= the R^2 of the fit). residual=True: of B - A instead of B
    (`procrustes_similarity_centered`, the linearity of the residual update; needs d_b = d). 1 for any
    invertible linear map of A (plus translation); close to 0 for unrelated clouds. The fit is exact
    whenever N - 1 <= rank(A) (fewer tokens than dimensions): then the score is trivially 1, so clouds
    with N <= d are refused. The reference inverts all singular values; we keep the
    eigenvalues of A^T A above 1e-12 of the largest (singular values above 1e-6). Returns a float or (...)."""
    A, B, lead = _pair(A, B, "linearity")
    n, d = A.shape[-2:]
    if n <= d + 1:
        raise ValueError(f"linearity needs more tokens than dimensions (N = {n}, d = {d}): with "
                         "N - 1 <= d any cloud is an exact linear image of another and the score is 1. "
                         "Pool more tokens (e.g. several prompts) into the clouds.")
    if residual:
        if B.shape[-1] != d:
            raise ValueError("linearity(residual=True) needs A and B of the same dimension.")
        B = B - A
    out = np.empty(len(A))
    for c in range(len(A)):
        a, b = _unit_frobenius(A[c]), _unit_frobenius(B[c])
        out[c] = _explained(_gram_eigen(a), a.T @ b)
    return _unbatch(out, lead)


def _unit_frobenius(x: np.ndarray) -> np.ndarray:
    x = _centre(x)
    nx = np.linalg.norm(x)
    if nx == 0:
        raise ValueError("linearity of a cloud whose tokens are all equal is undefined.")
    return x / nx


def _gram_eigen(a: np.ndarray):
    """Eigenpairs of a^T a kept for the least-squares fit: eigenvalues above 1e-12 of the largest
    (singular values above 1e-6 of the largest)."""
    lam, V = np.linalg.eigh(a.T @ a)
    keep = lam > lam[-1] * 1e-12
    return lam[keep], V[:, keep]


def _explained(eig, atb: np.ndarray) -> float:
    """1 - ||a T - b||^2 for the least-squares T and unit-norm b: ||P_a b||^2 =
    ||diag(lam)^(-1/2) V^T a^T b||_F^2 (the projection of b onto a's column space)."""
    lam, V = eig
    m = V.T @ atb
    return float((m ** 2 / lam[:, None]).sum())


def linearity_profile(X, residual: bool = False) -> np.ndarray:
    """`linearity` of each pair of consecutive layers of one stack X (L, N, d) (e.g. the tokens of all
    prompts pooled at each layer): float64 (L - 1,), each layer's Gram eigenpairs computed once."""
    C, lead = _clouds(X)
    if len(lead) != 1 or lead[0] < 2:
        raise ValueError(f"linearity_profile needs one stack (L, N, d) of L >= 2 layers, got {tuple(X.shape)}.")
    n, d = C.shape[-2:]
    if n <= d + 1:
        raise ValueError(f"linearity needs more tokens than dimensions (N = {n}, d = {d}); pool more tokens.")
    C = _to_numpy(_f64(C))
    out = np.empty(len(C) - 1)
    a = _unit_frobenius(C[0])
    eig = _gram_eigen(a)
    for l in range(len(C) - 1):
        b = _unit_frobenius(C[l + 1] - C[l] if residual else C[l + 1])
        out[l] = _explained(eig, a.T @ b)
        if l + 1 < len(C) - 1:
            a = _unit_frobenius(C[l + 1])
            eig = _gram_eigen(a)
    return out


def anisotropy(X, centre: bool = True):
    """Anisotropy of each cloud X (..., N, d): the share of the largest covariance eigenvalue (the
    squared top singular value) in their sum, sigma_1^2 / sum sigma_i^2 (LLM_microscope.ipynb
    `calculate_anisotropy_torch`, which centres the tokens first; "The Shape of Learning", Razzhigaev
    et al. 2024). centre=False: of the raw states (our labelled variant; it is dominated by a common
    offset when there is one). In [1/min(N, d), 1]. Returns a float or (...)."""
    if centre:
        return eigenspectrum(X)[..., 0] if np.ndim(X) > 2 else float(eigenspectrum(X)[0])
    C, lead = _clouds(X)
    s = np.stack([np.linalg.svd(c, compute_uv=False) for c in _to_numpy(_f64(C))])
    tot = (s ** 2).sum(-1)
    if np.any(tot == 0):
        raise ValueError("anisotropy of an all-zero cloud is undefined.")
    return _unbatch(s[:, 0] ** 2 / tot, lead)


def consecutive(X, fn, **kwargs) -> np.ndarray:
    """fn(X[..., l, :, :], X[..., l+1, :, :]) for each pair of consecutive layers of a stack X (..., L, N, d):
    float64 (..., L - 1), the value for the pair (l, l+1) at index l."""
    if X.ndim < 3 or X.shape[-3] < 2:
        raise ValueError(f"consecutive needs a stack of at least 2 layers (..., L, N, d), got {tuple(X.shape)}.")
    return np.asarray(fn(X[..., :-1, :, :], X[..., 1:, :, :], **kwargs), dtype=np.float64)


def _unit_grams(X: np.ndarray) -> np.ndarray:
    """Centred Gram matrices of a stack (L, N, d), each scaled to unit Frobenius norm, flattened (L, N*N)."""
    Xc = _centre(X)
    G = (Xc @ Xc.transpose(0, 2, 1)).reshape(len(X), -1)
    n = np.linalg.norm(G, axis=1, keepdims=True)
    if np.any(n == 0):
        raise ValueError("cka_matrix: a layer whose tokens are all equal has no CKA; leave it out.")
    return G / n


def cka_matrix(XA, XB) -> np.ndarray:
    """Linear CKA of every layer of XA (L_a, N, d_a) with every layer of XB (L_b, N, d_b), the same N
    tokens (e.g. two models with one tokenizer, or two checkpoints): float64 (L_a, L_b), entry (i, j) =
    linear_cka(XA[i], XB[j]), as the inner products of the layers' unit-norm centred Gram matrices."""
    A, B = (_to_numpy(_f64(_clouds(X, name)[0])) for X, name in ((XA, "XA"), (XB, "XB")))
    if A.ndim != 3 or B.ndim != 3 or A.shape[1] != B.shape[1] or np.ndim(XA) != 3 or np.ndim(XB) != 3:
        raise ValueError(f"cka_matrix needs two stacks (L, N, d) of the same N tokens, got {np.shape(XA)} "
                         f"and {np.shape(XB)}.")
    return _unit_grams(A) @ _unit_grams(B).T


def mutual_knn_matrix(XA, XB, k: int = 10) -> np.ndarray:
    """`mutual_knn` of every layer of XA (L_a, N, d_a) with every layer of XB (L_b, N, d_b), the same N
    tokens: float64 (L_a, L_b)."""
    A, B = (_to_numpy(_f64(_clouds(X, name)[0])) for X, name in ((XA, "XA"), (XB, "XB")))
    if np.ndim(XA) != 3 or np.ndim(XB) != 3 or A.shape[1] != B.shape[1]:
        raise ValueError(f"mutual_knn_matrix needs two stacks (L, N, d) of the same N tokens, got "
                         f"{np.shape(XA)} and {np.shape(XB)}.")
    _check_k(int(k), A.shape[1])
    n = A.shape[1]
    masks = []
    for X in (A, B):
        m = np.zeros((len(X), n, n), dtype=bool)
        for l, c in enumerate(X):
            m[l, np.arange(n)[:, None], _cosine_knn(c, k)] = True
        masks.append(m.reshape(len(X), -1).astype(np.float64))
    return masks[0] @ masks[1].T / (n * k)

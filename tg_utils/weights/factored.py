"""Per-head attention matrices kept as factors: W_qk and W_vo of every head (grouped-query attention
included), their SVD through the factors, singular values, coverage and the rank at a coverage level,
and the sign convention of singular pairs.

Conventions (the same as ``tg_utils.models.ModelDescription``)
----------------------------------------------------------------
Row vectors: a state x is a row of length d and a layer reads it as ``x @ W``.

    W_Q [n_heads, d, d_head]      q_h = x @ W_Q[h]                (+ b_Q[h])
    W_K [n_kv_heads, d, d_head]   k_g = x @ W_K[g]                (+ b_K[g])
    W_V [n_kv_heads, d, d_head]   v_g = x @ W_V[g]                (+ b_V[g])
    W_O [n_heads, d_head, d]      attention output = sum_h z_h @ W_O[h] (+ b_O)
    kv_map [n_heads]              query head h reads key/value head kv_map[h] (grouped-query attention;
                                  ``kv_head_map(H, H_kv)``: h // (H / H_kv), so with 8 query heads and 2 kv
                                  heads, heads 0-3 read kv head 0 and heads 4-7 kv head 1)
    W_E [vocab, d]                embedding rows
    W_U [d, vocab]                unembedding: logits = x @ W_U

Per head h (g = kv_map[h], scale = 1/sqrt(d_head) unless given, e.g. Gemma's query_pre_attn_scalar^-0.5):

    W_qk[h] = scale * W_Q[h] @ W_K[g].T        [d, d]: score(x query, y key) = x @ W_qk[h] @ y.T
    W_vo[h] = W_V[g] @ W_O[h]                  [d, d]: the head writes x @ W_vo[h] for an attended key x

These are the bilinear / linear parts only. Biases add terms: the score gains b_Q W_K^T y^T (a per-key
bias that survives the softmax) plus terms constant over keys (which cancel in the softmax); the
update gains b_V W_O + b_O. RoPE is ignored: W_qk is the score of two tokens at the same position
(relative rotation zero). Per-head q/k norms (Gemma 3, Qwen 3) make the score non-bilinear; W_qk is
then the map before those norms.

SVD through the factors (``FactoredMatrix``, after TransformerLens): M = A @ B with A [.., m, r],
B [.., r, n] and r = d_head << d. Reduced QR A = Qa Ra, B^T = Qb Rb, SVD of the small r x r core
Ra Rb^T = Uc S Vc^T, then U = Qa Uc, V = Qb Vc: M = U diag(S) V^T without ever forming the d x d
matrix. Float64. ``SVD`` holds U [.., m, k], S [.., k] (descending), V [.., n, k], k = min(m, n, r).
For W_qk, U holds *query-side* directions and V *key-side* directions; for W_vo, U holds *input*
(read) directions and V *output* (write) directions. ``singular_values`` gives S alone, faster.

Sign convention (``flip_mask``, ``SVD.flipped``; applied by ``probe.sign_align`` and ``probe.block_probe``):
a singular pair (u_i, v_i) is defined up to a joint sign flip. Let x_i be the reference side's vector
(u_i for side="left", v_i for side="right") and R the reference matrix (rows = tokens, after the given
norm). With s = R @ x_i, the pair is flipped (u_i, v_i) -> (-u_i, -v_i) iff max(s) < -min(s), i.e. iff
max(s) + min(s) < 0; after alignment the largest dot product with the reference matrix is at least the
magnitude of the most negative one (ties: no flip). The flip leaves M unchanged.

Coverage (``singular_value_coverage``), two definitions (``of``):
    "sigma"   c_r = sum_{i<=r} sigma_i / sum_i sigma_i, the paper's (Traveling Words,
              utils/plot_utils.py:123-130: np.cumsum(S) / sum(S) over the first d_head singular values, and
              the first index where the coverage exceeds 99 %, strictly)
    "sigma2"  c_r = sum_{i<=r} sigma_i^2 / sum_i sigma_i^2, the share of the squared Frobenius norm captured
              by the best rank-r approximation (Eckart-Young): a variant of this repository
``rank_at_coverage`` is the smallest r (1-based) with c_r >= level ("sigma2") or c_r > level ("sigma", as
the paper's strict comparison), default level 0.99, at most k; 0 for an all-zero matrix. The paper plots it
as a share of the features, (r - 1) / (k - 1) (np.linspace(0, 1, k)[r - 1]; ``coverage_table``'s
percent_of_features).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._tensors import tensor

COVERAGE_LEVEL = 0.99

Tensor = torch.Tensor


def kv_head_map(n_heads: int, n_kv_heads: int | None = None) -> Tensor:
    """Query head -> key/value head for grouped-query attention: h // (n_heads // n_kv_heads)
    (consecutive query heads share a kv head, as in Llama's repeat_kv)."""
    n_kv = n_heads if n_kv_heads is None else int(n_kv_heads)
    if n_kv < 1 or n_heads % n_kv:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv}")
    return torch.arange(n_heads) // (n_heads // n_kv)


def checked_kv_map(kv_map, n_heads: int, n_kv: int) -> Tensor:
    """`kv_map` as a long CPU tensor [n_heads] with entries in [0, n_kv) (None: ``kv_head_map``)."""
    m = kv_head_map(n_heads, n_kv) if kv_map is None else tensor(kv_map).long().cpu()
    if m.shape != (n_heads,) or (m.numel() and (m.min() < 0 or m.max() >= n_kv)):
        raise ValueError(f"kv_map must be [n_heads={n_heads}] with entries in [0, {n_kv}), got {m.tolist()}")
    return m


def flip_mask(top1: Tensor, bottom1: Tensor) -> Tensor:
    """The sign rule: flip a singular pair iff the largest score of its reference-side vector over the
    vocabulary (`top1`) is smaller in magnitude than the most negative one (`bottom1`): top1 + bottom1 < 0."""
    return (top1 + bottom1) < 0


@dataclass(frozen=True)
class SVD:
    """M = U diag(S) V^T, batched over leading axes: U [..., m, k], S [..., k] descending, V [..., n, k]."""
    U: Tensor
    S: Tensor
    V: Tensor

    def matrix(self) -> Tensor:
        return (self.U * self.S[..., None, :]) @ self.V.mT

    def coverage(self) -> Tensor:
        return singular_value_coverage(self.S)

    def rank_at(self, level: float = COVERAGE_LEVEL) -> Tensor:
        return rank_at_coverage(self.S, level)

    def flipped(self, flip: Tensor) -> "SVD":
        """The pairs marked in `flip` ([..., c] bool, c <= k: the first c pairs) with (u_i, v_i) -> (-u_i, -v_i);
        the rest unchanged. M is unchanged."""
        lead, k = self.U.shape[:-2], self.U.shape[-1]
        c = flip.shape[-1]
        sign = torch.ones(*lead, k, dtype=self.U.dtype, device=self.U.device)
        if c:
            sign[..., :c] = torch.where(flip, -1.0, 1.0).reshape(*lead, c).to(sign)
        return SVD(U=self.U * sign[..., None, :], S=self.S, V=self.V * sign[..., None, :])


def factored_svd(A, B) -> SVD:
    """SVD of M = A @ B (A [..., m, r], B [..., r, n]) through the factors: reduced QR of A and of B^T,
    SVD of the small core Ra Rb^T; never forms the m x n matrix. Float64. k = min(m, n, r) triplets."""
    A, B = tensor(A, torch.float64), tensor(B, torch.float64)
    if A.shape[-1] != B.shape[-2]:
        raise ValueError(f"inner dimensions differ: A {tuple(A.shape)}, B {tuple(B.shape)}")
    Qa, Ra = torch.linalg.qr(A, mode="reduced")             # [.., m, ka], [.., ka, r]
    Qb, Rb = torch.linalg.qr(B.mT, mode="reduced")          # [.., n, kb], [.., kb, r]
    Uc, S, Vch = torch.linalg.svd(Ra @ Rb.mT, full_matrices=False)
    return SVD(U=Qa @ Uc, S=S, V=Qb @ Vch.mT)


class FactoredMatrix:
    """A matrix kept as the product A @ B (A [..., m, r], B [..., r, n]), batched over leading axes
    (heads). ``svd()`` goes through the factors; ``dense()`` forms the product (small sizes only)."""

    def __init__(self, A, B):
        A, B = tensor(A), tensor(B)
        if A.shape[-1] != B.shape[-2] or A.shape[:-2] != B.shape[:-2]:
            raise ValueError(f"factors do not chain: A {tuple(A.shape)}, B {tuple(B.shape)}")
        self.A, self.B = A, B

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.A.shape[:-1], self.B.shape[-1])

    def dense(self) -> Tensor:
        return self.A.to(torch.float64) @ self.B.to(torch.float64)

    def svd(self) -> SVD:
        return factored_svd(self.A, self.B)

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape {self.shape}, inner {self.A.shape[-1]})"


def qk_factors(W_Q, W_K, kv_map=None, scale: float | None = None) -> FactoredMatrix:
    """W_qk[h] = scale * W_Q[h] @ W_K[kv_map[h]].T as factors A = scale * W_Q [H, d, dh],
    B = W_K[kv_map].mT [H, dh, d] (float64 copies). scale defaults to 1/sqrt(d_head)."""
    W_Q, W_K = tensor(W_Q, torch.float64), tensor(W_K, torch.float64)
    H, _, dh = W_Q.shape
    m = checked_kv_map(kv_map, H, W_K.shape[0])
    s = dh ** -0.5 if scale is None else float(scale)
    return FactoredMatrix(W_Q * s, W_K[m.to(W_K.device)].mT)


def vo_factors(W_V, W_O, kv_map=None) -> FactoredMatrix:
    """W_vo[h] = W_V[kv_map[h]] @ W_O[h] as factors A = W_V[kv_map] [H, d, dh], B = W_O [H, dh, d]
    (float64 copies)."""
    W_V, W_O = tensor(W_V, torch.float64), tensor(W_O, torch.float64)
    m = checked_kv_map(kv_map, W_O.shape[0], W_V.shape[0])
    return FactoredMatrix(W_V[m.to(W_V.device)], W_O)


def qk_matrices(W_Q, W_K, kv_map=None, scale: float | None = None) -> Tensor:
    """Dense W_qk per head, [H, d, d] float64 (small models and tests; use qk_factors otherwise)."""
    return qk_factors(W_Q, W_K, kv_map, scale).dense()


def vo_matrices(W_V, W_O, kv_map=None) -> Tensor:
    """Dense W_vo per head, [H, d, d] float64."""
    return vo_factors(W_V, W_O, kv_map).dense()


def singular_values(fm: FactoredMatrix) -> Tensor:
    """Singular values of M = A @ B (per head, descending, float64) without the singular vectors: the
    Cholesky factors of the small Gram matrices, A^T A = La La^T and B B^T = Lb Lb^T, give
    M^T M ~ (La^T Lb), so sigma(M) = svdvals(La^T Lb) (r x r work only). Heads whose Gram matrix is not
    positive definite (rank-deficient factors) go through ``factored_svd``. About twice as fast as the QR
    route; agrees with it to ~1e-14 relative (tests check)."""
    Af, Bf = fm.A.to(torch.float64), fm.B.to(torch.float64)
    La, ia = torch.linalg.cholesky_ex(Af.mT @ Af)
    Lb, ib = torch.linalg.cholesky_ex(Bf @ Bf.mT)
    S = torch.linalg.svdvals(La.mT @ Lb)
    bad = (ia != 0) | (ib != 0)
    if bad.any():
        S[bad] = factored_svd(Af[bad], Bf[bad]).S
    return S


COVERAGE_OF = ("sigma", "sigma2")      # "sigma": the paper's (utils/plot_utils.py:123-124); "sigma2": variant


def singular_value_coverage(S, of: str = "sigma2") -> Tensor:
    """Cumulative share, [..., k] (NaN if all zero): of "sigma2" sum sigma^2 (c_r = sum_{i<=r} s_i^2 /
    sum_i s_i^2), of "sigma" sum sigma (the paper's np.cumsum(S) / sum(S))."""
    if of not in COVERAGE_OF:
        raise ValueError(f"coverage of must be one of {COVERAGE_OF}, got {of!r}")
    S = tensor(S, torch.float64)
    w = S.pow(2) if of == "sigma2" else S
    return w.cumsum(-1) / w.sum(-1, keepdim=True)


def rank_at_coverage(S, level: float = COVERAGE_LEVEL, of: str = "sigma2") -> Tensor:
    """Smallest rank r (1-based) with coverage c_r >= level ("sigma2") or c_r > level ("sigma": the paper's
    strict np.argmax(coverage > 99), utils/plot_utils.py:128), at most k, [...]; 0 where every sigma is zero."""
    c = singular_value_coverage(S, of)
    below = (c <= level) if of == "sigma" else (c < level - 1e-12)
    r = below.sum(-1) + 1
    r = torch.minimum(r, torch.full_like(r, c.shape[-1]))
    return torch.where(torch.isnan(c[..., -1]), torch.zeros_like(r), r)


def coverage_table(S: Tensor, kind: str, level: float = COVERAGE_LEVEL, of: str = "sigma2") -> dict[str, np.ndarray]:
    """Columns of one row per head of singular values S [H, k] (or [k]): kind, head, n_singular,
    rank_at_level (``rank_at_coverage``), percent_of_features (the paper's x-axis: 100 (r - 1) / (k - 1)),
    level, coverage_of, sigma_1, frobenius (sqrt of sum sigma^2). A dict of equal-length arrays
    (``pandas.DataFrame(...)`` is the table)."""
    S = S if S.ndim == 2 else S[None]
    H, k = S.shape
    r = rank_at_coverage(S, level, of).cpu().numpy()
    pct = 100.0 * (r - 1) / max(1, k - 1)
    return {"kind": np.full(H, kind, dtype=object), "head": np.arange(H), "n_singular": np.full(H, k),
            "rank_at_level": r, "percent_of_features": pct, "level": np.full(H, float(level)),
            "coverage_of": np.full(H, of, dtype=object), "sigma_1": S[:, 0].cpu().numpy(),
            "frobenius": S.pow(2).sum(-1).sqrt().cpu().numpy()}


def coverage_curve(S: Tensor, kind: str, of: str = "sigma2") -> dict[str, np.ndarray]:
    """Columns of the cumulative coverage (``singular_value_coverage``, ``of``) of singular values S [H, k]
    (or [k]), one row per (head, rank): kind, head, rank (1-based), sigma, coverage."""
    S = S if S.ndim == 2 else S[None]
    c = singular_value_coverage(S, of)
    H, k = S.shape
    return {"kind": np.full(H * k, kind, dtype=object), "head": np.repeat(np.arange(H), k),
            "rank": np.tile(np.arange(1, k + 1), H), "sigma": S.reshape(-1).cpu().numpy(),
            "coverage": c.reshape(-1).cpu().numpy()}

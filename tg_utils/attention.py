"""Attention geometry after "Traveling Words" (Molina 2023): the weights read as geometry (issue 8,
notebook 07). Pure functions of tensors: weight matrices, norm weights or norm callables, embedding
matrices and, for readable tables, a tokenizer. Nothing here knows a model class.

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
matrix. Float64 (the scans over the vocabulary run in float32, ``SCAN_DTYPE``). ``SVD`` holds U [.., m, k], S [.., k] (descending), V [.., n, k],
k = min(m, n, r). For W_qk, U holds *query-side* directions and V *key-side* directions; for W_vo,
U holds *input* (read) directions and V *output* (write) directions.

Sign convention (``sign_align``): a singular pair (u_i, v_i) is defined up to a joint sign flip. Let
x_i be the reference side's vector (u_i for side="left", v_i for side="right") and R the reference
matrix (rows = tokens, after the given norm). With s = R @ x_i, the pair is flipped (u_i, v_i) ->
(-u_i, -v_i) iff max(s) < -min(s), i.e. iff max(s) + min(s) < 0; after alignment the largest dot
product with the reference matrix is at least the magnitude of the most negative one (ties: no
flip). Defaults used by ``head_svd``: W_qk aligned on the query side (U) against the input-normed
embeddings; W_vo aligned on the output side (V) against the unembedding rows (W_U.T) -- the matrix
each direction is probed with. The flip leaves M unchanged. ``components=n`` aligns only the first n
pairs per head (the probed ones; on a 262k vocabulary aligning all d_head pairs costs tens of seconds).

Coverage (``singular_value_coverage``): c_r = sum_{i<=r} sigma_i^2 / sum_i sigma_i^2, the share of the
squared Frobenius norm captured by the best rank-r approximation (Eckart-Young). ``rank_at_coverage``
is the smallest r (1-based) with c_r >= level (default 0.99); 0 for an all-zero matrix.

Norms (``as_norm``): wherever a norm is accepted it may be None (identity), any callable on a
[n, d] tensor (an nn.Module such as the block's own ``input_layernorm``: Gemma's RMSNorm with its
(1 + w) scale is then exact; it runs under no_grad in the module's dtype), or an object with
``.module`` (a ``models.NormInfo``: its module is used). ``rms_norm`` / ``layer_norm`` are the
explicit formulas x / rms(x) * w and (x - mean) / std * w + b. For the QK probe the *block's
attention-input norm* is applied to the embedding rows (pre-norm models: the block's attn norm; a
post-norm block reads the un-normalised stream, so pass the norm that produced its input, or None).

Embedding norms (``embedding_norm_scores``), per token row e (all float64):
    norm         ||e||
    scaled_norm  ||g * e||       g = the final norm's *effective* weight (Gemma: 1 + w); g = 1 if None
    bias         b . e           b = the final norm's bias; None for RMSNorm (it has no bias)
    both         sqrt(d) * ||g * e|| + b . e    (None without a bias)
Why that combination: the logit of token t is (g * x_hat + b) . e_t = x_hat . (g * e_t) + b . e_t
where x_hat is the normalised state, of norm sqrt(d) (RMSNorm: rms 1; LayerNorm: mean 0, variance 1).
Its maximum over x_hat is sqrt(d) ||g * e_t|| + b . e_t (exact for RMSNorm; for LayerNorm, whose
x_hat is also orthogonal to the all-ones vector, an upper bound). So "both" is the largest logit a
token can reach, the quantity whose top and bottom tokens the two terms compete for. ``radius``
overrides sqrt(d). For untied models the logit reading holds for the unembedding rows (W_U.T).

Attention-ellipse probe (``ellipse_probe``): for query token t with x = norm(W_E[t]) and each head:
keys = the top-k tokens y over the vocabulary by x @ W_qk[h] @ norm(W_E[y]).T (positionless, no
softmax); update = x @ W_vo[h] (what the head writes when it attends to this token), read out as
(update * g) @ W_U with g the final norm's effective weight if given (the linear part of the final
norm: its centring and 1/rms rescaling are dropped; g=None: plain update @ W_U); the top-k tokens
are those the update moves toward. Query words: ``single_token_nouns`` keeps a noun iff
``prefix + noun`` (default prefix " ", the in-context form inside a sentence) encodes, without special
tokens, to exactly one token id; that id is the query token. Nouns come from data/common_nouns.txt
(``load_common_nouns``: one noun per line, lines starting with '#' are comments).

UMAP trajectory (``umap_trajectory``): a 3-D UMAP fitted on embedding rows with the cosine metric
(states and embeddings differ in scale; cosine makes that irrelevant), then every layer's state of a
phrase projected with ``transform``. Speed: n_fit rows (default 5000) are drawn from the non-zero
rows of W_E with numpy's default_rng(seed) without replacement (all rows when fewer), their exact
cosine kNN graph is computed with one torch matmul and handed to UMAP as a sparse precomputed
distance matrix (umap's own paths compile numba kernels or brute-force a callable metric and take
minutes on 2 cores); new points get their exact kNN among the fitted rows the same way.
``n_epochs`` defaults to 200 (UMAP's own default for small data is 500). random_state=seed,
transform_seed=seed, n_jobs=1: the same inputs give the same coordinates.

Public API
----------
rms_norm(x, weight=None, eps=1e-6, weight_offset=0.) / layer_norm(x, weight, bias, eps) -> Tensor
as_norm(norm) -> Callable[[Tensor], Tensor]
embedding_norm_scores(W_E, norm_weight=None, norm_bias=None, radius=None) -> EmbeddingNormScores
top_bottom_tokens(scores, tokenizer=None, k=10) -> DataFrame
    [scoring, rank, side, token_id, token, token_raw, score]
kv_head_map(n_heads, n_kv_heads) -> LongTensor [n_heads]
qk_factors(W_Q, W_K, kv_map=None, scale=None) -> FactoredMatrix   (A [H,d,dh], B [H,dh,d])
vo_factors(W_V, W_O, kv_map=None) -> FactoredMatrix
qk_matrices(...) / vo_matrices(...) -> Tensor [H, d, d]            (dense; small models, tests)
FactoredMatrix(A, B): .dense(), .svd() -> SVD;  factored_svd(A, B) -> SVD
SVD(U, S, V): .matrix(), .coverage(), .rank_at(level)
sign_align(svd, ref, side="left", norm=None, components=None) -> SVD
singular_value_coverage(S) -> Tensor [..., k];  rank_at_coverage(S, level=0.99) -> LongTensor [...]
coverage_table(svd, kind, level=0.99) -> DataFrame [kind, head, n_singular, rank_at_level, level,
    sigma_1, frobenius]
coverage_curve(svd, kind) -> DataFrame [kind, head, rank, sigma, coverage]
vocab_extremes(vectors, rows, k=10, norm=None) -> VocabExtremes (top/bottom values and ids)
head_svd(W_Q, W_K, W_V, W_O, W_E, W_U=None, norm=None, kv_map=None, scale=None, components=None)
    -> HeadSVD(qk, vo)
singular_direction_tokens(head_svd, W_E, W_U=None, norm=None, tokenizer=None, n_components=5, k=10)
    -> DataFrame [kind, head, component, sigma, side, rank, token_id, token, token_raw, score]
load_common_nouns(path="data/common_nouns.txt") -> list[str]
single_token_nouns(tokenizer, nouns, prefix=" ") -> DataFrame [noun, token_id, token]
ellipse_probe(query_ids, W_E, W_Q, W_K, W_V, W_O, W_U=None, norm=None, ...) -> DataFrame
    [noun, query_id, head, probe, rank, token_id, token, token_raw, score]
umap_trajectory(W_E, states, n_neighbors=15, seed=0, n_fit=5000, ...) -> UmapTrajectory
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "COVERAGE_LEVEL", "NOUNS_PATH",
    "rms_norm", "layer_norm", "as_norm",
    "EmbeddingNormScores", "embedding_norm_scores", "top_bottom_tokens", "token_strings",
    "kv_head_map", "FactoredMatrix", "SVD", "factored_svd", "qk_factors", "vo_factors",
    "qk_matrices", "vo_matrices", "sign_align", "singular_value_coverage", "rank_at_coverage",
    "coverage_table", "coverage_curve", "VocabExtremes", "vocab_extremes", "HeadSVD", "head_svd",
    "singular_direction_tokens", "load_common_nouns", "single_token_nouns", "ellipse_probe",
    "UmapTrajectory", "umap_trajectory",
]

COVERAGE_LEVEL = 0.99
NOUNS_PATH = "data/common_nouns.txt"
CHUNK = 16384                 # vocabulary rows per chunk in every scan over the vocabulary
SCAN_DTYPE = torch.float32    # dtype of vocabulary-sized products (float64 for the SVDs)

Tensor = torch.Tensor


def _t(x, dtype=None) -> Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach()
    return t if dtype is None else t.to(dtype)


# ============================================================================ norms

def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6,
             weight_offset: float = 0.0) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * (weight + weight_offset) over the last axis (Llama: offset 0;
    Gemma: offset 1). weight None: no scaling."""
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * (weight.to(y) + weight_offset)
    return y


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance, as nn.LayerNorm)."""
    xc = x - x.mean(-1, keepdim=True)
    y = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(y)
    if bias is not None:
        y = y + bias.to(y)
    return y


def _identity(x: Tensor) -> Tensor:
    return x


def as_norm(norm) -> Callable[[Tensor], Tensor]:
    """A norm function on [n, d] tensors from None (identity), a callable (an nn.Module runs under no_grad
    in its parameters' dtype and device; the result comes back in the input's dtype and device), or an
    object with a ``.module`` attribute (``models.NormInfo``)."""
    if norm is None:
        return _identity
    if not callable(norm) and hasattr(norm, "module"):
        return as_norm(norm.module)
    if isinstance(norm, torch.nn.Module):
        p = next(norm.parameters(), None)

        def run(x: Tensor, _m=norm, _p=p) -> Tensor:
            with torch.no_grad():
                y = _m(x if _p is None else x.to(dtype=_p.dtype, device=_p.device))
            return y.to(dtype=x.dtype, device=x.device)
        return run
    if callable(norm):
        return norm
    raise TypeError(f"cannot use {type(norm).__name__} as a norm: pass None, a callable or a NormInfo")


def _chunks(n: int, chunk: int):
    for i in range(0, n, chunk):
        yield i, min(i + chunk, n)


# ============================================================================ embedding norms

@dataclass
class EmbeddingNormScores:
    """The four token scorings of ``embedding_norm_scores`` (float64 arrays [vocab], or None)."""
    norm: np.ndarray
    scaled_norm: np.ndarray
    bias: np.ndarray | None
    both: np.ndarray | None
    radius: float
    note: str = ""

    def as_dict(self) -> dict[str, np.ndarray]:
        """The scorings that exist, in the order norm, scaled_norm, bias, both."""
        d = {"norm": self.norm, "scaled_norm": self.scaled_norm, "bias": self.bias, "both": self.both}
        return {k: v for k, v in d.items() if v is not None}


def embedding_norm_scores(W_E, norm_weight=None, norm_bias=None, radius: float | None = None,
                          chunk: int = CHUNK) -> EmbeddingNormScores:
    """Score every embedding row e (W_E [vocab, d]): ||e||, ||g * e||, b . e and sqrt(d) ||g * e|| + b . e
    (see the module docstring for why). ``norm_weight`` g is the final norm's effective weight (Gemma:
    1 + w), ``norm_bias`` b its bias; without a bias (RMSNorm) ``bias`` and ``both`` are None and
    ``note`` says so. ``radius`` (default sqrt(d)) is the norm of a normalised state."""
    W = _t(W_E)
    V, d = W.shape
    g = None if norm_weight is None else _t(norm_weight, torch.float64).to(W.device)
    b = None if norm_bias is None else _t(norm_bias, torch.float64).to(W.device)
    for name, v in (("norm_weight", g), ("norm_bias", b)):
        if v is not None and v.shape != (d,):
            raise ValueError(f"{name} has shape {tuple(v.shape)}; the embedding width is {d}")
    r = math.sqrt(d) if radius is None else float(radius)
    norm = np.empty(V)
    scaled = np.empty(V)
    bias = None if b is None else np.empty(V)
    for i, j in _chunks(V, chunk):
        e = W[i:j].to(torch.float64)
        norm[i:j] = torch.linalg.vector_norm(e, dim=1).cpu().numpy()
        scaled[i:j] = (norm[i:j] if g is None
                       else torch.linalg.vector_norm(e * g, dim=1).cpu().numpy())
        if b is not None:
            bias[i:j] = (e @ b).cpu().numpy()
    notes = []
    if g is None:
        notes.append("no final-norm weight: scaled_norm equals norm")
    if b is None:
        notes.append("the final norm has no bias (RMSNorm, or a LayerNorm without bias): "
                     "the bias and both scorings do not exist")
    both = None if bias is None else r * scaled + bias
    return EmbeddingNormScores(norm=norm, scaled_norm=scaled, bias=bias, both=both, radius=r,
                               note="; ".join(notes))


def token_strings(tokenizer, ids: Sequence[int]) -> tuple[list[str], list[str]]:
    """(decoded, raw) strings of token ids: ``tokenizer.decode([id])`` (readable; a lone byte of a
    multi-byte character decodes to U+FFFD) and ``convert_ids_to_tokens`` (the vocabulary entry, e.g.
    'Ġcat'). Without a tokenizer both are str(id)."""
    ids = [int(i) for i in ids]
    if tokenizer is None:
        s = [str(i) for i in ids]
        return s, list(s)
    uniq = sorted(set(ids))
    dec = {i: tokenizer.decode([i]) for i in uniq}
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        raw_list = tokenizer.convert_ids_to_tokens(uniq)
    else:                                                       # a raw tokenizers.Tokenizer
        raw_list = [tokenizer.id_to_token(i) for i in uniq]
    raw = {i: (str(t) if t is not None else "") for i, t in zip(uniq, raw_list)}
    return [dec[i] for i in ids], [raw[i] for i in ids]


def top_bottom_tokens(scores, tokenizer=None, k: int = 10):
    """Tidy table of the k highest (side "top", rank 1 = highest) and k lowest (side "bottom", rank 1 =
    lowest) tokens of each scoring. ``scores``: an EmbeddingNormScores (only the scorings that exist), a
    mapping name -> array [vocab] (None values skipped), or one array (scoring "score"). NaN scores
    are left out; ties go to the lower token id. Columns: scoring, rank, side, token_id, token,
    token_raw, score."""
    import pandas as pd

    if isinstance(scores, EmbeddingNormScores):
        items = scores.as_dict()
    elif isinstance(scores, Mapping):
        items = {name: s for name, s in scores.items() if s is not None}
    else:
        items = {"score": scores}
    rows = []
    for name, s in items.items():
        s = np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s, dtype=np.float64)
        ok = np.flatnonzero(~np.isnan(s))
        vals = s[ok]
        kk = min(k, len(ok))
        top = ok[np.argsort(-vals, kind="stable")[:kk]]
        bot = ok[np.argsort(vals, kind="stable")[:kk]]
        for side, ids in (("top", top), ("bottom", bot)):
            for r, i in enumerate(ids, start=1):
                rows.append((name, r, side, int(i), float(s[i])))
    df = pd.DataFrame(rows, columns=["scoring", "rank", "side", "token_id", "score"])
    dec, raw = token_strings(tokenizer, df["token_id"].tolist())
    df.insert(4, "token", dec)
    df.insert(5, "token_raw", raw)
    return df


# ============================================================================ per-head matrices

def kv_head_map(n_heads: int, n_kv_heads: int | None = None) -> Tensor:
    """Query head -> key/value head for grouped-query attention: h // (n_heads // n_kv_heads)
    (consecutive query heads share a kv head, as in Llama's repeat_kv)."""
    n_kv = n_heads if n_kv_heads is None else int(n_kv_heads)
    if n_kv < 1 or n_heads % n_kv:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv}")
    return torch.arange(n_heads) // (n_heads // n_kv)


def _kv(kv_map, n_heads: int, n_kv: int) -> Tensor:
    m = kv_head_map(n_heads, n_kv) if kv_map is None else _t(kv_map).long().cpu()
    if m.shape != (n_heads,) or (m.numel() and (m.min() < 0 or m.max() >= n_kv)):
        raise ValueError(f"kv_map must be [n_heads={n_heads}] with entries in [0, {n_kv}), got {m.tolist()}")
    return m


@dataclass
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


def factored_svd(A, B) -> SVD:
    """SVD of M = A @ B (A [..., m, r], B [..., r, n]) through the factors: reduced QR of A and of B^T,
    SVD of the small core Ra Rb^T; never forms the m x n matrix. Float64. k = min(m, n, r) triplets."""
    A, B = _t(A, torch.float64), _t(B, torch.float64)
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
        A, B = _t(A), _t(B)
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
    W_Q, W_K = _t(W_Q, torch.float64), _t(W_K, torch.float64)
    H, _, dh = W_Q.shape
    m = _kv(kv_map, H, W_K.shape[0])
    s = dh ** -0.5 if scale is None else float(scale)
    return FactoredMatrix(W_Q * s, W_K[m.to(W_K.device)].mT)


def vo_factors(W_V, W_O, kv_map=None) -> FactoredMatrix:
    """W_vo[h] = W_V[kv_map[h]] @ W_O[h] as factors A = W_V[kv_map] [H, d, dh], B = W_O [H, dh, d]
    (float64 copies)."""
    W_V, W_O = _t(W_V, torch.float64), _t(W_O, torch.float64)
    m = _kv(kv_map, W_O.shape[0], W_V.shape[0])
    return FactoredMatrix(W_V[m.to(W_V.device)], W_O)


def qk_matrices(W_Q, W_K, kv_map=None, scale: float | None = None) -> Tensor:
    """Dense W_qk per head, [H, d, d] float64 (small models and tests; use qk_factors otherwise)."""
    return qk_factors(W_Q, W_K, kv_map, scale).dense()


def vo_matrices(W_V, W_O, kv_map=None) -> Tensor:
    """Dense W_vo per head, [H, d, d] float64."""
    return vo_factors(W_V, W_O, kv_map).dense()


def singular_value_coverage(S) -> Tensor:
    """Cumulative share of sum sigma^2: c_r = sum_{i<=r} s_i^2 / sum_i s_i^2, [..., k] (NaN if all zero)."""
    S = _t(S, torch.float64)
    s2 = S.pow(2)
    return s2.cumsum(-1) / s2.sum(-1, keepdim=True)


def rank_at_coverage(S, level: float = COVERAGE_LEVEL) -> Tensor:
    """Smallest rank r (1-based) with coverage c_r >= level, [...]; 0 where every sigma is zero."""
    c = singular_value_coverage(S)
    r = (c < level - 1e-12).sum(-1) + 1
    r = torch.minimum(r, torch.full_like(r, c.shape[-1]))
    return torch.where(torch.isnan(c[..., -1]), torch.zeros_like(r), r)


# ---------------------------------------------------------------- scans over the vocabulary

@dataclass
class VocabExtremes:
    """For each of m vectors: the k largest and k smallest scores over the vocabulary and their ids
    (descending / ascending), [m, k] each."""
    top_values: Tensor
    top_ids: Tensor
    bottom_values: Tensor
    bottom_ids: Tensor


def vocab_extremes(vectors, rows, k: int = 10, norm=None, chunk: int = CHUNK,
                   dtype: torch.dtype = SCAN_DTYPE, bottom: bool = True) -> VocabExtremes:
    """Scores norm(rows) @ vectors.T (rows [vocab, d], e.g. W_E or W_U.T; vectors [m, d]) scanned in
    chunks of the vocabulary, keeping the k largest (and, if ``bottom``, the k smallest) per vector.
    Computed in ``dtype`` on the rows' device; results on the CPU (bottom_* empty without ``bottom``)."""
    R = _t(rows)
    X = _t(vectors, dtype).to(R.device)
    if X.ndim == 1:
        X = X[None]
    f = as_norm(norm)
    m, V = X.shape[0], R.shape[0]
    k = min(k, V)
    tv = torch.empty(m, 0, dtype=dtype, device=R.device)
    ti = torch.empty(m, 0, dtype=torch.long, device=R.device)
    bv, bi = tv.clone(), ti.clone()

    def merge(vals, ids, s, i, largest):
        cv, ci = s.topk(min(k, s.shape[1]), dim=1, largest=largest)        # chunk's own extremes first
        vals, idx = torch.cat([vals, cv], 1).topk(min(k, vals.shape[1] + cv.shape[1]), dim=1,
                                                  largest=largest)
        return vals, torch.cat([ids, ci + i], 1).gather(1, idx)

    for i, j in _chunks(V, chunk):
        s = X @ f(R[i:j].to(dtype)).T                                       # [m, c]
        tv, ti = merge(tv, ti, s, i, True)
        if bottom:
            bv, bi = merge(bv, bi, s, i, False)
    return VocabExtremes(tv.cpu(), ti.cpu(), bv.cpu(), bi.cpu())


def sign_align(svd: SVD, ref, side: str = "left", norm=None, chunk: int = CHUNK,
               components: int | None = None) -> SVD:
    """Fix the sign of every singular pair: with x_i the ``side`` vector (left: U[..., :, i], right:
    V[..., :, i]) and s = norm(ref) @ x_i, flip (u_i, v_i) -> (-u_i, -v_i) iff max(s) < -min(s).
    Afterwards max(s) >= |min(s)| for every pair. ref: [vocab, d] rows (the input-normed embeddings are
    formed chunk by chunk through ``norm``). Batched over heads; M is unchanged. ``components``: align
    only the first that many pairs (the ones that will be probed; a large vocabulary times every
    component is the costly part), leaving the rest as they are."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    X = svd.U if side == "left" else svd.V                     # [..., d, k]
    lead, d, k = X.shape[:-2], X.shape[-2], X.shape[-1]
    c = k if components is None else max(0, min(int(components), k))
    vecs = X[..., :c].mT.reshape(-1, d)                        # [(...) * c, d]
    sign = torch.ones(*lead, k, dtype=X.dtype, device=X.device)
    if c:
        ext = vocab_extremes(vecs, ref, k=1, norm=norm, chunk=chunk)
        flip = (ext.top_values[:, 0] + ext.bottom_values[:, 0]) < 0
        sign[..., :c] = torch.where(flip, -1.0, 1.0).reshape(*lead, c).to(sign)
    return SVD(U=svd.U * sign[..., None, :], S=svd.S, V=svd.V * sign[..., None, :])


def _head_index(lead: tuple[int, ...]) -> int:
    if len(lead) > 1:
        raise ValueError(f"expected one leading (head) axis, got {lead}")
    return lead[0] if lead else 1


def coverage_table(svd: SVD, kind: str, level: float = COVERAGE_LEVEL):
    """One row per head: kind, head, n_singular, rank_at_level (smallest r with coverage >= level),
    level, sigma_1, frobenius (sqrt of sum sigma^2)."""
    import pandas as pd

    S = svd.S if svd.S.ndim == 2 else svd.S[None]
    r = rank_at_coverage(S, level)
    return pd.DataFrame({
        "kind": kind, "head": np.arange(S.shape[0]), "n_singular": S.shape[-1],
        "rank_at_level": r.cpu().numpy(), "level": level, "sigma_1": S[:, 0].cpu().numpy(),
        "frobenius": S.pow(2).sum(-1).sqrt().cpu().numpy()})


def coverage_curve(svd: SVD, kind: str):
    """Long table of the cumulative coverage: kind, head, rank (1-based), sigma, coverage."""
    import pandas as pd

    S = svd.S if svd.S.ndim == 2 else svd.S[None]
    c = singular_value_coverage(S)
    H, k = S.shape
    return pd.DataFrame({
        "kind": kind, "head": np.repeat(np.arange(H), k), "rank": np.tile(np.arange(1, k + 1), H),
        "sigma": S.reshape(-1).cpu().numpy(), "coverage": c.reshape(-1).cpu().numpy()})


@dataclass
class HeadSVD:
    """Sign-aligned SVDs of one layer's heads: qk (U = query side, V = key side) and vo (U = input side,
    V = output side), each batched over heads."""
    qk: SVD
    vo: SVD


def head_svd(W_Q, W_K, W_V, W_O, W_E, W_U=None, norm=None, kv_map=None, scale: float | None = None,
             components: int | None = None, chunk: int = CHUNK) -> HeadSVD:
    """SVD of every head's W_qk and W_vo through the factors, sign-aligned: W_qk on the query side
    against norm(W_E) (the block's input norm on the embedding rows), W_vo on the output side against
    the unembedding rows W_U.T ([d, vocab] -> rows; W_U None: W_E, i.e. tied embeddings).
    ``components``: sign-align only the first that many pairs per head (None: all)."""
    qk = sign_align(qk_factors(W_Q, W_K, kv_map, scale).svd(), W_E, "left", norm, chunk, components)
    out_rows = _t(W_E) if W_U is None else _t(W_U).T
    vo = sign_align(vo_factors(W_V, W_O, kv_map).svd(), out_rows, "right", None, chunk, components)
    return HeadSVD(qk=qk, vo=vo)


def singular_direction_tokens(hs: HeadSVD, W_E, W_U=None, norm=None, tokenizer=None,
                              n_components: int = 5, k: int = 10, chunk: int = CHUNK):
    """The tokens each of the top ``n_components`` singular directions of every head selects (top k by
    dot product, after sign alignment): W_qk query (U) and key (V) directions against norm(W_E); W_vo
    input directions (U) against norm(W_E), output directions (V) against the unembedding rows W_U.T
    (W_U None: W_E). Columns: kind, head, component (0-based), sigma, side, rank, token_id, token,
    token_raw, score."""
    import pandas as pd

    out_rows = _t(W_E) if W_U is None else _t(W_U).T
    rows = []
    for kind, svd, sides in (("qk", hs.qk, (("query", "U", W_E, norm), ("key", "V", W_E, norm))),
                             ("vo", hs.vo, (("input", "U", W_E, norm), ("output", "V", out_rows, None)))):
        S = svd.S if svd.S.ndim == 2 else svd.S[None]
        H, kmax = S.shape
        c = min(n_components, kmax)
        for side, attr, ref, nrm in sides:
            X = getattr(svd, attr)
            X = X if X.ndim == 3 else X[None]
            vecs = X[..., :c].mT.reshape(H * c, -1)              # head-major, then component
            ext = vocab_extremes(vecs, ref, k=k, norm=nrm, chunk=chunk, bottom=False)
            kk = ext.top_ids.shape[1]
            heads = np.repeat(np.arange(H), c * kk)
            comps = np.tile(np.repeat(np.arange(c), kk), H)
            rows.append(pd.DataFrame({
                "kind": kind, "head": heads, "component": comps,
                "sigma": S[:, :c].cpu().numpy()[heads, comps], "side": side,
                "rank": np.tile(np.arange(1, kk + 1), H * c),
                "token_id": ext.top_ids.reshape(-1).numpy(),
                "score": ext.top_values.reshape(-1).double().numpy()}))
    df = pd.concat(rows, ignore_index=True)
    dec, raw = token_strings(tokenizer, df["token_id"].tolist())
    df.insert(7, "token", dec)
    df.insert(8, "token_raw", raw)
    return df


# ============================================================================ attention-ellipse probe

def load_common_nouns(path: str | os.PathLike = NOUNS_PATH) -> list[str]:
    """The noun list: one noun per line; blank lines and lines starting with '#' are skipped.
    A relative path is resolved from the repository root."""
    from .paths import resolve

    lines = resolve(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    if hasattr(tokenizer, "encode_batch"):                      # a raw tokenizers.Tokenizer
        return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def single_token_nouns(tokenizer, nouns: Sequence[str], prefix: str = " "):
    """The nouns that are exactly one token in their in-context form: ``prefix + noun`` (default " noun",
    as inside a sentence) encoded without special tokens gives exactly one id. Duplicates (a noun
    listed twice) are kept once; order follows ``nouns``. Columns: noun, token_id, token (decoded)."""
    import pandas as pd

    uniq = list(dict.fromkeys(n.strip() for n in nouns if n.strip()))
    ids = _encode(tokenizer, [prefix + n for n in uniq])
    keep = [(n, i[0]) for n, i in zip(uniq, ids) if len(i) == 1]
    df = pd.DataFrame(keep, columns=["noun", "token_id"])
    df["token_id"] = df["token_id"].astype(np.int64)
    df["token"] = [tokenizer.decode([int(i)]) for i in df["token_id"]]
    return df


def ellipse_probe(query_ids, W_E, W_Q, W_K, W_V, W_O, W_U=None, norm=None, kv_map=None,
                  scale: float | None = None, final_norm_weight=None, k: int = 10,
                  heads: Sequence[int] | None = None, tokenizer=None, labels: Sequence[str] | None = None,
                  layer: int | None = None, chunk: int = CHUNK):
    """For each query token id (x = norm(W_E[id])) and head h: the top-k keys over the vocabulary by
    x @ W_qk[h] @ norm(W_E[y]).T (probe "keys") and the top-k tokens the update x @ W_vo[h] moves
    toward, scored (update * g) @ W_U (probe "update"; g = final_norm_weight, the final norm's
    effective weight, or 1; W_U None: W_E.T). ``labels`` name the queries (default: decoded token).
    Columns: [layer,] noun, query_id, head, probe, rank, token_id, token, token_raw, score."""
    import pandas as pd

    f = as_norm(norm)
    E = _t(W_E)
    W_Q, W_K, W_V, W_O = (_t(w, torch.float64).cpu() for w in (W_Q, W_K, W_V, W_O))
    H, d, dh = W_Q.shape
    m = _kv(kv_map, H, W_K.shape[0])
    hs = list(range(H)) if heads is None else [int(h) for h in heads]
    qids = [int(i) for i in (query_ids.tolist() if hasattr(query_ids, "tolist") else query_ids)]
    n = len(qids)
    if labels is None:
        labels = token_strings(tokenizer, qids)[0]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} queries")
    s = dh ** -0.5 if scale is None else float(scale)
    x = f(E[qids].to(torch.float64)).to(torch.float64).cpu()      # [n, d] normed queries
    # key directions: score(y) = norm(e_y) . (W_K[g] @ (s * x @ W_Q[h]))
    kdir = torch.stack([(s * x @ W_Q[h]) @ W_K[m[h]].T for h in hs])    # [nh, n, d]
    upd = torch.stack([(x @ W_V[m[h]]) @ W_O[h] for h in hs])           # [nh, n, d]
    if final_norm_weight is not None:
        upd = upd * _t(final_norm_weight, torch.float64).cpu()
    key_ext = vocab_extremes(kdir.reshape(-1, d), E, k=k, norm=f, chunk=chunk, bottom=False)
    out_rows = E if W_U is None else _t(W_U).T
    upd_ext = vocab_extremes(upd.reshape(-1, d), out_rows, k=k, norm=None, chunk=chunk, bottom=False)
    frames = []
    for probe, ext in (("keys", key_ext), ("update", upd_ext)):
        kk = ext.top_ids.shape[1]
        hh = np.repeat(np.asarray(hs), n * kk)
        qq = np.tile(np.repeat(np.arange(n), kk), len(hs))
        frames.append(pd.DataFrame({
            "noun": np.asarray(labels, dtype=object)[qq], "query_id": np.asarray(qids)[qq], "head": hh,
            "probe": probe, "rank": np.tile(np.arange(1, kk + 1), n * len(hs)),
            "token_id": ext.top_ids.reshape(-1).numpy(),
            "score": ext.top_values.reshape(-1).double().numpy()}))
    df = pd.concat(frames, ignore_index=True)
    dec, raw = token_strings(tokenizer, df["token_id"].tolist())
    df.insert(6, "token", dec)
    df.insert(7, "token_raw", raw)
    if layer is not None:
        df.insert(0, "layer", int(layer))
    return df


# ============================================================================ UMAP trajectory

@dataclass
class UmapTrajectory:
    """coords [n_layers, n_tokens, 3]: each state projected into the embedding UMAP; norms
    [n_layers, n_tokens]: ||state|| as given; normed_norms: ||norm(state)|| (None without a norm);
    embedding_coords [n_fit, 3] and fit_ids [n_fit]: the fitted embedding rows (the background cloud);
    reducer: the fitted umap.UMAP (metric "precomputed": transform wants sparse kNN distances)."""
    coords: np.ndarray
    norms: np.ndarray
    normed_norms: np.ndarray | None
    embedding_coords: np.ndarray
    fit_ids: np.ndarray
    reducer: object


def _unit(X: Tensor) -> Tensor:
    return X / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min(1e-30)


def _knn_sparse(Q: Tensor, R: Tensor, k: int, exclude_self: bool, chunk: int = 4096):
    """Sparse [len(Q), len(R)] matrix of cosine distances (1 - cos, floored at 1e-8 so that every entry is
    stored) to the k nearest rows of R; exclude_self drops the query's own row (Q is R)."""
    import scipy.sparse as sp

    n = Q.shape[0]
    kk = k + 1 if exclude_self else k
    idx_all, dist_all = [], []
    for i, j in _chunks(n, chunk):
        sims = Q[i:j] @ R.T                                          # [c, n_R]
        vals, idx = sims.topk(kk, dim=1)
        if exclude_self:
            own = torch.arange(i, j, device=idx.device)[:, None]
            is_self = idx == own
            # a row whose own index is not among the kk (exact duplicates tie with it): drop the last
            no_self = ~is_self.any(1)
            is_self[no_self, -1] = True
            keep = ~is_self
            idx = idx[keep].reshape(j - i, k)
            vals = vals[keep].reshape(j - i, k)
        idx_all.append(idx.cpu())
        dist_all.append((1.0 - vals.double()).clamp(1e-8, 2.0).cpu())
    idx = torch.cat(idx_all).numpy().ravel()
    dist = torch.cat(dist_all).numpy().ravel()
    rows = np.repeat(np.arange(n), k)
    return sp.csr_matrix((dist, (rows, idx)), shape=(n, R.shape[0]))


def _numba_setup():
    """Before umap's numba kernels first run: choose numba's "workqueue" threading layer (unless
    NUMBA_THREADING_LAYER is set). Its default, the OpenMP layer, leaves a second OpenMP runtime in the
    process beside torch's, and afterwards every torch LAPACK call (QR, SVD) ran 20-30x slower here.
    Returns a context manager that caps numba's threads at torch's thread count (OMP_NUM_THREADS=1 means
    one thread for numba too) and restores the previous count."""
    import contextlib

    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        try:
            launched = numba.threading_layer()     # raises ValueError before the first parallel launch
        except ValueError:
            launched = None
        if launched is None:
            numba.config.THREADING_LAYER = "workqueue"

    @contextlib.contextmanager
    def capped():
        before = numba.get_num_threads()
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())))
        try:
            yield
        finally:
            numba.set_num_threads(before)
    return capped()


def umap_trajectory(W_E, states, n_neighbors: int = 15, seed: int = 0, n_fit: int | None = 5000,
                    n_epochs: int | None = 200, min_dist: float = 0.1, norm=None,
                    verbose: bool = False) -> UmapTrajectory:
    """Fit a 3-D UMAP (cosine) on n_fit embedding rows (seeded subsample; None: all rows) and project a
    phrase's states [n_layers, n_tokens, d] into it -> coords [n_layers, n_tokens, 3]. ``norm`` (e.g. the
    final norm) is applied to the states before projecting (the paper plots final-normed states); the
    norms of the states before and after it come back too. Deterministic for a given seed."""
    import scipy.sparse as sp

    E = _t(W_E, torch.float32)
    S = _t(states, torch.float32).to(E.device)
    if S.ndim != 3 or S.shape[-1] != E.shape[1]:
        raise ValueError(f"states must be [n_layers, n_tokens, d={E.shape[1]}], got {tuple(S.shape)}")
    L, T, d = S.shape
    norms = torch.linalg.vector_norm(S.double(), dim=-1).cpu().numpy()
    normed_norms = None
    if norm is not None:
        S = as_norm(norm)(S.reshape(-1, d)).reshape(L, T, d).to(torch.float32)
        normed_norms = torch.linalg.vector_norm(S.double(), dim=-1).cpu().numpy()
    nz = np.flatnonzero(torch.linalg.vector_norm(E, dim=1).cpu().numpy() > 0)
    if n_fit is not None and len(nz) > n_fit:
        fit_ids = np.sort(np.random.default_rng(seed).choice(nz, size=n_fit, replace=False))
    else:
        fit_ids = nz
    if len(fit_ids) <= n_neighbors + 1:
        raise ValueError(f"{len(fit_ids)} embedding rows are too few for n_neighbors={n_neighbors}")
    R = _unit(E[torch.as_tensor(fit_ids, device=E.device)])
    D = _knn_sparse(R, R, n_neighbors, exclude_self=True)
    D = D.maximum(D.T).tocsr()                      # symmetric kNN graph (umap checks symmetry)
    Q = _unit(S.reshape(-1, d))
    Dq = _knn_sparse(Q, R, n_neighbors, exclude_self=False)

    numba_threads = _numba_setup()
    import umap                                      # slow import (numba): only when needed
    with warnings.catch_warnings(), numba_threads:
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=3, n_neighbors=n_neighbors, min_dist=min_dist, metric="precomputed",
                            random_state=seed, transform_seed=seed, n_jobs=1, n_epochs=n_epochs,
                            verbose=verbose)
        emb = reducer.fit_transform(D)
        coords = reducer.transform(sp.csr_matrix(Dq))
    return UmapTrajectory(coords=np.asarray(coords, dtype=np.float64).reshape(L, T, 3), norms=norms,
                          normed_norms=normed_norms, embedding_coords=np.asarray(emb, dtype=np.float64),
                          fit_ids=fit_ids, reducer=reducer)

"""Reading vectors against the vocabulary: the one chunked scan for the top / bottom tokens of many
vectors (``vocab_extremes``), the embedding-norm scorings of every token, token strings, and the nouns
that are a single token. Results are tensors, arrays or dicts of equal-length columns (no pandas).

Embedding norms (``embedding_norm_scores``), per token row e (all float64), with g the final norm's
*effective* weight (Gemma: 1 + w; g = 1 if None) and b its bias (None for RMSNorm). The paper's four
settings (Traveling Words, word_embeddings.py:28-57, ``inspect_top_and_bottom_k``: the bias score
beta . e is taken on the unscaled e, line 39; the scaling replaces e by gamma * e, line 42; the bias score
is added to the norm, lines 44-46):
    norm         ||e||                 paper setting "original"
    scaled_norm  ||g * e||             paper setting "scale"
    bias         ||e|| + b . e         paper setting "bias"            (None without a bias)
    both         ||g * e|| + b . e     paper setting "bias_and_scale"  (None without a bias)
and two variants of this repository, labelled as such (``SCORINGS``):
    bias_term    b . e                              the bias term alone
    max_logit    sqrt(d) * ||g * e|| + b . e        the largest logit a token can reach
Why the variant max_logit: the logit of token t is (g * x_hat + b) . e_t = x_hat . (g * e_t) + b . e_t
where x_hat is the normalised state, of norm sqrt(d) (RMSNorm: rms 1; LayerNorm: mean 0, variance 1).
Its maximum over x_hat is sqrt(d) ||g * e_t|| + b . e_t (exact for RMSNorm; for LayerNorm, whose
x_hat is also orthogonal to the all-ones vector, an upper bound): the paper's "both" adds the two terms
at the scale of a unit-norm state instead, so the bias weighs sqrt(d) times more there. ``radius``
overrides sqrt(d). For untied models the logit reading holds for the unembedding rows (W_U.T).

Query words (``single_token_nouns``): a noun is kept iff ``prefix + noun`` encodes, without special tokens,
to exactly one token id; that id is the query token of the attention-ellipse probe (``probe.block_probe``).
Default prefix "": the bare noun, as the paper encodes it (common_nouns.py:28-33, ``encode(noun)`` with
tiktoken, no special tokens); the variant " " is the in-context form inside a sentence, for tokenizers
whose vocabulary holds few bare words.

Scans run in float32 (``SCAN_DTYPE``) over ``CHUNK`` vocabulary rows at a time; the SVDs are float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ._tensors import chunks, tensor
from .norms import as_norm

CHUNK = 16384                 # vocabulary rows per chunk in every scan over the vocabulary
SCAN_DTYPE = torch.float32    # dtype of vocabulary-sized products (float64 for the SVDs)

Tensor = torch.Tensor


# ============================================================================ the scan

@dataclass(frozen=True)
class VocabExtremes:
    """For each of m vectors: the k largest scores over the vocabulary and their ids (descending),
    [m, k]; and for the first nb vectors (see ``vocab_extremes``' ``bottom``) the k smallest (ascending),
    [nb, k]."""
    top_values: Tensor
    top_ids: Tensor
    bottom_values: Tensor
    bottom_ids: Tensor


def vocab_extremes(vectors, rows, k: int = 10, norm=None, chunk: int = CHUNK,
                   dtype: torch.dtype = SCAN_DTYPE, bottom: bool | int = True) -> VocabExtremes:
    """Scores norm(rows) @ vectors.T (rows [vocab, d], e.g. W_E or W_U.T; vectors [m, d]) scanned in
    chunks of the vocabulary in one pass, keeping the k largest per vector and the k smallest of the first
    ``bottom`` vectors (True: all, False: none; an int: that many leading vectors, so that vectors that
    need both ends and vectors that need only the top share one pass and one product per chunk).
    Computed in ``dtype`` on the rows' device (``scan_extremes``); results on the CPU."""
    ext = scan_extremes(vectors, rows, k, norm, chunk, dtype, bottom)
    return VocabExtremes(ext.top_values.cpu(), ext.top_ids.cpu(), ext.bottom_values.cpu(), ext.bottom_ids.cpu())


def scan_extremes(vectors, rows, k: int = 10, norm=None, chunk: int = CHUNK,
                  dtype: torch.dtype = SCAN_DTYPE, bottom: bool | int = True) -> VocabExtremes:
    """``vocab_extremes`` with its results left where it computed them: the vectors are moved to the rows'
    device, every buffer is made there and each chunk's scores are brought there (a norm callable may
    answer on its own device)."""
    R = tensor(rows)
    X = tensor(vectors, dtype).to(R.device)
    if X.ndim == 1:
        X = X[None]
    f = as_norm(norm)
    m, V = X.shape[0], R.shape[0]
    nb = (m if bottom else 0) if isinstance(bottom, bool) else max(0, min(int(bottom), m))
    k = min(k, V)
    tv = torch.empty(m, 0, dtype=dtype, device=R.device)
    ti = torch.empty(m, 0, dtype=torch.long, device=R.device)
    bv, bi = tv[:nb].clone(), ti[:nb].clone()

    def merge(vals, ids, s, i, largest):
        cv, ci = s.topk(min(k, s.shape[1]), dim=1, largest=largest)        # chunk's own extremes first
        vals, idx = torch.cat([vals, cv], 1).topk(min(k, vals.shape[1] + cv.shape[1]), dim=1,
                                                  largest=largest)
        return vals, torch.cat([ids, ci + i], 1).gather(1, idx)

    for i, j in chunks(V, chunk):
        s = X @ f(R[i:j].to(dtype)).to(R.device, dtype).T                   # [m, c]
        tv, ti = merge(tv, ti, s, i, True)
        if nb:
            bv, bi = merge(bv, bi, s[:nb], i, False)
    return VocabExtremes(tv, ti, bv, bi)


# ============================================================================ embedding norms

# name -> (procedure, definition): "paper" for the four settings of word_embeddings.py, "variant" for ours
SCORINGS = {
    "norm": ("paper", "||e|| (paper setting 'original')"),
    "scaled_norm": ("paper", "||gamma * e|| (paper setting 'scale')"),
    "bias": ("paper", "||e|| + beta . e (paper setting 'bias')"),
    "both": ("paper", "||gamma * e|| + beta . e (paper setting 'bias_and_scale')"),
    "bias_term": ("variant", "beta . e alone (the bias term of 'bias' and 'both')"),
    "max_logit": ("variant", "sqrt(d) ||gamma * e|| + beta . e (the largest logit reachable from a normalised "
                             "state)"),
}
PAPER_SETTINGS = {"norm": "original", "scaled_norm": "scale", "bias": "bias", "both": "bias_and_scale"}


@dataclass(frozen=True)
class EmbeddingNormScores:
    """The token scorings of ``embedding_norm_scores`` (float64 arrays [vocab], or None where the final
    norm has no bias): the paper's four (norm, scaled_norm, bias, both) and the variants bias_term and
    max_logit (see the module docstring)."""
    norm: np.ndarray
    scaled_norm: np.ndarray
    bias: np.ndarray | None
    both: np.ndarray | None
    bias_term: np.ndarray | None
    max_logit: np.ndarray | None
    radius: float
    note: str = ""

    def as_dict(self, variants: bool = True) -> dict[str, np.ndarray]:
        """The scorings that exist, in the order of ``SCORINGS`` (variants: include bias_term, max_logit)."""
        d = {name: getattr(self, name) for name, (proc, _) in SCORINGS.items() if variants or proc == "paper"}
        return {k: v for k, v in d.items() if v is not None}


def embedding_norm_scores(W_E, norm_weight=None, norm_bias=None, radius: float | None = None,
                          chunk: int = CHUNK) -> EmbeddingNormScores:
    """Score every embedding row e (W_E [vocab, d]) by the paper's four settings, ||e||, ||g * e||,
    ||e|| + b . e and ||g * e|| + b . e, and the variants b . e and sqrt(d) ||g * e|| + b . e (see the
    module docstring). ``norm_weight`` g is the final norm's effective weight (Gemma: 1 + w), ``norm_bias``
    b its bias; without a bias (RMSNorm) every scoring with b is None and ``note`` says so. ``radius``
    (default sqrt(d)) is the norm of a normalised state (max_logit only)."""
    W = tensor(W_E)
    V, d = W.shape
    g = None if norm_weight is None else tensor(norm_weight, torch.float64).to(W.device)
    b = None if norm_bias is None else tensor(norm_bias, torch.float64).to(W.device)
    for name, v in (("norm_weight", g), ("norm_bias", b)):
        if v is not None and v.shape != (d,):
            raise ValueError(f"{name} has shape {tuple(v.shape)}; the embedding width is {d}")
    r = math.sqrt(d) if radius is None else float(radius)
    norm = np.empty(V)
    scaled = np.empty(V)
    bias_term = None if b is None else np.empty(V)
    for i, j in chunks(V, chunk):
        e = W[i:j].to(torch.float64)
        norm[i:j] = torch.linalg.vector_norm(e, dim=1).cpu().numpy()
        scaled[i:j] = (norm[i:j] if g is None
                       else torch.linalg.vector_norm(e * g, dim=1).cpu().numpy())
        if b is not None:
            bias_term[i:j] = (e @ b).cpu().numpy()           # on the unscaled e (word_embeddings.py:39)
    notes = []
    if g is None:
        notes.append("no final-norm weight: scaled_norm equals norm")
    if b is None:
        notes.append("the final norm has no bias (RMSNorm, or a LayerNorm without bias): "
                     "the scorings with the bias (bias, both, bias_term, max_logit) do not exist")
    with_b = (lambda x: None) if bias_term is None else (lambda x: x + bias_term)
    return EmbeddingNormScores(norm=norm, scaled_norm=scaled, bias=with_b(norm), both=with_b(scaled),
                               bias_term=bias_term, max_logit=with_b(r * scaled), radius=r, note="; ".join(notes))


def top_bottom_tokens(scores, tokenizer=None, k: int = 10) -> dict[str, np.ndarray]:
    """Columns of the k highest (side "top", rank 1 = highest) and k lowest (side "bottom", rank 1 =
    lowest: the paper's "Bottom 1", word_embeddings.py:47-48, 73-79) tokens of each scoring. ``scores``: an
    EmbeddingNormScores (only the scorings that exist, variants included), a
    mapping name -> array [vocab] (None values skipped), or one array (scoring "score"). NaN scores
    are left out; ties go to the lower token id. Columns: scoring, rank, side, token_id, token,
    token_raw, score."""
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
    scoring, rank, side, ids, score = (list(c) for c in zip(*rows)) if rows else ([], [], [], [], [])
    dec, raw = token_strings(tokenizer, ids)
    return {"scoring": np.asarray(scoring, dtype=object), "rank": np.asarray(rank, dtype=np.int64),
            "side": np.asarray(side, dtype=object), "token_id": np.asarray(ids, dtype=np.int64),
            "token": np.asarray(dec, dtype=object), "token_raw": np.asarray(raw, dtype=object),
            "score": np.asarray(score, dtype=np.float64)}


# ============================================================================ token strings

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


def fmt_token(s: str) -> str:
    """A token as shown in the token lists: repr without the outer quotes (spaces and newlines visible)."""
    return repr(str(s))[1:-1].replace(" ", "␣")


# ============================================================================ single-token nouns

def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    if hasattr(tokenizer, "encode_batch"):                      # a raw tokenizers.Tokenizer
        return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def single_token_nouns(tokenizer, nouns: Sequence[str], prefix: str = "") -> dict[str, np.ndarray]:
    """The nouns that are exactly one token: ``prefix + noun`` (default "": the bare noun, as the paper's
    common_nouns.py:28-33; " ": the in-context form inside a sentence) encoded without special tokens
    gives exactly one id. Duplicates (a noun
    listed twice) are kept once; order follows ``nouns``. Columns: noun, token_id, token (decoded)."""
    uniq = list(dict.fromkeys(n.strip() for n in nouns if n.strip()))
    ids = _encode(tokenizer, [prefix + n for n in uniq])
    keep = [(n, i[0]) for n, i in zip(uniq, ids) if len(i) == 1]
    return {"noun": np.asarray([n for n, _ in keep], dtype=object),
            "token_id": np.asarray([i for _, i in keep], dtype=np.int64),
            "token": np.asarray([tokenizer.decode([int(i)]) for _, i in keep], dtype=object)}

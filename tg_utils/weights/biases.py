"""The query- and key-bias probes of Traveling Words (svd_analysis.py:313-349): what each head's attention
biases favour in the vocabulary, read against the block's input-normed embeddings.

With row vectors (``factored``'s conventions) the pre-softmax score of query x and key y (both after the
block's input norm) is (x W_Q + b_Q) (y W_K + b_K)^T: besides x W_qk y^T it has
    x W_Q b_K^T      the "query bias" term: a vector W_Q[h] b_K[g]^T in the query space (constant over
                     keys, so it cancels in the softmax; the paper probes it all the same, lines 313-322)
    b_Q W_K^T y^T    the "key bias" term: a vector b_Q[h] W_K[g]^T in the key space, a per-key prior that
                     survives the softmax (lines 324-333)
(g = kv_map[h]). For each head and each of the two vectors v the probe lists the top-k tokens of norm(rows)
by the dot product with +v (sign "+") and with -v (sign "-", the bottom-k of +v), as the paper's
``knn_per_head`` of the vector and of its negation (lines 315-322, 326-333). The score is the dot product
with the signed vector, unscaled (the paper applies no 1/sqrt(d_head) here). A model whose attention has
no query (key) bias has no key-bias (query-bias) vector: ``bias_probe`` returns None for it and says why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._tensors import tensor
from .factored import checked_kv_map
from .probe import _with_tokens
from .vocab import CHUNK, vocab_extremes

BIAS_COLUMNS = ["layer", "head", "bias", "sign", "rank", "token_id", "token", "token_raw", "score"]


@dataclass(frozen=True)
class BiasProbe:
    """The table of ``bias_probe`` (BIAS_COLUMNS; None when neither vector exists) and why a vector is
    missing (empty when both exist)."""
    table: dict[str, np.ndarray] | None
    note: str = ""


def bias_vectors(W_Q, W_K, b_Q=None, b_K=None, kv_map=None) -> dict[str, torch.Tensor]:
    """The paper's bias vectors per query head, float64 [H, d]: "query" = W_Q[h] b_K[g]^T (needs b_K) and
    "key" = b_Q[h] W_K[g]^T (needs b_Q); a vector whose bias is None is left out."""
    Wq, Wk = tensor(W_Q, torch.float64), tensor(W_K, torch.float64)
    m = checked_kv_map(kv_map, Wq.shape[0], Wk.shape[0])
    out = {}
    if b_K is not None:
        bk = tensor(b_K, torch.float64)[m]                              # [H, dh]
        out["query"] = torch.einsum("hdk,hk->hd", Wq, bk)               # svd_analysis.py:314
    if b_Q is not None:
        bq = tensor(b_Q, torch.float64)                                 # [H, dh]
        out["key"] = torch.einsum("hk,hdk->hd", bq, Wk[m])              # svd_analysis.py:325
    return out


def bias_probe(W_Q, W_K, b_Q, b_K, rows, norm=None, kv_map=None, k: int = 5, tokenizer=None,
               layer: int = 0, heads: Sequence[int] | None = None, chunk: int = CHUNK) -> BiasProbe:
    """Top-k tokens of norm(rows) (rows [vocab, d], norm the block's input norm: together the paper's
    e_norm = ln_1(wte)) for +v and -v of each head's query-bias and key-bias vector (``bias_vectors``).
    heads: the query heads to probe (None: all)."""
    vecs = bias_vectors(W_Q, W_K, b_Q, b_K, kv_map)
    missing = [f"no {'key' if name == 'query' else 'query'} bias, so no {name}-bias vector"
               for name in ("query", "key") if name not in vecs]
    note = "; ".join(missing)
    if not vecs:
        return BiasProbe(table=None, note="the attention has no query or key biases: the bias probes do not "
                                          "exist for this model")
    H = next(iter(vecs.values())).shape[0]
    hs = list(range(H)) if heads is None else [int(h) for h in heads]
    names = list(vecs)
    V = torch.cat([vecs[n][hs] for n in names])                         # [n_names * len(hs), d]
    ext = vocab_extremes(V, rows, k, norm, chunk, bottom=True)
    kk = ext.top_ids.shape[1]
    parts = []
    for sign, vals, ids in (("+", ext.top_values, ext.top_ids), ("-", -ext.bottom_values, ext.bottom_ids)):
        n = vals.shape[0]
        parts.append({"head": np.repeat(np.tile(np.asarray(hs), len(names)), kk),
                      "bias": np.repeat(np.repeat(np.asarray(names, dtype=object), len(hs)), kk),
                      "sign": np.full(n * kk, sign, dtype=object), "rank": np.tile(np.arange(1, kk + 1), n),
                      "token_id": ids.reshape(-1).numpy(), "score": vals.reshape(-1).double().numpy()})
    cols = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    return BiasProbe(table=_with_tokens(cols, layer, tokenizer, BIAS_COLUMNS), note=note)

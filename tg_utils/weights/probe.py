"""One attention block read against the vocabulary: the tokens of each head's top singular directions of
W_qk and W_vo (sign-aligned), and the attention-ellipse probe (the keys a query token looks for and the
tokens its update moves toward), both from two scans of the vocabulary.

Singular directions (``block_probe``, all query heads): the top ``n_components`` singular pairs of W_qk
and W_vo (through the factors, ``factored.FactoredMatrix``), sign-aligned by the rule of
``factored.flip_mask`` -- W_qk on the query side (U) against the input-normed embeddings, W_vo on the
output side (V) against the unembedding rows W_U.T, the matrix each direction is probed with -- and the
top-k tokens of each side: W_qk query (U) and key (V) directions and W_vo input directions (U) against
norm(rows), W_vo output directions (V) against W_U.T. A flipped pair's top-k is the unflipped vector's
bottom-k, so each direction vector is scanned once for its k largest and k smallest scores.

Attention-ellipse probe: for query token t with x = norm(rows[t]) and each head h: keys = the top-k
tokens y over the vocabulary by x @ W_qk[h] @ norm(rows[y]).T (positionless, no softmax); update =
x @ W_vo[h] (what the head writes when it attends to this token), read out as (update * g) @ W_U with g
the final norm's effective weight if given (the linear part of the final norm: its centring and 1/rms
rescaling are dropped; g=None: plain update @ W_U); the top-k tokens are those the update moves toward.

The direction vectors that need both ends and the ellipse vectors that need only the top share one pass
over norm(rows) and one over W_U.T (``vocab.vocab_extremes`` with ``bottom=n``): two scans per block
where separate probes would make eight. ``sign_align`` is the same rule for a whole SVD on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._tensors import tensor
from .factored import SVD, checked_kv_map, flip_mask, qk_factors, vo_factors
from .norms import as_norm
from .vocab import CHUNK, token_strings, vocab_extremes

DIRECTION_COLUMNS = ["layer", "kind", "head", "component", "sigma", "side", "rank", "token_id", "token",
                     "token_raw", "score"]
ELLIPSE_COLUMNS = ["layer", "noun", "query_id", "head", "probe", "rank", "token_id", "token", "token_raw",
                   "score"]

Tensor = torch.Tensor


def sign_align(svd: SVD, ref, side: str = "left", norm=None, chunk: int = CHUNK,
               components: int | None = None) -> SVD:
    """Fix the sign of every singular pair (``factored.flip_mask``): with x_i the ``side`` vector (left:
    U[..., :, i], right: V[..., :, i]) and s = norm(ref) @ x_i, flip (u_i, v_i) -> (-u_i, -v_i) iff
    max(s) < -min(s). ref: [vocab, d] rows (formed chunk by chunk through ``norm``). Batched over heads;
    M is unchanged. ``components``: align only the first that many pairs, leaving the rest as they are."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    X = svd.U if side == "left" else svd.V                     # [..., d, k]
    lead, d, k = X.shape[:-2], X.shape[-2], X.shape[-1]
    c = k if components is None else max(0, min(int(components), k))
    if not c:
        return svd
    ext = vocab_extremes(X[..., :c].mT.reshape(-1, d), ref, k=1, norm=norm, chunk=chunk)
    flip = flip_mask(ext.top_values[:, 0], ext.bottom_values[:, 0])
    return svd.flipped(flip.reshape(*lead, c))


def ellipse_vectors(x: Tensor, W_Q, W_K, W_V, W_O, kv_map, scale: float, heads: Sequence[int],
                    final_norm_weight=None) -> tuple[Tensor, Tensor]:
    """The ellipse probe's vectors of normed queries x [n, d] (float64), head-major [len(heads) * n, d]:
    key directions (s x W_Q[h]) W_K[g]^T (score(y) = norm(e_y) . key direction) and updates
    (x W_V[g]) W_O[h], times the final norm's weight when given (g = kv_map[h], s = scale). Computed on the
    weights' device (W_Q's; the queries and the final norm's weight are moved there): with device_map the
    embedding rows, the block and the final norm may sit on different GPUs."""
    dev = tensor(W_Q).device
    Wq, Wk, Wv, Wo = (tensor(w, torch.float64).to(dev) for w in (W_Q, W_K, W_V, W_O))
    x = x.to(dev)
    d = x.shape[1]
    kdir = torch.stack([(scale * x @ Wq[h]) @ Wk[kv_map[h]].T for h in heads]).reshape(-1, d)
    upd = torch.stack([(x @ Wv[kv_map[h]]) @ Wo[h] for h in heads])
    if final_norm_weight is not None:
        upd = upd * tensor(final_norm_weight, torch.float64).to(dev)
    return kdir, upd.reshape(-1, d)


@dataclass(frozen=True)
class ProbeVectors:
    """The vectors of one block's probe, all on the weights' device: ``vectors_in`` [3 H c + m, d] scanned
    against norm(rows) (W_qk query U, W_qk key V, W_vo input U directions, head-major, then the m ellipse key
    directions), ``vectors_out`` [H c + m, d] against W_U.T (W_vo output V directions, then the m ellipse
    updates); ``S_qk`` / ``S_vo`` [H, k] the singular values; c = ``n_components``; ``heads`` the ellipse
    probe's heads."""
    vectors_in: Tensor
    vectors_out: Tensor
    S_qk: Tensor
    S_vo: Tensor
    n_components: int
    heads: list[int]


def probe_vectors(W_Q, W_K, W_V, W_O, rows, norm=None, kv_map=None, scale: float | None = None,
                  query_ids: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                  final_norm_weight=None, n_components: int = 3) -> ProbeVectors:
    """The directions and ellipse vectors ``block_probe`` scans (see ProbeVectors and the module docstring)."""
    W_Q = tensor(W_Q)
    H, d, dh = W_Q.shape
    m = checked_kv_map(kv_map, H, tensor(W_K).shape[0])
    s = dh ** -0.5 if scale is None else float(scale)
    qk = qk_factors(W_Q, W_K, m, s).svd()
    vo = vo_factors(W_V, W_O, m).svd()
    c = min(n_components, qk.S.shape[1])

    def vecs(X):                                    # [H, d, k] -> [H * c, d], head-major
        return X[..., :c].mT.reshape(H * c, d)

    dir_in = torch.cat([vecs(qk.U), vecs(qk.V), vecs(vo.U)])            # against norm(rows)
    dir_out = vecs(vo.V)                                                 # against W_U.T
    qids = [] if query_ids is None else [int(i) for i in query_ids]
    hs = list(range(H)) if heads is None else [int(h) for h in heads]
    if qids:
        x = as_norm(norm)(tensor(rows)[qids].to(torch.float64)).to(torch.float64)
        kdir, upd = ellipse_vectors(x, W_Q, W_K, W_V, W_O, m, s, hs, final_norm_weight)
    else:
        kdir = upd = torch.empty(0, d, dtype=torch.float64, device=dir_in.device)
    return ProbeVectors(torch.cat([dir_in, kdir.to(dir_in.device)]), torch.cat([dir_out, upd.to(dir_out.device)]),
                        qk.S, vo.S, c, hs)


@dataclass(frozen=True)
class BlockProbe:
    """The two tables of ``block_probe`` as columns (dicts of equal-length arrays): ``directions`` with
    DIRECTION_COLUMNS, ``ellipse`` with ELLIPSE_COLUMNS (None without query tokens)."""
    directions: dict[str, np.ndarray]
    ellipse: dict[str, np.ndarray] | None


def _aligned_top(tv, ti, bv, bi, flip):
    """Top-k (values, ids) of the sign-aligned vectors: a flipped vector's top-k is the negated bottom-k."""
    return torch.where(flip[:, None], -bv, tv), torch.where(flip[:, None], bi, ti)


def block_probe(W_Q, W_K, W_V, W_O, rows, W_U, norm=None, kv_map=None, scale: float | None = None,
                query_ids: Sequence[int] | None = None, labels: Sequence[str] | None = None,
                final_norm_weight=None, n_components: int = 3, k: int = 10,
                heads: Sequence[int] | None = None, tokenizer=None, layer: int = 0,
                chunk: int = CHUNK) -> BlockProbe:
    """One block's singular-direction tokens and attention-ellipse probe (see the module docstring).

    W_Q, W_K, W_V, W_O: the block's per-head weights; rows [vocab, d]: the embedding rows the block's
    input norm ``norm`` reads (norm(rows) = the input-normed embeddings; rows may be pre-standardised
    with ``norm`` the affine part); W_U [d, vocab]: the unembedding (W_E.T for tied embeddings).
    kv_map / scale: grouped-query map and score scale (defaults: ``factored.kv_head_map``, 1/sqrt(d_head)).
    query_ids / labels: the ellipse probe's query tokens and their names (labels default to the decoded
    tokens); none: no ellipse table. final_norm_weight: g of the update read-out. heads: the ellipse
    probe's heads (None: all). layer: the value of the ``layer`` column."""
    H = tensor(W_Q).shape[0]
    qids = [] if query_ids is None else [int(i) for i in query_ids]
    pv = probe_vectors(W_Q, W_K, W_V, W_O, rows, norm, kv_map, scale, qids, heads, final_norm_weight,
                       n_components)
    c, hs = pv.n_components, pv.heads
    n = H * c
    ext_in = vocab_extremes(pv.vectors_in, rows, k, norm, chunk, bottom=3 * n)
    ext_out = vocab_extremes(pv.vectors_out, tensor(W_U).T, k, None, chunk, bottom=n)
    tv_in, ti_in, bv_in, bi_in = ext_in.top_values, ext_in.top_ids, ext_in.bottom_values, ext_in.bottom_ids
    tv_out, ti_out, bv_out, bi_out = (ext_out.top_values, ext_out.top_ids, ext_out.bottom_values,
                                      ext_out.bottom_ids)

    flip_qk = flip_mask(tv_in[:n, 0], bv_in[:n, 0])                      # query side (U of W_qk)
    flip_vo = flip_mask(tv_out[:n, 0], bv_out[:n, 0])                    # output side (V of W_vo)
    kk = ti_in.shape[1]
    heads_ = np.repeat(np.arange(H), c * kk)
    comps = np.tile(np.repeat(np.arange(c), kk), H)
    parts = []
    for kind, side, (vals, ids), S in (
            ("qk", "query", _aligned_top(tv_in[:n], ti_in[:n], bv_in[:n], bi_in[:n], flip_qk), pv.S_qk),
            ("qk", "key", _aligned_top(tv_in[n:2 * n], ti_in[n:2 * n], bv_in[n:2 * n], bi_in[n:2 * n],
                                       flip_qk), pv.S_qk),
            ("vo", "input", _aligned_top(tv_in[2 * n:3 * n], ti_in[2 * n:3 * n], bv_in[2 * n:3 * n],
                                         bi_in[2 * n:3 * n], flip_vo), pv.S_vo),
            ("vo", "output", _aligned_top(tv_out[:n], ti_out[:n], bv_out, bi_out, flip_vo), pv.S_vo)):
        parts.append({"kind": np.full(n * kk, kind, dtype=object), "head": heads_, "component": comps,
                      "sigma": S[:, :c].cpu().numpy()[heads_, comps], "side": np.full(n * kk, side, dtype=object),
                      "rank": np.tile(np.arange(1, kk + 1), n), "token_id": ids.reshape(-1).numpy(),
                      "score": vals.reshape(-1).double().numpy()})
    dirs = _with_tokens(_concat(parts), layer, tokenizer, DIRECTION_COLUMNS)
    if not qids:
        return BlockProbe(directions=dirs, ellipse=None)

    nq = len(qids)
    names = token_strings(tokenizer, qids)[0] if labels is None else list(labels)
    if len(names) != nq:
        raise ValueError(f"{len(names)} labels for {nq} queries")
    names = np.asarray(names, dtype=object)
    parts = []
    for probe, vals, ids in (("keys", tv_in[3 * n:], ti_in[3 * n:]), ("update", tv_out[n:], ti_out[n:])):
        kk = ids.shape[1]
        hh = np.repeat(np.asarray(hs), nq * kk)
        qq = np.tile(np.repeat(np.arange(nq), kk), len(hs))
        parts.append({"noun": names[qq], "query_id": np.asarray(qids)[qq], "head": hh,
                      "probe": np.full(len(hh), probe, dtype=object),
                      "rank": np.tile(np.arange(1, kk + 1), nq * len(hs)), "token_id": ids.reshape(-1).numpy(),
                      "score": vals.reshape(-1).double().numpy()})
    return BlockProbe(directions=dirs, ellipse=_with_tokens(_concat(parts), layer, tokenizer, ELLIPSE_COLUMNS))


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _with_tokens(cols: dict[str, np.ndarray], layer: int, tokenizer, order: list[str]) -> dict[str, np.ndarray]:
    """Add the layer and the decoded / raw token strings of ``token_id``; columns in ``order``."""
    dec, raw = token_strings(tokenizer, cols["token_id"].tolist())
    n = len(cols["token_id"])
    cols = {**cols, "layer": np.full(n, int(layer)), "token": np.asarray(dec, dtype=object),
            "token_raw": np.asarray(raw, dtype=object)}
    return {name: cols[name] for name in order}

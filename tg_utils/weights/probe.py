"""One attention block read against the vocabulary, after Traveling Words (svd_analysis.py,
common_nouns.py): the tokens of each head's top singular directions of W_qk and W_vo (sign-aligned), and
the attention-ellipse probe (the keys a query token looks for and the tokens its value moves the state
toward), both from two scans of the vocabulary.

Singular directions (``block_probe``, all query heads; svd_analysis.py:203-263): the top ``n_components``
singular pairs of W_qk and W_vo (through the factors, ``factored.FactoredMatrix``; the paper forms the
d x d matrix and takes its full SVD, lines 18-47: the same pairs up to sign), sign-aligned by the rule of
``factored.flip_mask`` (the paper's ``adjust_matrix_sign``, lines 50-78: keep the sign whose largest dot
product with the reference rows is the larger), and the top-k tokens of each side by dot product: W_qk
left (query, U) and right (key, V) directions and W_vo left (input, U) directions against norm(rows) (the
block's input-normed embeddings, the paper's e_norm = ln_1(wte), lines 210-213), W_vo right (output, V)
directions against the rows of ``W_U.T`` (the paper reads them against the raw embedding wte, line 261:
pass W_U = W_E.T for that; GPT-2's tied unembedding is the same matrix). Which side decides the sign
(``sign_side``):
    "key"    the paper (lines 93-105): each pair's sign is set on its right vector against its reference
             matrix -- W_qk's key side V against norm(rows), W_vo's output side V against W_U.T -- and
             the left vector takes the same sign
    "query"  a variant of this repository: W_qk's sign set on the query side U against norm(rows) (W_vo as
             above). The two rules disagree for a pair whose query side and key side point to opposite
             ends of the vocabulary; that swaps the pair's top and bottom token lists.
A flipped pair's top-k is the unflipped vector's bottom-k, so each direction vector is scanned once for its
k largest and k smallest scores (the paper multiplies U by the singular values, line 235: that does not
change the ranking).

Attention-ellipse probe (common_nouns.py:38-101): for query token t with x = norm(rows[t]) (the paper's
ln_1(wte[t])) and each head h (g = kv_map[h]):
    keys     the top-k tokens y over the vocabulary by x @ W_qk[h] @ norm(rows[y]).T (positionless, no
             softmax, no biases; lines 77-81)
    values   ``readout="paper"`` (lines 83-101): the head's update u_h = x W_V[g] W_O[h] + b_V[g] W_O[h],
             the state after it r_h = e_t + u_h + b_O (e_t the token's embedding as it enters the residual
             stream: ``residual``), final-normed, ln_f(r_h), and read against the rows of W_U.T (the paper:
             wte) -> the top-k tokens (probe "values", per head); and the same for the whole layer,
             ln_f(e_t + sum_h u_h + b_O), the sum over *every* head of the block (probe "values_sum",
             head -1). ``update_norm`` is ||u_h|| (||sum_h u_h|| for the sum; the paper stores these norms
             in an integer tensor, line 72, which truncates them: here they are floats).
             ``readout="update"``: a variant of this repository: u_h = x W_V[g] W_O[h] alone (no residual, no
             biases), times the final norm's weight g when given (the final norm's centring, 1/rms and bias
             dropped), read against W_U.T (probe "update", per head): what the head's own write favours,
             without the token it is added to.

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
                   "score", "update_norm"]
SIGN_SIDES = ("key", "query")          # "key": the paper's rule (svd_analysis.py:98-105); "query": variant
READOUTS = ("paper", "update")         # "paper": common_nouns.py:83-101; "update": variant

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


def ellipse_keys(x: Tensor, W_Q, W_K, kv_map, scale: float, heads: Sequence[int]) -> Tensor:
    """Key directions of normed queries x [n, d] (float64), head-major [len(heads) * n, d]:
    (s x W_Q[h]) W_K[g]^T, so that score(y) = norm(e_y) . key direction (common_nouns.py:77-80)."""
    Wq, Wk = (tensor(w, torch.float64).cpu() for w in (W_Q, W_K))
    return torch.stack([(scale * x @ Wq[h]) @ Wk[kv_map[h]].T for h in heads]).reshape(-1, x.shape[1])


def ellipse_values(x: Tensor, residual: Tensor, W_V, W_O, kv_map, heads: Sequence[int], final_norm=None,
                   b_V=None, b_O=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The paper's value read-out (common_nouns.py:83-101) of normed queries x [n, d] and their residual
    embeddings [n, d]: u_h = x W_V[g] W_O[h] + b_V[g] W_O[h]; returns (ln_f(residual + u_h + b_O) for h in
    ``heads``, head-major [len(heads) * n, d]; ln_f(residual + sum over every head u_h + b_O) [n, d];
    ||u_h|| [len(heads) * n]; ||sum_h u_h|| [n]), float64. ln_f = ``final_norm`` (None: identity)."""
    Wv, Wo = (tensor(w, torch.float64).cpu() for w in (W_V, W_O))
    H, d = Wo.shape[0], x.shape[1]
    bv = None if b_V is None else tensor(b_V, torch.float64).cpu()
    bo = torch.zeros(d, dtype=torch.float64) if b_O is None else tensor(b_O, torch.float64).cpu()
    res = tensor(residual, torch.float64).cpu()
    f = as_norm(final_norm)

    def update(h: int) -> Tensor:
        u = (x @ Wv[kv_map[h]]) @ Wo[h]                                    # line 83
        return u if bv is None else u + bv[kv_map[h]] @ Wo[h]              # line 84: the value bias
    ups = {h: update(h) for h in range(H)}
    total = sum(ups.values())                                              # line 86: every head
    vals = torch.stack([f(res + ups[h] + bo).to(torch.float64) for h in heads]).reshape(-1, d)   # 88-89
    vsum = f(res + total + bo).to(torch.float64)                           # lines 96-97
    norms = torch.stack([torch.linalg.vector_norm(ups[h], dim=1) for h in heads]).reshape(-1)
    return vals, vsum, norms, torch.linalg.vector_norm(total, dim=1)


def ellipse_updates(x: Tensor, W_V, W_O, kv_map, heads: Sequence[int], final_norm_weight=None
                    ) -> tuple[Tensor, Tensor]:
    """The variant read-out (``readout="update"``): (x W_V[g]) W_O[h] times the final norm's weight when
    given, head-major [len(heads) * n, d], and the norms of the updates before the weight."""
    Wv, Wo = (tensor(w, torch.float64).cpu() for w in (W_V, W_O))
    upd = torch.stack([(x @ Wv[kv_map[h]]) @ Wo[h] for h in heads])
    norms = torch.linalg.vector_norm(upd, dim=-1).reshape(-1)
    if final_norm_weight is not None:
        upd = upd * tensor(final_norm_weight, torch.float64).cpu()
    return upd.reshape(-1, x.shape[1]), norms


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
                final_norm_weight=None, n_components: int = 20, k: int = 5,
                heads: Sequence[int] | None = None, tokenizer=None, layer: int = 0,
                chunk: int = CHUNK, sign_side: str = "key", readout: str = "paper", residual=None,
                final_norm=None, b_V=None, b_O=None) -> BlockProbe:
    """One block's singular-direction tokens and attention-ellipse probe (see the module docstring).

    W_Q, W_K, W_V, W_O: the block's per-head weights; rows [vocab, d]: the embedding rows the block's
    input norm ``norm`` reads (norm(rows) = the input-normed embeddings; rows may be pre-standardised
    with ``norm`` the affine part); W_U [d, vocab]: the matrix the W_vo output directions and the value
    read-out are scored against (the paper: W_E.T; the unembedding for the logit reading).
    kv_map / scale: grouped-query map and score scale (defaults: ``factored.kv_head_map``, 1/sqrt(d_head)).
    query_ids / labels: the ellipse probe's query tokens and their names (labels default to the decoded
    tokens); none: no ellipse table. heads: the ellipse probe's per-head rows (None: all; the paper's
    "values_sum" always sums every head). layer: the value of the ``layer`` column.
    sign_side: "key" (the paper) or "query" (variant). readout: "paper" (needs ``residual``, the query
    tokens' embeddings as they enter the residual stream [n_queries, d], and ``final_norm``, ``b_V``,
    ``b_O`` where the model has them) or "update" (variant; ``final_norm_weight`` g)."""
    if sign_side not in SIGN_SIDES:
        raise ValueError(f"sign_side must be one of {SIGN_SIDES}, got {sign_side!r}")
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    W_Q = tensor(W_Q)
    H, d, dh = W_Q.shape
    m = checked_kv_map(kv_map, H, tensor(W_K).shape[0])
    s = dh ** -0.5 if scale is None else float(scale)
    qk = qk_factors(W_Q, W_K, m, s).svd()
    vo = vo_factors(W_V, W_O, m).svd()
    c = min(n_components, qk.S.shape[1])
    out_rows = tensor(W_U).T

    def vecs(X):                                    # [H, d, k] -> [H * c, d], head-major
        return X[..., :c].mT.reshape(H * c, d)

    dir_in = torch.cat([vecs(qk.U), vecs(qk.V), vecs(vo.U)])            # against norm(rows)
    dir_out = vecs(vo.V)                                                 # against W_U.T
    qids = [] if query_ids is None else [int(i) for i in query_ids]
    hs = list(range(H)) if heads is None else [int(h) for h in heads]
    nq = len(qids)
    empty = torch.empty(0, d, dtype=torch.float64)
    kdir = vals = empty
    vnorms = torch.empty(0, dtype=torch.float64)
    if qids:
        x = as_norm(norm)(tensor(rows)[qids].to(torch.float64)).to(torch.float64).cpu()
        kdir = ellipse_keys(x, W_Q, W_K, m, s, hs)
        if readout == "paper":
            if residual is None:
                raise ValueError("readout='paper' needs the query tokens' residual embeddings (residual=...)")
            res = tensor(residual, torch.float64).cpu()
            if res.shape != (nq, d):
                raise ValueError(f"residual must be [{nq}, {d}], got {tuple(res.shape)}")
            vh, vsum, nh, nsum = ellipse_values(x, res, W_V, W_O, m, hs, final_norm, b_V, b_O)
            vals, vnorms = torch.cat([vh, vsum]), torch.cat([nh, nsum])
        else:
            vals, vnorms = ellipse_updates(x, W_V, W_O, m, hs, final_norm_weight)
    ext_in = vocab_extremes(torch.cat([dir_in, kdir]), rows, k, norm, chunk, bottom=dir_in.shape[0])
    ext_out = vocab_extremes(torch.cat([dir_out, vals]), out_rows, k, None, chunk, bottom=dir_out.shape[0])
    tv_in, ti_in, bv_in, bi_in = ext_in.top_values, ext_in.top_ids, ext_in.bottom_values, ext_in.bottom_ids
    tv_out, ti_out, bv_out, bi_out = (ext_out.top_values, ext_out.top_ids, ext_out.bottom_values,
                                      ext_out.bottom_ids)

    n = H * c
    ref = slice(n, 2 * n) if sign_side == "key" else slice(0, n)         # the side that sets W_qk's sign
    flip_qk = flip_mask(tv_in[ref, 0], bv_in[ref, 0])
    flip_vo = flip_mask(tv_out[:n, 0], bv_out[:n, 0])                    # output side (V of W_vo)
    kk = ti_in.shape[1]
    heads_ = np.repeat(np.arange(H), c * kk)
    comps = np.tile(np.repeat(np.arange(c), kk), H)
    parts = []
    for kind, side, (vals_, ids), S in (
            ("qk", "query", _aligned_top(tv_in[:n], ti_in[:n], bv_in[:n], bi_in[:n], flip_qk), qk.S),
            ("qk", "key", _aligned_top(tv_in[n:2 * n], ti_in[n:2 * n], bv_in[n:2 * n], bi_in[n:2 * n],
                                       flip_qk), qk.S),
            ("vo", "input", _aligned_top(tv_in[2 * n:3 * n], ti_in[2 * n:3 * n], bv_in[2 * n:3 * n],
                                         bi_in[2 * n:3 * n], flip_vo), vo.S),
            ("vo", "output", _aligned_top(tv_out[:n], ti_out[:n], bv_out, bi_out, flip_vo), vo.S)):
        parts.append({"kind": np.full(n * kk, kind, dtype=object), "head": heads_, "component": comps,
                      "sigma": S[:, :c].cpu().numpy()[heads_, comps], "side": np.full(n * kk, side, dtype=object),
                      "rank": np.tile(np.arange(1, kk + 1), n), "token_id": ids.reshape(-1).numpy(),
                      "score": vals_.reshape(-1).double().numpy()})
    dirs = _with_tokens(_concat(parts), layer, tokenizer, DIRECTION_COLUMNS)
    if not qids:
        return BlockProbe(directions=dirs, ellipse=None)

    names = token_strings(tokenizer, qids)[0] if labels is None else list(labels)
    if len(names) != nq:
        raise ValueError(f"{len(names)} labels for {nq} queries")
    names = np.asarray(names, dtype=object)
    nh = len(hs) * nq
    groups = [("keys", hs, tv_in[3 * n:], ti_in[3 * n:], None)]
    if readout == "paper":
        groups += [("values", hs, tv_out[n:n + nh], ti_out[n:n + nh], vnorms[:nh]),
                   ("values_sum", [-1], tv_out[n + nh:], ti_out[n + nh:], vnorms[nh:])]
    else:
        groups += [("update", hs, tv_out[n:], ti_out[n:], vnorms)]
    parts = []
    for probe, hh_, vals_, ids, norms in groups:
        kk = ids.shape[1]
        hh = np.repeat(np.asarray(hh_), nq * kk)
        qq = np.tile(np.repeat(np.arange(nq), kk), len(hh_))
        un = np.full(len(hh), np.nan) if norms is None else np.repeat(norms.numpy(), kk)
        parts.append({"noun": names[qq], "query_id": np.asarray(qids)[qq], "head": hh,
                      "probe": np.full(len(hh), probe, dtype=object),
                      "rank": np.tile(np.arange(1, kk + 1), nq * len(hh_)), "token_id": ids.reshape(-1).numpy(),
                      "score": vals_.reshape(-1).double().numpy(), "update_norm": un})
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

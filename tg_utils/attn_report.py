"""Notebook 07 (attention geometry, after "Traveling Words", issue 8): the per-model pipeline, its tidy
tables, plots and the measured findings. The geometry itself lives in ``tg_utils.attention`` (pure
functions of weights); this module feeds it each model's ``ModelDescription`` and collects the results.

    reports = run_models(P)                      # P: the notebook's AttentionGeometryParams
    tables = combine(reports)                    # dict name -> DataFrame (every model, one table each)
    print(findings_text(reports))

Per model (``analyse_model``):
- Embedding norms (``embedding_norm_table``): top-k / bottom-k tokens under the four scorings of
  ``attention.embedding_norm_scores`` (norm, scaled_norm, bias, both) of the matrix the output reads: the
  tied embedding, or, for untied models, the unembedding rows W_U.T *and* the input embedding W_E (column
  ``matrix``: "tied", "unembedding", "embedding"). The scaling and the bias are the final norm's; an
  RMSNorm has no bias, so bias and both do not exist there (``notes`` says so).
- Per-head SVD (``coverage_tables``, ``layer_probe``): W_qk = scale W_Q W_K^T and W_vo = W_V W_O per
  query head (grouped-query attention: the head's key/value head) through the factors. The singular values
  of every block give the cumulative coverage and the rank at ``coverage_level`` (no vocabulary scan). For
  the probed blocks (first, middle, last: ``probe_layers``) the top ``n_components`` singular pairs are
  sign-aligned and read against the vocabulary: QK query / key directions and VO input directions against
  the input-normed embeddings, VO output directions against the unembedding.
- Attention-ellipse probe (``layer_probe``): the single-token nouns of data/common_nouns.txt as queries
  through the block's input norm; top keys by x W_qk norm(e_y)^T and the tokens the update x W_vo moves
  toward (read out through the final norm's weight and the unembedding), per probed block and head.
- Trajectory (``trajectory_tables``): the phrase's states at every state index 0..L (through the activation
  cache), final-normed and projected into a 3-D UMAP fitted on the embedding rows; per-layer norms before
  and after the final norm; the logit-lens top-1 token of every state (whether it is the token itself or
  the next token of the phrase). A BOS the tokenizer adds is run through the model but left out of the
  tables (its state is an outlier in norm and direction).

Speed (Gemma's vocabulary has 262k rows): every probe of a block is a scan of the vocabulary. Two things
keep the default profile in budget, both checked against ``tg_utils.attention`` by the tests:
``InputNormedRows`` standardises the embedding rows once per model (RMSNorm: e / rms(e); LayerNorm:
(e - mean) / std, with the block's eps) and hands each scan only the block's affine part (weight, bias),
instead of re-normalising 262k rows per scan; ``layer_probe`` does a block's direction tokens, sign
alignment and ellipse probe in two scans (normed embeddings, unembedding) where the library functions
make eight. Coverage needs singular values only (``singular_values``: Cholesky factors of the small Gram
matrices). Norm kinds ``InputNormedRows`` does not know fall back to the block's module.

Simplifications (in ``model_notes`` for every model, printed by the notebook): W_qk is positionless (RoPE,
or learned positions, left out: the score of two tokens at the same position); per-head q/k norms (Gemma 3)
and the biases are left out; Gemma's sandwich norm after the attention output is left out of the update
read-out; GGUF models are the dequantised quantised weights.
"""
from __future__ import annotations

import math
import pickle
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from . import attention as A
from .paths import atomic_path

NB = "07_attention_geometry"
PROBE_NAMES = {0: "first", 1: "middle", 2: "last"}
LAYER_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


# ============================================================================ model facts

def probe_layers(n_layers: int, depths: Sequence[float] = (0.0, 0.5, 1.0)) -> list[int]:
    """0-based block indices at relative depths in [0, 1]: floor(depth * (L - 1) + 0.5), unique, sorted.
    The default gives the first, the middle ((L - 1) / 2 rounded half up: block 16 of 30, 10 of 18, 4 of 6,
    counting from 1) and the last block."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be positive, got {n_layers}")
    out = set()
    for x in depths:
        if not 0.0 <= float(x) <= 1.0:
            raise ValueError(f"relative depth {x} is outside [0, 1]")
        out.add(int(math.floor(float(x) * (n_layers - 1) + 0.5)))
    return sorted(out)


def layer_role(layer: int, layers: Sequence[int]) -> str:
    """'first' / 'middle' / 'last' for the three default probe layers, else 'block <l+1>'."""
    layers = sorted(layers)
    if len(layers) == 3:
        return PROBE_NAMES[layers.index(layer)]
    return f"block {layer + 1}"


def model_label(spec: str) -> str:
    """Short name: toy:llama-preln@160 -> 'llama-preln (toy)'; hub ids keep their last part."""
    if spec.startswith("toy:"):
        return f"{spec[4:].split('@')[0]} (toy)"
    return spec.rstrip("/").split("/")[-1]


def is_tied(desc) -> bool:
    """Whether the unembedding is the embedding matrix (same storage, or equal values)."""
    if desc.W_U is None:
        return True
    W_E, W_U = desc.W_E, desc.W_U
    if W_U.shape != W_E.T.shape:
        return False
    if W_E.untyped_storage().data_ptr() == W_U.untyped_storage().data_ptr():
        return True
    return bool(torch.equal(W_E, W_U.T))


def final_norm_kind(desc) -> str:
    fn = desc.final_norm
    if fn is None or fn.kind == "identity":
        return "none"
    return fn.kind


def model_notes(desc) -> list[str]:
    """What the probes leave out or what differs for this model, in words (printed by the notebook)."""
    notes = []
    fn = desc.final_norm
    kind = final_norm_kind(desc)
    if kind == "rms":
        notes.append("final norm is an RMSNorm without bias: the 'bias' and 'both' embedding scorings do "
                     "not exist (only norm and scaled_norm)"
                     + ("; its scale is 1 + weight" if fn.weight_offset else ""))
    elif kind == "layer":
        notes.append("final norm is a LayerNorm" + (" with bias: all four embedding scorings exist"
                                                     if fn.bias is not None else " without bias"))
    else:
        notes.append("no final norm: scaled_norm equals norm and there is no bias score")
    notes.append("W_qk is positionless: rotary / learned position terms are left out (the score of two "
                 "tokens at the same position); attention biases are left out")
    if desc.attn and desc.attn[0].q_norm is not None:
        notes.append("per-head q/k norms (RMSNorm on q and k, Gemma 3 style) are left out: W_qk is the "
                     "bilinear map before them, so key rankings are approximate")
    if desc.arch == "gemma3":
        notes.append("the sandwich norm on the attention output (post_attention_layernorm) is left out of "
                     "the W_vo update read-out; embeddings enter the stream scaled by sqrt(d) (the norms "
                     "make that irrelevant to the probes)")
    if desc.n_kv_heads != desc.n_heads:
        notes.append(f"grouped-query attention: {desc.n_heads} query heads share {desc.n_kv_heads} key/value "
                     f"heads (query head -> kv head: {desc.kv_head_map.tolist()})")
    if desc.norm_placement == "post":
        notes.append("post-norm blocks read the un-normalised stream: the QK probe uses the raw embeddings")
    notes.append("embeddings tied (W_U = W_E^T)" if is_tied(desc) else
                 "embeddings untied: the norm scorings are given for the unembedding rows and the embedding")
    if desc.quantized_from:
        notes.append(f"weights dequantised from {desc.quantized_from}: the quantised model's geometry")
    return notes


# ============================================================================ input-normed rows

def _affine(scale: torch.Tensor | None, bias: torch.Tensor | None) -> Callable | None:
    if scale is None and bias is None:
        return None
    s = None if scale is None else scale.detach().to(torch.float32)
    b = None if bias is None else bias.detach().to(torch.float32)

    def f(R: torch.Tensor) -> torch.Tensor:
        out = R if s is None else R * s.to(R.device, R.dtype)
        return out if b is None else out + b.to(R.device, R.dtype)
    return f


class InputNormedRows:
    """``norm_l(W_E)`` for the attention-input norm of every block, as (rows, norm) for the scans of
    ``tg_utils.attention``: rows are the embedding rows standardised once per (norm kind, eps) (RMSNorm:
    e * rsqrt(mean(e^2) + eps); LayerNorm: (e - mean) * rsqrt(var + eps)), norm the block's affine part
    (times the effective weight, plus the bias). norm(rows) equals the block's module on W_E up to float32
    rounding. Norm modules it does not know (not an nn.LayerNorm or an *RMSNorm class, or no eps) fall
    back to (W_E, the module); no norm (post-norm blocks, or none): (W_E, None)."""

    def __init__(self, desc, chunk: int = A.CHUNK):
        self.desc = desc
        self.chunk = chunk
        self._std: dict[tuple[str, float], torch.Tensor] = {}

    def _standardised(self, kind: str, eps: float) -> torch.Tensor:
        key = (kind, float(eps))
        if key not in self._std:
            E = self.desc.W_E
            out = torch.empty(E.shape, dtype=torch.float32, device=E.device)
            for i in range(0, E.shape[0], self.chunk):
                e = E[i:i + self.chunk].to(torch.float32)
                if kind == "layer":
                    e = e - e.mean(-1, keepdim=True)
                out[i:i + self.chunk] = e * torch.rsqrt(e.pow(2).mean(-1, keepdim=True) + eps)
            self._std[key] = out
        return self._std[key]

    def for_layer(self, layer: int):
        desc = self.desc
        info = desc.attn_norms[layer] if desc.attn_norms else None
        if info is None or desc.norm_placement == "post" or info.kind == "identity":
            return desc.W_E, None
        m = info.module
        known = ((info.kind == "layer" and isinstance(m, torch.nn.LayerNorm))
                 or (info.kind == "rms" and "rmsnorm" in type(m).__name__.lower()))
        if known and info.eps is not None:
            return self._standardised(info.kind, info.eps), _affine(info.scale, info.bias)
        return desc.W_E, m


# ============================================================================ the four tables

def embedding_norm_table(desc, tokenizer=None, k: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top/bottom tokens, per-matrix statistics). Tokens: [matrix, scoring, rank, side, token_id, token,
    token_raw, score] for the tied matrix, or the unembedding rows and the embedding of an untied model.
    Statistics: [matrix, scoring, mean, std, min, max, spearman_vs_norm, top_overlap_vs_norm]."""
    fn = desc.final_norm
    g = None if fn is None else fn.scale
    b = None if fn is None else fn.bias
    if is_tied(desc):
        mats = [("tied", desc.W_E)]
    else:
        mats = [("unembedding", desc.W_U.T), ("embedding", desc.W_E)]
    tables, stats = [], []
    for name, M in mats:
        sc = A.embedding_norm_scores(M, g, b)
        t = A.top_bottom_tokens(sc, tokenizer, k=k)
        t.insert(0, "matrix", name)
        tables.append(t)
        ranks_norm = pd.Series(sc.norm).rank().to_numpy()
        top_norm = set(t[(t.scoring == "norm") & (t.side == "top")].token_id)
        for s_name, s in sc.as_dict().items():
            top = set(t[(t.scoring == s_name) & (t.side == "top")].token_id)
            stats.append({"matrix": name, "scoring": s_name, "mean": float(np.mean(s)),
                          "std": float(np.std(s)), "min": float(np.min(s)), "max": float(np.max(s)),
                          "spearman_vs_norm": float(np.corrcoef(pd.Series(s).rank().to_numpy(),
                                                                ranks_norm)[0, 1]),
                          "top_overlap_vs_norm": len(top & top_norm) / max(1, len(top_norm))})
    return pd.concat(tables, ignore_index=True), pd.DataFrame(stats)


def singular_values(fm: "A.FactoredMatrix") -> torch.Tensor:
    """Singular values of M = A @ B (per head, descending, float64) without the singular vectors: the
    Cholesky factors of the small Gram matrices, A^T A = La La^T and B B^T = Lb Lb^T, give
    M^T M ~ (La^T Lb), so sigma(M) = svdvals(La^T Lb) (r x r work only). Heads whose Gram matrix is not
    positive definite (rank-deficient factors) go through ``attention.factored_svd``. About twice as fast
    as the QR route; agrees with it to ~1e-14 relative (tests check)."""
    Af, Bf = fm.A.to(torch.float64), fm.B.to(torch.float64)
    La, ia = torch.linalg.cholesky_ex(Af.mT @ Af)
    Lb, ib = torch.linalg.cholesky_ex(Bf @ Bf.mT)
    S = torch.linalg.svdvals(La.mT @ Lb)
    bad = (ia != 0) | (ib != 0)
    if bad.any():
        S[bad] = A.factored_svd(Af[bad], Bf[bad]).S
    return S


def coverage_tables(desc, level: float = A.COVERAGE_LEVEL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Singular values of every block's per-head W_qk and W_vo (``singular_values``: through the factors;
    signs are irrelevant here). Returns (coverage [layer, kind, head, n_singular, rank_at_level, level,
    sigma_1, frobenius, d_head], curves [layer, kind, head, rank, sigma, coverage])."""
    cov, curves = [], []
    for l, a in enumerate(desc.attn):
        for kind, fm in (("qk", A.qk_factors(a.W_Q, a.W_K, desc.kv_head_map, desc.attn_scale)),
                         ("vo", A.vo_factors(a.W_V, a.W_O, desc.kv_head_map))):
            S = singular_values(fm)
            svd = A.SVD(U=torch.empty(0), S=S, V=torch.empty(0))
            t = A.coverage_table(svd, kind, level)
            t.insert(0, "layer", l)
            cov.append(t)
            c = A.coverage_curve(svd, kind)
            c.insert(0, "layer", l)
            curves.append(c)
    cov = pd.concat(cov, ignore_index=True)
    cov["d_head"] = desc.d_head
    return cov, pd.concat(curves, ignore_index=True)


def noun_table(tokenizer, nouns: Sequence[str]) -> pd.DataFrame:
    """The nouns that are one token (with a leading space) under this tokenizer: [noun, token_id, token]."""
    return A.single_token_nouns(tokenizer, nouns)


def _scan(X_both: torch.Tensor, X_top: torch.Tensor, rows, norm, k: int, chunk: int = A.CHUNK):
    """One pass over the vocabulary rows for two groups of vectors (float64 [m, d] each): the k largest
    and k smallest scores of ``X_both`` and the k largest of ``X_top``, scores = X @ norm(rows).T in
    ``attention.SCAN_DTYPE`` exactly as ``attention.vocab_extremes`` computes them. Returns
    (top_values, top_ids) for both groups stacked, and (bottom_values, bottom_ids) of X_both."""
    R = rows
    dt = A.SCAN_DTYPE
    X = torch.cat([X_both, X_top]).to(dt).to(R.device)
    nb = X_both.shape[0]
    f = A.as_norm(norm)
    V = R.shape[0]
    k = min(k, V)
    tv = torch.empty(X.shape[0], 0, dtype=dt, device=R.device)
    ti = torch.empty(X.shape[0], 0, dtype=torch.long, device=R.device)
    bv, bi = tv[:nb].clone(), ti[:nb].clone()

    def merge(vals, ids, s, i, largest):
        cv, ci = s.topk(min(k, s.shape[1]), dim=1, largest=largest)
        vals, idx = torch.cat([vals, cv], 1).topk(min(k, vals.shape[1] + cv.shape[1]), dim=1, largest=largest)
        return vals, torch.cat([ids, ci + i], 1).gather(1, idx)

    for i in range(0, V, chunk):
        j = min(i + chunk, V)
        s = X @ f(R[i:j].to(dt)).T
        tv, ti = merge(tv, ti, s, i, True)
        if nb:
            bv, bi = merge(bv, bi, s[:nb], i, False)
    return tv.cpu(), ti.cpu(), bv.cpu(), bi.cpu()


DIRECTION_COLUMNS = ["layer", "kind", "head", "component", "sigma", "side", "rank", "token_id", "token",
                     "token_raw", "score"]
ELLIPSE_COLUMNS = ["layer", "noun", "query_id", "head", "probe", "rank", "token_id", "token", "token_raw",
                   "score"]


def layer_probe(desc, layer: int, rows_norm, nouns: pd.DataFrame | None = None, tokenizer=None,
                n_components: int = 3, k: int = 10, ellipse_heads: Sequence[int] | None = None,
                chunk: int = A.CHUNK) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One block's singular-direction tokens and attention-ellipse probe in two scans of the vocabulary
    (one over the input-normed embeddings, one over the unembedding rows) instead of the eight that
    ``attention.head_svd`` + ``singular_direction_tokens`` + ``ellipse_probe`` make. Same definitions and
    the same numbers (tests check the tables against those functions):

    - directions (all query heads): the top ``n_components`` singular pairs of W_qk and W_vo (through the
      factors), sign-aligned by the rule of ``attention.sign_align`` (W_qk on the query side against the
      input-normed embeddings, W_vo on the output side against the unembedding rows); the top-k tokens of
      each side. A flipped pair's top-k is the unflipped vector's bottom-k, so each direction vector is
      scanned once for its k largest and k smallest scores.
    - ellipse (``ellipse_heads``, None: all): each noun token x = norm(W_E[id]); keys = top-k of
      x W_qk[h] norm(W_E)^T, update = top-k of ((x W_vo[h]) * g) W_U with g the final norm's weight.

    ``rows_norm``: (rows, norm) from ``InputNormedRows.for_layer``. Returns (directions, ellipse) with
    DIRECTION_COLUMNS and ELLIPSE_COLUMNS."""
    rows, norm = rows_norm
    a = desc.attn[layer]
    kv = desc.kv_head_map
    qk = A.qk_factors(a.W_Q, a.W_K, kv, desc.attn_scale).svd()
    vo = A.vo_factors(a.W_V, a.W_O, kv).svd()
    H, ksv = qk.S.shape
    c = min(n_components, ksv)
    d = rows.shape[1]
    W_U = desc.W_U if desc.W_U is not None else desc.W_E.T
    out_rows = W_U.T

    def vecs(X):                                    # [H, d, k] -> [H * c, d], head-major
        return X[..., :c].mT.reshape(H * c, d)

    dir_in = torch.cat([vecs(qk.U), vecs(qk.V), vecs(vo.U)])            # against norm(W_E)
    dir_out = vecs(vo.V)                                                 # against W_U.T
    # ellipse vectors (as attention.ellipse_probe builds them, float64 on the CPU)
    have_nouns = nouns is not None and not nouns.empty
    if have_nouns:
        f = A.as_norm(norm)
        E = A._t(rows)
        qids = [int(i) for i in nouns["token_id"]]
        Wq, Wk, Wv, Wo = (A._t(w, torch.float64).cpu() for w in (a.W_Q, a.W_K, a.W_V, a.W_O))
        hs = list(range(H)) if ellipse_heads is None else [int(h) for h in ellipse_heads]
        x = f(E[qids].to(torch.float64)).to(torch.float64).cpu()
        m = kv.long().cpu()
        s = float(desc.attn_scale)
        kdir = torch.stack([(s * x @ Wq[h]) @ Wk[m[h]].T for h in hs]).reshape(-1, d)
        upd = torch.stack([(x @ Wv[m[h]]) @ Wo[h] for h in hs])
        if desc.final_norm is not None and desc.final_norm.scale is not None:
            upd = upd * A._t(desc.final_norm.scale, torch.float64).cpu()
        upd = upd.reshape(-1, d)
    else:
        kdir = upd = torch.empty(0, d, dtype=torch.float64)
        hs, qids = [], []
    tv_in, ti_in, bv_in, bi_in = _scan(dir_in, kdir, rows, norm, k, chunk)
    tv_out, ti_out, bv_out, bi_out = _scan(dir_out, upd, out_rows, None, k, chunk)

    # sign rule: flip the pair iff max + min < 0 on its reference side
    n = H * c
    flip_qk = (tv_in[:n, 0] + bv_in[:n, 0]) < 0                          # query side (U of W_qk)
    flip_vo = (tv_out[:n, 0] + bv_out[:n, 0]) < 0                        # output side (V of W_vo)

    def pick(tv, ti, bv, bi, flip):
        vals = torch.where(flip[:, None], -bv, tv)
        ids = torch.where(flip[:, None], bi, ti)
        return vals, ids

    kk = ti_in.shape[1]
    heads_ = np.repeat(np.arange(H), c * kk)
    comps = np.tile(np.repeat(np.arange(c), kk), H)
    frames = []
    for kind, side, (vals, ids), S in (
            ("qk", "query", pick(tv_in[:n], ti_in[:n], bv_in[:n], bi_in[:n], flip_qk), qk.S),
            ("qk", "key", pick(tv_in[n:2 * n], ti_in[n:2 * n], bv_in[n:2 * n], bi_in[n:2 * n], flip_qk), qk.S),
            ("vo", "input", pick(tv_in[2 * n:3 * n], ti_in[2 * n:3 * n], bv_in[2 * n:3 * n], bi_in[2 * n:3 * n],
                                 flip_vo), vo.S),
            ("vo", "output", pick(tv_out[:n], ti_out[:n], bv_out, bi_out, flip_vo), vo.S)):
        frames.append(pd.DataFrame({
            "layer": layer, "kind": kind, "head": heads_, "component": comps,
            "sigma": S[:, :c].cpu().numpy()[heads_, comps], "side": side,
            "rank": np.tile(np.arange(1, kk + 1), n), "token_id": ids.reshape(-1).numpy(),
            "score": vals.reshape(-1).double().numpy()}))
    dirs = pd.concat(frames, ignore_index=True)
    dec, raw = A.token_strings(tokenizer, dirs["token_id"].tolist())
    dirs["token"], dirs["token_raw"] = dec, raw
    dirs = dirs[DIRECTION_COLUMNS]

    if not have_nouns:
        return dirs, pd.DataFrame(columns=ELLIPSE_COLUMNS)
    nq = len(qids)
    labels = np.asarray(nouns["noun"].tolist(), dtype=object)
    frames = []
    for probe, vals, ids in (("keys", tv_in[3 * n:], ti_in[3 * n:]), ("update", tv_out[n:], ti_out[n:])):
        kk = ids.shape[1]
        hh = np.repeat(np.asarray(hs), nq * kk)
        qq = np.tile(np.repeat(np.arange(nq), kk), len(hs))
        frames.append(pd.DataFrame({
            "layer": layer, "noun": labels[qq], "query_id": np.asarray(qids)[qq], "head": hh, "probe": probe,
            "rank": np.tile(np.arange(1, kk + 1), nq * len(hs)), "token_id": ids.reshape(-1).numpy(),
            "score": vals.reshape(-1).double().numpy()}))
    ell = pd.concat(frames, ignore_index=True)
    dec, raw = A.token_strings(tokenizer, ell["token_id"].tolist())
    ell["token"], ell["token_raw"] = dec, raw
    return dirs, ell[ELLIPSE_COLUMNS]


@dataclass
class Trajectory:
    """A phrase's states projected into the embedding UMAP (see ``trajectory_tables``)."""
    coords: pd.DataFrame          # [layer, position, token, x, y, z]
    norms: pd.DataFrame           # [layer, position, token, norm, normed_norm]
    lens: pd.DataFrame            # [layer, position, token, next_token, top_token, top_id, is_self, is_next]
    background: np.ndarray        # [n_fit, 3] UMAP coordinates of the fitted embedding rows
    tokens: list[str]


def phrase_ids(lm, phrase: str) -> tuple[list[int], int]:
    """(token ids as the model's tokenizer encodes the phrase, number of leading BOS positions to drop)."""
    ids = lm.encode(phrase)
    drop = int(bool(lm.desc.adds_bos and ids and ids[0] == lm.desc.bos_token_id))
    if len(ids) - drop < 1:
        raise ValueError(f"the phrase {phrase!r} has no tokens under {lm.desc.spec}")
    return ids, drop


def trajectory_tables(lm, phrase: str, out_dir="outputs", n_fit: int | None = 5000, n_neighbors: int = 15,
                      n_epochs: int | None = 200, seed: int = 0) -> Trajectory:
    """States 0..L of the phrase (``cache.cached_states``, positions="all"), final-normed and projected into a
    3-D UMAP fitted on ``n_fit`` embedding rows (``attention.umap_trajectory``); norms before / after the
    final norm; the logit-lens top-1 token of every final-normed state."""
    from .cache import cached_states

    desc = lm.desc
    ids, drop = phrase_ids(lm, phrase)
    L = desc.n_layers
    st = cached_states(lm, [ids], layers=list(range(L + 1)), positions="all", dtype="float32",
                       out_dir=out_dir, progress=False, batch_size=1)
    S = st.states[0][:, drop:].to(torch.float32)                         # [L+1, T, d]
    tok_ids = ids[drop:]
    tokens = A.token_strings(lm.tokenizer, tok_ids)[0]
    tr = A.umap_trajectory(desc.W_E, S, n_neighbors=n_neighbors, seed=seed, n_fit=n_fit, n_epochs=n_epochs,
                           norm=desc.final_norm)
    n_l, T = S.shape[:2]
    lay = np.repeat(np.arange(n_l), T)
    pos = np.tile(np.arange(T), n_l)
    tok = np.asarray(tokens, dtype=object)[pos]
    coords = pd.DataFrame({"layer": lay, "position": pos, "token": tok, "x": tr.coords[..., 0].ravel(),
                           "y": tr.coords[..., 1].ravel(), "z": tr.coords[..., 2].ravel()})
    normed = tr.normed_norms if tr.normed_norms is not None else tr.norms
    norms = pd.DataFrame({"layer": lay, "position": pos, "token": tok, "norm": tr.norms.ravel(),
                          "normed_norm": normed.ravel()})
    # logit lens: final norm then the unembedding (Gemma's soft-cap does not change the top-1)
    f = A.as_norm(desc.final_norm)
    W_U = desc.W_U if desc.W_U is not None else desc.W_E.T
    top = []
    for h in S:                                                          # one state index at a time
        logits = f(h).to(W_U.device, W_U.dtype) @ W_U
        if desc.b_U is not None:
            logits = logits + desc.b_U.to(logits)
        top.append(logits.argmax(-1).cpu())
    top = torch.cat(top).numpy()
    nxt = np.asarray(tok_ids[1:] + [-1])
    lens = pd.DataFrame({"layer": lay, "position": pos, "token": tok,
                         "next_token": np.asarray(tokens[1:] + [""], dtype=object)[pos],
                         "top_id": top, "top_token": A.token_strings(lm.tokenizer, top.tolist())[0],
                         "is_self": top == np.asarray(tok_ids)[pos], "is_next": top == nxt[pos]})
    return Trajectory(coords=coords, norms=norms, lens=lens, background=tr.embedding_coords, tokens=tokens)


# ============================================================================ one model, every model

@dataclass
class ModelReport:
    """Everything notebook 07 measures for one model (tables carry no model column; ``combine`` adds it)."""
    spec: str
    label: str
    summary: str
    layers: list[int]
    notes: list[str]
    norm_tokens: pd.DataFrame
    norm_stats: pd.DataFrame
    coverage: pd.DataFrame
    curves: pd.DataFrame
    directions: pd.DataFrame
    nouns: pd.DataFrame
    ellipse: pd.DataFrame
    trajectory: Trajectory | None
    n_layers: int
    d_head: int
    n_heads: int
    timings: dict = field(default_factory=dict)


def _heads(n_heads: int, limit: int | None) -> list[int] | None:
    return None if limit is None or limit >= n_heads else list(range(limit))


def analyse_model(lm, P, nouns: Sequence[str]) -> ModelReport:
    """Run every probe of notebook 07 on one loaded model with the notebook's parameters ``P`` (fields
    depths, top_k, n_components, coverage_level, ellipse_heads, phrase, umap_n_fit, umap_neighbors,
    umap_epochs, seed, out_dir)."""
    desc, tok = lm.desc, lm.tokenizer
    if not desc.is_decoder or desc.W_U is None:
        raise ValueError(f"{desc.spec}: notebook 07 probes decoder language models (it needs an unembedding)")
    times = {}
    t0 = time.perf_counter()
    layers = probe_layers(desc.n_layers, P.depths)
    norm_tokens, norm_stats = embedding_norm_table(desc, tok, P.top_k)
    times["embedding_norms"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    coverage, curves = coverage_tables(desc, P.coverage_level)
    times["coverage"] = time.perf_counter() - t0

    rows = InputNormedRows(desc)
    nn_df = noun_table(tok, nouns)
    heads = _heads(desc.n_heads, P.ellipse_heads)
    dirs, ell = [], []
    t0 = time.perf_counter()
    for l in layers:
        dl, el = layer_probe(desc, l, rows.for_layer(l), nn_df, tok, P.n_components, P.top_k, heads)
        dirs.append(dl)
        ell.append(el)
    times["directions_ellipse"] = time.perf_counter() - t0
    del rows

    t0 = time.perf_counter()
    traj = trajectory_tables(lm, P.phrase, P.out_dir, P.umap_n_fit, P.umap_neighbors, P.umap_epochs, P.seed)
    times["trajectory"] = time.perf_counter() - t0
    return ModelReport(spec=desc.spec, label=model_label(desc.spec), summary=desc.summary(), layers=layers,
                       notes=model_notes(desc), norm_tokens=norm_tokens, norm_stats=norm_stats,
                       coverage=coverage, curves=curves, directions=pd.concat(dirs, ignore_index=True),
                       nouns=nn_df, ellipse=pd.concat(ell, ignore_index=True), trajectory=traj,
                       n_layers=desc.n_layers, d_head=desc.d_head, n_heads=desc.n_heads, timings=times)


def run_models(P, progress: bool = True, verbose: bool = True) -> dict[str, ModelReport]:
    """Load each model of ``P.models`` in turn (``models.load_model`` with P.dtype / P.device), analyse it and
    free it; returns label -> ModelReport in the order of P.models."""
    import gc

    from tqdm.auto import tqdm

    from .models import load_model

    nouns = A.load_common_nouns(P.nouns_path)[:P.n_nouns]
    reports = {}
    for spec in tqdm(P.models, desc="models", disable=not progress):
        path = report_path(P, spec, nouns)
        rep = _read_report(path)
        cached = rep is not None
        if not cached:
            torch.manual_seed(P.seed)                 # per model: a model's report does not depend on the others
            t0 = time.perf_counter()
            lm = load_model(spec, dtype=P.dtype, device=P.device, out_dir=P.out_dir)
            t_load = time.perf_counter() - t0
            rep = analyse_model(lm, P, nouns)
            rep.timings = {"load": t_load, **rep.timings}
            if path is not None:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(pickle.dumps(rep))
            del lm
            gc.collect()
        reports[rep.label] = rep
        if verbose:
            t = ", ".join(f"{k} {v:.1f} s" for k, v in rep.timings.items())
            print(f"{rep.summary}\n  {t}" + (" (read from the cache)" if cached else ""))
    return reports


REPORT_VERSION = 1     # bump when analyse_model changes what it measures


def report_path(P, spec: str, nouns: Sequence[str]):
    """Where one model's ModelReport is cached (<out_dir>/cache/attention/), keyed by the weights' stamp,
    every analysis parameter and the noun list; None when the weights cannot be stamped (nothing cached)."""
    import hashlib
    import json
    from dataclasses import asdict

    from .cache import source_stamp
    from .paths import OutputDirs
    canon, stamp = source_stamp(spec, P.out_dir)
    if stamp is None:
        return None
    params = {k: v for k, v in asdict(P).items() if k not in ("profile", "out_dir", "figures_dir", "models")}
    key = json.dumps([REPORT_VERSION, canon, stamp, params, list(nouns)], sort_keys=True, default=str)
    slug = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in canon)
    return OutputDirs.at(P.out_dir).cache / "attention" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pkl"


def _read_report(path) -> ModelReport | None:
    """A cached report, or None when there is none or it cannot be read (then it is recomputed)."""
    if path is None or not path.exists():
        return None
    try:
        rep = pickle.loads(path.read_bytes())
    except Exception:                                # truncated or from another code version
        return None
    return rep if isinstance(rep, ModelReport) else None


TABLES = ("norm_tokens", "norm_stats", "coverage", "curves", "directions", "nouns", "ellipse")


def combine(reports: dict[str, ModelReport]) -> dict[str, pd.DataFrame]:
    """Every table over all models, with ``model`` (spec) and ``label`` columns in front: the names of
    ``TABLES`` plus trajectory_coords, trajectory_norms, logit_lens."""
    out = {}
    for name in TABLES:
        out[name] = pd.concat([getattr(r, name).assign(model=r.spec, label=r.label) for r in reports.values()],
                              ignore_index=True)
    for name, attr in (("trajectory_coords", "coords"), ("trajectory_norms", "norms"), ("logit_lens", "lens")):
        out[name] = pd.concat([getattr(r.trajectory, attr).assign(model=r.spec, label=r.label)
                               for r in reports.values() if r.trajectory is not None], ignore_index=True)
    for name, df in out.items():
        out[name] = df[["model", "label", *[c for c in df.columns if c not in ("model", "label")]]]
    return out


def save_tables(tables: dict[str, pd.DataFrame], out_dir="outputs") -> list:
    """Every combined table as <out_dir>/results/07_attention_geometry/<name>.csv."""
    from .tables import save_table
    return [save_table(df, NB, name, out_dir) for name, df in tables.items()]


# ============================================================================ compact views (display)

def fmt_token(s: str) -> str:
    """A token as shown in the token lists: repr without the outer quotes (spaces and newlines visible)."""
    return repr(str(s))[1:-1].replace(" ", "␣")


def token_lists(df: pd.DataFrame, by: Sequence[str], n: int | None = None, col: str = "tokens") -> pd.DataFrame:
    """One row per group of ``by``: the tokens in rank order (first n), joined by ' | '."""
    d = df.sort_values([*by, "rank"])
    if n is not None:
        d = d[d["rank"] <= n]
    return (d.groupby(list(by), sort=False)["token"]
             .apply(lambda s: " | ".join(fmt_token(t) for t in s)).rename(col).reset_index())


def norm_view(tables: dict[str, pd.DataFrame], n: int = 8) -> pd.DataFrame:
    """Embedding-norm token lists: rows (label, matrix, scoring, side)."""
    return token_lists(tables["norm_tokens"], ["label", "matrix", "scoring", "side"], n)


def direction_view(tables: dict[str, pd.DataFrame], n: int = 6, heads: int | None = 2,
                   components: int = 1) -> pd.DataFrame:
    """Singular-direction token lists of the first ``heads`` heads and ``components`` components, per probed
    block: one row per (label, layer, kind, head, component) with sigma, the U-side tokens (W_qk: query,
    W_vo: input) and the V-side tokens (W_qk: key, W_vo: output)."""
    d = tables["directions"]
    d = d[d["component"] < components]
    if heads is not None:
        d = d[d["head"] < heads]
    keys = ["label", "layer", "kind", "head", "component"]
    t = token_lists(d, [*keys, "side"], n)
    t["which"] = t["side"].map({"query": "u", "input": "u", "key": "v", "output": "v"})
    u = t[t.which == "u"].rename(columns={"side": "u_side", "tokens": "u_tokens"})
    v = t[t.which == "v"].rename(columns={"side": "v_side", "tokens": "v_tokens"})
    sig = d.groupby(keys, sort=False)["sigma"].first().reset_index()
    out = sig.merge(u.drop(columns="which"), on=keys).merge(v.drop(columns="which"), on=keys)
    return out[[*keys, "sigma", "u_side", "u_tokens", "v_side", "v_tokens"]]


def ellipse_view(tables: dict[str, pd.DataFrame], nouns: Sequence[str], n: int = 6, head: int = 0) -> pd.DataFrame:
    """Top keys and update tokens of a few nouns for one head: one row per (label, layer, noun)."""
    d = tables["ellipse"]
    d = d[d["noun"].isin(list(nouns)) & (d["head"] == head)]
    t = token_lists(d, ["label", "layer", "noun", "probe"], n)
    w = t.pivot_table(index=["label", "layer", "noun"], columns="probe", values="tokens", aggfunc="first",
                      sort=False)
    w.columns.name = None
    return w.reset_index()


def rank_view(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Rank at the coverage level per probed block: median and range over heads, with d_head."""
    cov = tables["coverage"]
    probed = tables["directions"][["label", "layer"]].drop_duplicates()
    c = cov.merge(probed, on=["label", "layer"])
    g = c.groupby(["label", "layer", "kind"], sort=False)
    return g.agg(rank_median=("rank_at_level", "median"), rank_min=("rank_at_level", "min"),
                 rank_max=("rank_at_level", "max"), d_head=("d_head", "first"),
                 level=("level", "first")).reset_index()


def lens_view(tables: dict[str, pd.DataFrame], label: str) -> pd.DataFrame:
    """Logit lens of one model's phrase: rows = state index (0 = embedding), columns = the phrase's tokens
    (position-numbered), entries = the top-1 token of the final-normed state; '*' marks the next token."""
    d = tables["logit_lens"]
    d = d[d["label"] == label]
    cell = d["top_token"].map(fmt_token) + np.where(d["is_next"], "*", "")
    col = d["position"].astype(str) + ":" + d["token"].map(fmt_token)
    w = pd.DataFrame({"layer": d["layer"], "col": col, "cell": cell}).pivot(index="layer", columns="col",
                                                                              values="cell")
    order = list(dict.fromkeys(col[d["layer"] == d["layer"].min()]))
    w = w[order]
    w.columns.name = None
    return w


def ellipse_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``ellipse_stats`` of every model, with the label in front."""
    rows = [ellipse_stats(g).assign(label=lab) for lab, g in tables["ellipse"].groupby("label", sort=False)]
    if not rows:
        return pd.DataFrame(columns=["label", "layer", "probe", "pairs", "self_in_topk", "distinct_top1",
                                     "common_top1"])
    df = pd.concat(rows, ignore_index=True)
    return df[["label", *[c for c in df.columns if c != "label"]]]


# ============================================================================ measured findings

def ellipse_stats(ell: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, probe): the share of (noun, head) pairs whose top-k holds the query token itself, the share
    of distinct top-1 tokens among them, and the most frequent top-1 tokens (with counts)."""
    if ell.empty:
        return pd.DataFrame(columns=["layer", "probe", "pairs", "self_in_topk", "distinct_top1", "common_top1"])
    rows = []
    for (layer, probe), g in ell.groupby(["layer", "probe"], sort=True):
        pairs = g.groupby(["noun", "head"])
        self_hit = pairs.apply(lambda x: bool((x["token_id"] == x["query_id"]).any()), include_groups=False)
        top1 = g[g["rank"] == 1]
        counts = top1["token"].map(fmt_token).value_counts()
        rows.append({"layer": layer, "probe": probe, "pairs": len(self_hit),
                     "self_in_topk": float(self_hit.mean()),
                     "distinct_top1": top1["token_id"].nunique() / max(1, len(top1)),
                     "common_top1": ", ".join(f"{t} ({c})" for t, c in counts.head(4).items())})
    return pd.DataFrame(rows)


def direction_stats(dirs: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, kind, component): mean over heads of the overlap |A ∩ B| / k between the top-k token sets
    of the two sides (qk: query vs key; vo: input vs output). High overlap: a direction that matches a
    token with itself (qk) or copies it (vo)."""
    rows = []
    pairs = {"qk": ("query", "key"), "vo": ("input", "output")}
    for (layer, kind, comp), g in dirs.groupby(["layer", "kind", "component"], sort=True):
        a, b = pairs[kind]
        ov = []
        for h, gh in g.groupby("head"):
            sa = set(gh[gh.side == a].token_id)
            sb = set(gh[gh.side == b].token_id)
            ov.append(len(sa & sb) / max(1, len(sa)))
        rows.append({"layer": layer, "kind": kind, "component": comp, "side_overlap": float(np.mean(ov))})
    return pd.DataFrame(rows)


def _toks(df: pd.DataFrame, n: int) -> str:
    return ", ".join(fmt_token(t) for t in df.sort_values("rank")["token"].head(n))


def model_findings(rep: ModelReport, n: int = 5) -> list[str]:
    """The findings lines of one model (numbers measured in this run)."""
    L = rep.n_layers
    lines = [f"== {rep.label}: {rep.summary}"]
    # embedding norms
    nt, ns = rep.norm_tokens, rep.norm_stats
    mat = nt["matrix"].iloc[0]
    sel = lambda s, side: nt[(nt.matrix == mat) & (nt.scoring == s) & (nt.side == side)]
    lines.append(f"  norms ({mat}): largest ||e||: {_toks(sel('norm', 'top'), n)}; smallest: "
                 f"{_toks(sel('norm', 'bottom'), n)}")
    st = ns[ns.matrix == mat].set_index("scoring")
    lines.append(f"    scaled by the final norm's weight: top {_toks(sel('scaled_norm', 'top'), n)} "
                 f"(rank correlation with ||e|| {st.loc['scaled_norm', 'spearman_vs_norm']:.2f}, top-k overlap "
                 f"{st.loc['scaled_norm', 'top_overlap_vs_norm']:.0%})")
    if "bias" in st.index:
        lines.append(f"    bias score b.e: top {_toks(sel('bias', 'top'), n)}; bottom {_toks(sel('bias', 'bottom'), n)}")
        lines.append(f"    both (largest reachable logit): top {_toks(sel('both', 'top'), n)}; bottom "
                     f"{_toks(sel('both', 'bottom'), n)} (top-k overlap with ||e|| "
                     f"{st.loc['both', 'top_overlap_vs_norm']:.0%})")
    else:
        lines.append("    no bias score: the final norm is an RMSNorm without bias")
    # coverage
    cov = rep.coverage
    for kind in ("qk", "vo"):
        c = cov[cov.kind == kind]
        per = c[c.layer.isin(rep.layers)].groupby("layer")["rank_at_level"].median()
        allm = c.groupby("layer")["rank_at_level"].median()
        lvl = c["level"].iloc[0]
        lines.append(f"  W_{kind} rank at {lvl:.0%} coverage (median over heads, d_head={rep.d_head}): "
                     + ", ".join(f"block {l + 1}: {v:g}" for l, v in per.items())
                     + f"; over all {L} blocks {allm.min():g}-{allm.max():g}")
    # directions
    ds = direction_stats(rep.directions)
    d0 = ds[ds.component == 0].set_index(["layer", "kind"])["side_overlap"]
    lines.append("  top singular direction, overlap of the two sides' top-k tokens (mean over heads): "
                 + "; ".join(f"block {l + 1}: qk {d0.get((l, 'qk'), float('nan')):.2f}, "
                             f"vo {d0.get((l, 'vo'), float('nan')):.2f}" for l in rep.layers))
    dr = rep.directions
    for l in rep.layers:
        g = dr[(dr.layer == l) & (dr.component == 0)]
        h = int(g[g.kind == "qk"].sort_values("sigma", ascending=False)["head"].iloc[0])
        gk = g[(g["head"] == h)]
        lines.append(f"    block {l + 1}, head {h} (largest sigma_1 of W_qk): first direction's query tokens "
                     f"{_toks(gk[(gk.kind == 'qk') & (gk.side == 'query')], n)} -> key tokens "
                     f"{_toks(gk[(gk.kind == 'qk') & (gk.side == 'key')], n)}; its W_vo writes toward "
                     f"{_toks(gk[(gk.kind == 'vo') & (gk.side == 'output')], n)}")
    # ellipse
    if rep.ellipse.empty:
        lines.append("  ellipse probe: no noun is a single token under this tokenizer")
    else:
        es = ellipse_stats(rep.ellipse)
        lines.append(f"  ellipse probe: {len(rep.nouns)} single-token nouns, heads "
                     f"{sorted(rep.ellipse['head'].unique().tolist())}")
        for _, r in es.iterrows():
            what = "keys" if r.probe == "keys" else "update"
            lines.append(f"    block {r.layer + 1} {what}: query token in its own top-k for {r.self_in_topk:.0%} of "
                         f"(noun, head) pairs; distinct top-1 {r.distinct_top1:.0%}; most common top-1: "
                         f"{r.common_top1}")
    # trajectory
    tr = rep.trajectory
    if tr is not None:
        nm = tr.norms
        first, last = nm[nm.layer == 0]["norm"], nm[nm.layer == L]["norm"]
        nn_ = nm["normed_norm"]
        lines.append(f"  trajectory of {len(tr.tokens)} tokens: median ||h|| {first.median():.3g} at the embedding, "
                     f"{last.median():.3g} after block {L} (x{last.median() / first.median():.3g}); after the final "
                     f"norm ||h|| = {nn_.mean():.3g} +- {nn_.std():.2g} (cv {nn_.std() / nn_.mean():.2g})")
        lens = tr.lens
        l0 = lens[lens.layer == 0]
        lL = lens[(lens.layer == L) & (lens.next_token != "")]
        mid = lens[lens.layer == L // 2]
        lines.append(f"    logit lens: top-1 is the token itself at the embedding for {l0.is_self.mean():.0%} of positions; "
                     f"the next token at block {L // 2} for {mid[mid.next_token != ''].is_next.mean():.0%} and after "
                     f"block {L} for {lL.is_next.mean():.0%} (top-1 after the last block: "
                     f"{', '.join(fmt_token(t) for t in lL.top_token.head(12))}{', ...' if len(lL) > 12 else ''})")
    return lines


def findings_text(reports: dict[str, ModelReport], n: int = 5) -> str:
    """The findings of every model, as printed by the notebook's last code cell."""
    out = []
    for rep in reports.values():
        out += model_findings(rep, n)
        out += [f"  note: {x}" for x in rep.notes]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# ============================================================================ figures

def plot_coverage(tables: dict[str, pd.DataFrame], level: float | None = None):
    """Per model (columns): cumulative singular-value coverage of each head's W_qk (row 1) and W_vo (row 2) at
    the probed blocks (colour = block, one line per head), and the rank at the coverage level of every head
    of every block (row 3; dots = heads, lines = median). Returns (fig, tidy)."""
    import matplotlib.pyplot as plt

    cov, curves = tables["coverage"], tables["curves"]
    probed = tables["directions"][["label", "layer"]].drop_duplicates()
    labels = list(dict.fromkeys(cov["label"]))
    lvl = float(cov["level"].iloc[0]) if level is None else level
    fig, axes = plt.subplots(3, len(labels), figsize=(3.6 * len(labels), 9.0), squeeze=False)
    tidy = []
    for j, lab in enumerate(labels):
        lays = sorted(probed[probed.label == lab]["layer"])
        cv = curves[(curves.label == lab) & curves.layer.isin(lays)]
        tidy.append(cv.assign(panel="curve"))
        for i, kind in enumerate(("qk", "vo")):
            ax = axes[i][j]
            for li, l in enumerate(lays):
                g = cv[(cv.kind == kind) & (cv.layer == l)]
                for h, gh in g.groupby("head"):
                    ax.plot(gh["rank"], gh["coverage"], color=LAYER_COLORS[li % len(LAYER_COLORS)], lw=0.9,
                            alpha=0.75, label=f"block {l + 1} ({layer_role(l, lays)})" if h == 0 else None)
            ax.axhline(lvl, color="grey", ls=":", lw=0.8)
            ax.set(title=f"{lab}: W_{kind}", xlabel="rank r", ylabel="coverage c_r" if j == 0 else None,
                   ylim=(0, 1.02))
            if j == 0 or i == 0:
                ax.legend(fontsize=6, loc="lower right")
        ax = axes[2][j]
        c = cov[cov.label == lab]
        for kind, color, dx in (("qk", "tab:blue", -0.12), ("vo", "tab:red", 0.12)):
            g = c[c.kind == kind]
            ax.scatter(g["layer"] + 1 + dx, g["rank_at_level"], s=7, color=color, alpha=0.5)
            med = g.groupby("layer")["rank_at_level"].median()
            ax.plot(med.index + 1, med.values, color=color, lw=1.2, label=f"W_{kind} median")
        ax.axhline(int(c["d_head"].iloc[0]), color="grey", ls=":", lw=0.8)
        ax.set(title=f"{lab}: rank at {lvl:.0%}", xlabel="block", ylabel="rank" if j == 0 else None,
               ylim=(0, int(c["d_head"].iloc[0]) * 1.05))
        ax.legend(fontsize=6)
        tidy.append(c.assign(panel="rank"))
    fig.tight_layout()
    return fig, pd.concat(tidy, ignore_index=True)


def plot_trajectories(reports: dict[str, ModelReport], max_background: int = 2000, seed: int = 0):
    """Per model (rows): the phrase's final-normed states in the 3-D embedding UMAP as three 2-D projections
    (x-y, x-z, y-z); grey = fitted embedding rows (at most ``max_background``), one coloured path per token from the embedding (circle) to
    the last block (star, labelled). Returns (fig, tidy coordinates)."""
    import matplotlib.pyplot as plt

    reps = [r for r in reports.values() if r.trajectory is not None]
    fig, axes = plt.subplots(len(reps), 3, figsize=(12.0, 3.7 * len(reps)), squeeze=False)
    rng = np.random.default_rng(seed)
    tidy = []
    cmap = plt.get_cmap("tab10" if max((len(r.trajectory.tokens) for r in reps), default=1) <= 10 else "tab20")
    for i, rep in enumerate(reps):
        tr = rep.trajectory
        bg = tr.background
        if len(bg) > max_background:
            bg = bg[rng.choice(len(bg), max_background, replace=False)]
        tidy.append(tr.coords.assign(model=rep.spec, label=rep.label))
        for j, (a, b) in enumerate((("x", "y"), ("x", "z"), ("y", "z"))):
            ax = axes[i][j]
            ia, ib = "xyz".index(a), "xyz".index(b)
            ax.scatter(bg[:, ia], bg[:, ib], s=1, color="0.8", alpha=0.4, rasterized=True)
            for p, g in tr.coords.groupby("position"):
                g = g.sort_values("layer")
                col = cmap(p % cmap.N)
                ax.plot(g[a], g[b], "-", color=col, lw=1.0, alpha=0.9)
                ax.scatter(g[a], g[b], s=8, color=col)
                ax.scatter(g[a].iloc[0], g[b].iloc[0], s=40, marker="o", facecolor="none", edgecolor=col)
                ax.scatter(g[a].iloc[-1], g[b].iloc[-1], s=80, marker="*", color=col)
                ax.annotate(fmt_token(tr.tokens[p]), (g[a].iloc[-1], g[b].iloc[-1]), fontsize=7, color=col,
                            xytext=(3, 3), textcoords="offset points")
            ax.set(xlabel=f"UMAP {a}", ylabel=f"UMAP {b}")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_title(f"{rep.label}: {len(tr.coords.layer.unique())} states per token", fontsize=9)
    fig.tight_layout()
    return fig, pd.concat(tidy, ignore_index=True)


def plot_state_norms(reports: dict[str, ModelReport]):
    """Per model: ||h|| of every token's state at each state index (solid, log scale) and after the final norm
    (dashed): the final-normed states lie near a sphere. Returns (fig, tidy)."""
    import matplotlib.pyplot as plt

    reps = [r for r in reports.values() if r.trajectory is not None]
    fig, axes = plt.subplots(1, len(reps), figsize=(3.8 * len(reps), 3.6), squeeze=False)
    tidy = []
    cmap = plt.get_cmap("tab10" if max((len(r.trajectory.tokens) for r in reps), default=1) <= 10 else "tab20")
    for ax, rep in zip(axes[0], reps):
        nm = rep.trajectory.norms
        tidy.append(nm.assign(model=rep.spec, label=rep.label))
        for p, g in nm.groupby("position"):
            col = cmap(p % cmap.N)
            ax.plot(g["layer"], g["norm"], "-", color=col, lw=1, label=fmt_token(rep.trajectory.tokens[p]))
            ax.plot(g["layer"], g["normed_norm"], "--", color=col, lw=0.8, alpha=0.7)
        ax.set_yscale("log")
        ax.set(title=rep.label, xlabel="state (0 = embedding, l = after block l)", ylabel="||h||")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig, pd.concat(tidy, ignore_index=True)

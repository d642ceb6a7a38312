"""Notebook 07's compact views, built from the reports and combined tables of ``nb07_attention_geometry``:
token lists per scoring, direction and noun, the rank and lens views, the ellipse and direction statistics,
and the one-line statement of the procedure behind each table (the findings: ``nb07_claims``). Blocks are
counted from 0, as the paper does."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..weights.vocab import fmt_token


# ============================================================================ compact views (display)

def token_lists(df: pd.DataFrame, by: Sequence[str], n: int | None = None, col: str = "tokens") -> pd.DataFrame:
    """One row per group of ``by``: the tokens in rank order (first n), joined by ' | '."""
    d = df.sort_values([*by, "rank"])
    if n is not None:
        d = d[d["rank"] <= n]
    return (d.groupby(list(by), sort=False)["token"]
             .apply(lambda s: " | ".join(fmt_token(t) for t in s)).rename(col).reset_index())


def norm_view(tables: dict[str, pd.DataFrame], n: int = 8) -> pd.DataFrame:
    """Embedding-norm token lists: rows (label, matrix, scoring, procedure, side)."""
    return token_lists(tables["norm_tokens"], ["label", "matrix", "scoring", "procedure", "side"], n)


def bias_view(tables: dict[str, pd.DataFrame], n: int = 5, heads: int | None = 2) -> pd.DataFrame:
    """Query- and key-bias probe token lists of the first ``heads`` heads: rows (label, layer, head, bias,
    sign)."""
    d = tables["bias_probes"]
    if heads is not None:
        d = d[d["head"] < heads]
    if d.empty:
        return pd.DataFrame(columns=["label", "layer", "head", "bias", "sign", "tokens"])
    return token_lists(d, ["label", "layer", "head", "bias", "sign"], n)


# ============================================================================ which procedure made each table

def procedure_lines(P) -> dict[str, str]:
    """One line per table: the procedure that produced it under the parameters ``P`` (the paper's, with its
    file and lines, or a named variant) and why the variant exists."""
    sign = ("paper: svd_analysis.py:203-263, each pair's sign set on its key (right) side against ln_1(W_E) "
            "(lines 93-105)" if P.sign_side == "key" else
            "variant sign_side='query': W_qk's sign set on the query side (the paper: the key side, "
            "svd_analysis.py:93-105)")
    if P.ellipse_readout == "paper":
        ell = ("paper: common_nouns.py:38-101, keys x W_qk . ln_1(e_y) per head; values ln_f(e + u_h + b_O) per "
               "head and ln_f(e + sum_h u_h + b_O) for the block (u_h = x W_vo + b_V W_O)")
    else:
        ell = ("variant ellipse_readout='update': the head's update x W_vo alone times the final norm's weight "
               "(what the head writes, without the token it is added to; the paper: ln_f(e + u_h + b_O))")
    matrix = "embedding (the paper)" if P.readout_matrix == "embedding" else "unembedding (variant)"
    nouns = "bare (the paper)" if P.noun_prefix == "" else repr(P.noun_prefix) + " + noun (variant)"
    ell += f", read against the {matrix}; nouns {nouns}"
    umap = ("paper: trajectory.py + utils/umap_utils.py" if (P.umap_rows, P.umap_metric, P.umap_init) ==
            ("first", "euclidean", "spectral") else "variant")
    umap += (f": UMAP fitted on the {P.umap_rows} {P.umap_n_fit} rows of W_E, {P.umap_metric}, "
             f"{'Laplacian-eigenmap' if P.umap_init == 'spectral' else 'UMAP spectral'} start; states final-normed "
             f"(the variant, random rows and cosine, makes the map independent of the states' scale)")
    return {
        "norm_tokens": "paper: word_embeddings.py:28-88 (norm, scaled_norm, bias = ||e|| + beta.e, both = "
                       "||gamma e|| + beta.e); rows marked 'variant' are ours: bias_term = beta.e and max_logit = "
                       "sqrt(d) ||gamma e|| + beta.e, the largest logit a normalised state can give the token",
        "layernorm_distances": "paper: word_embeddings.py:91-130 (distances of e, e - mean, e * sqrt(d)/mean||e|| "
                               "and both to layer_norm(e)); only for models whose norms are LayerNorms",
        "directions": sign,
        "ellipse": ell,
        "bias_probes": "paper: svd_analysis.py:313-349 (W_Q b_K^T and b_Q W_K^T per head, +/- against ln_1(W_E)); "
                       "only for models with attention biases",
        "trajectory": umap,
        "coverage": ("paper: utils/plot_utils.py:107-139, cumulative share of sigma over the first d_head singular "
                     "values and the first rank above the level" if P.coverage_of == "sigma" else
                     "variant coverage_of='sigma2': cumulative share of sigma^2, the best rank-r approximation's "
                     "share of the squared Frobenius norm (the paper: of sigma, utils/plot_utils.py:123-124)"),
    }


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
    """Top keys and value (or update) tokens of a few nouns for one head, and the block's summed value
    ("values_sum", the paper's read-out): one row per (label, layer, noun)."""
    d = tables["ellipse"]
    d = d[d["noun"].isin(list(nouns)) & ((d["head"] == head) | (d["probe"] == "values_sum"))]
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


# ============================================================================ statistics behind the findings

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

"""Notebook 07's findings text and compact views, built from the reports and combined tables of
``nb07_attention_geometry``: token lists per scoring, direction and noun, the rank and lens views, the
ellipse and direction statistics, and the measured findings of every model."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..weights.vocab import fmt_token
from .nb07_attention_geometry import ModelReport


# ============================================================================ compact views (display)

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

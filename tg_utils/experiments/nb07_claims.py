"""Notebook 07's findings as Markdown built from the models' reports: one short paragraph per claim of
Traveling Words (Molina 2023), the paper's claim beside ours and a verdict the numbers decide by a rule
the paragraph states; per-model detail as DataFrames (``model_table``, ``strongest_heads``)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..findings import Finding, to_markdown
from ..weights.vocab import fmt_token
from .nb07_findings import ellipse_stats
from .nb07_report import ModelReport

PAPER = "Traveling Words, Molina 2023"
SPHERE_CV = 0.05          # a coefficient of variation of the final-normed norms at most this: "on a sphere"
DISTINCT = 0.5            # at least this share of distinct top-1 tokens over (noun, head) pairs: "noun-specific"


def share_verdict(hits: int, n: int) -> str:
    """The verdict of a claim tested on n models, seen in `hits` of them: all agrees, none disagrees."""
    return "not testable here" if n == 0 else "agrees" if hits == n else "disagrees" if hits == 0 else "partly"


def _toks(df: pd.DataFrame, n: int) -> str:
    return ", ".join(f"`{fmt_token(t)}`" for t in df.sort_values("rank")["token"].head(n))


def _norm_table(rep: ModelReport, scoring: str, side: str = "top") -> pd.DataFrame:
    nt = rep.norm_tokens
    mat = nt["matrix"].iloc[0]
    return nt[(nt.matrix == mat) & (nt.scoring == scoring) & (nt.side == side)]


def _stats(rep: ModelReport) -> pd.DataFrame:
    ns = rep.norm_stats
    return ns[ns.matrix == ns["matrix"].iloc[0]].set_index("scoring")


def _block_stat(rep: ModelReport, probe: str, col: str) -> dict[int, float]:
    es = ellipse_stats(rep.ellipse)
    es = es[es.probe == probe]
    return {int(r.layer): float(getattr(r, col)) for r in es.itertuples()}


def _norm_growth(rep: ModelReport) -> tuple[float, float]:
    """(median ||h|| after the last block / at the embedding, coefficient of variation after the final norm)."""
    nm = rep.trajectory.norms
    first, last = nm[nm.layer == 0]["norm"].median(), nm[nm.layer == rep.n_layers]["norm"].median()
    nn_ = nm["normed_norm"]
    return float(last / first), float(nn_.std() / nn_.mean())


def _lens(rep: ModelReport) -> tuple[float, float]:
    """Share of positions whose logit-lens top-1 is the next token: at the middle state, after the last block."""
    lens = rep.trajectory.lens
    lens = lens[lens.next_token != ""]
    L = rep.n_layers
    return float(lens[lens.layer == L // 2].is_next.mean()), float(lens[lens.layer == L].is_next.mean())


def _pct(x: float) -> str:
    return f"{x:.0%}"


def norm_finding(reports: dict[str, ModelReport], n: int = 5) -> Finding:
    with_bias = [r for r in reports.values() if "both" in _stats(r).index]
    parts, moved = [], 0
    for r in with_bias:
        st = _stats(r)
        ov = float(st.loc["both", "top_overlap_vs_norm"])
        moved += ov < 1
        parts.append(f"{r.label}: ||gamma e|| + beta.e puts {_toks(_norm_table(r, 'both'), n)} on top (rank "
                     f"correlation with ||e|| {st.loc['both', 'spearman_vs_norm']:.2f}, top-{n} overlap {_pct(ov)})")
    rms = [r.label for r in reports.values() if "both" not in _stats(r).index]
    ours = ("; ".join(parts) + ". " if parts else "") + (
        f"RMSNorm, no beta, only ||e|| and ||gamma e||: {', '.join(rms)}." if rms else "")
    ours += f" Rule: agrees where beta changes the top-{n} of ||e|| ({moved} of {len(with_bias)} models)."
    return Finding("The final norm decides which tokens are easy to reach", ours,
                   paper=f"({PAPER}) the final LayerNorm's scale gamma and bias beta, with the embedding norms, "
                         "decide which tokens a state on the sphere reaches easily; beta acts as a prior.",
                   verdict=share_verdict(moved, len(with_bias)))


def rank_finding(reports: dict[str, ModelReport]) -> Finding:
    parts = []
    for r in reports.values():
        c = r.coverage[r.coverage.layer.isin(r.layers)]
        med = c.groupby(["kind", "layer"])["rank_at_level"].median()
        lvl = c["level"].iloc[0]
        parts.append(f"{r.label} (d_head {r.d_head}): W_qk " + "/".join(f"{med.get(('qk', l), np.nan):g}" for l in r.layers)
                     + ", W_vo " + "/".join(f"{med.get(('vo', l), np.nan):g}" for l in r.layers)
                     + f" at blocks {'/'.join(map(str, r.layers))}, {_pct(lvl)} coverage")
    return Finding("Rank of the per-head maps", "median rank over heads at the coverage level: " + "; ".join(parts)
                   + " (every block: the coverage figure).",
                   paper="it plots the cumulative share of sigma of each head's W_qk and W_vo at blocks 0, 5 "
                         "and 11 of GPT-2.")


def qk_finding(reports: dict[str, ModelReport]) -> Finding:
    parts, hits, n = [], 0, 0
    for r in reports.values():
        d = _block_stat(r, "keys", "distinct_top1")
        if not d:
            continue
        n += 1
        hits += d[min(d)] >= DISTINCT
        parts.append(f"{r.label} " + ", ".join(f"block {l}: {_pct(v)}" for l, v in d.items()))
    return Finding("Query-key patterns in the first block", "distinct top-1 keys over (noun, head) pairs: "
                   + ("; ".join(parts) if parts else "no noun is one token under any tokenizer")
                   + f". Rule: agrees where the first probed block has at least {_pct(DISTINCT)} distinct "
                     f"({hits} of {n} models).",
                   paper=f"({PAPER}) already in the first layers, W_qk matches a noun query with keys related to it.",
                   verdict=share_verdict(hits, n))


def value_finding(reports: dict[str, ModelReport]) -> Finding:
    parts, hits, n = [], 0, 0
    for r in reports.values():
        own, dist = _block_stat(r, "values_sum", "self_in_topk"), _block_stat(r, "values_sum", "distinct_top1")
        if not own:
            continue
        n += 1
        hits += dist[max(dist)] >= DISTINCT
        parts.append(f"{r.label} " + ", ".join(f"block {l}: own token {_pct(own[l])}, distinct {_pct(dist[l])}"
                                               for l in own))
    return Finding("What the value moves the state toward", "the paper's read-out ln_f(e + sum of the heads' "
                   "updates + b_O), share of nouns in their own top-k and of distinct top-1 tokens: "
                   + ("; ".join(parts) if parts else "no summed read-out (another ellipse_readout)")
                   + f". Rule: agrees where the last probed block's top-1 is noun-specific (at least "
                     f"{_pct(DISTINCT)} distinct; {hits} of {n} models).",
                   paper="a block's value read-out moves a noun's state toward tokens specific to that noun.",
                   verdict=share_verdict(hits, n))


def sphere_finding(reports: dict[str, ModelReport]) -> Finding:
    reps = [r for r in reports.values() if r.trajectory is not None]
    vals = [(r.label, *_norm_growth(r)) for r in reps]
    hits = sum(cv <= SPHERE_CV for _, _, cv in vals)
    return Finding("Trajectories on a sphere", "raw state norms grow from the embedding to the last block (median) "
                   + ", ".join(f"x{g:.3g} ({lab})" for lab, g, _ in vals) + "; after the final norm the coefficient "
                   "of variation of the norm is " + ", ".join(f"{cv:.2g} ({lab})" for lab, _, cv in vals)
                   + f". Rule: on a sphere where it is at most {SPHERE_CV} ({hits} of {len(vals)} models).",
                   paper=f"({PAPER}) the final norm puts every state on a sphere, where the tokens travel.",
                   verdict=share_verdict(hits, len(vals)))


def lens_finding(reports: dict[str, ModelReport]) -> Finding:
    reps = [r for r in reports.values() if r.trajectory is not None]
    vals = [(r.label, *_lens(r)) for r in reps]
    hits = sum(b > a for _, a, b in vals)
    return Finding("Iterative refinement", "logit lens, share of positions whose top-1 is the next token at the "
                   "middle state / after the last block: " + "; ".join(f"{lab} {_pct(a)} / {_pct(b)}"
                                                                        for lab, a, b in vals)
                   + f". Rule: agrees where the last block reads more next tokens than the middle ({hits} of "
                     f"{len(vals)} models).",
                   paper="the states move step by step toward the next token's embedding over the layers.",
                   verdict=share_verdict(hits, len(vals)))


def findings(reports: dict[str, ModelReport], n: int = 5) -> list[Finding | str]:
    """Every finding of notebook 07 from the reports, in the notebook's order."""
    if not reports:
        raise ValueError("no model reports: run nb07.run(P) with at least one model in P.models")
    out: list[Finding | str] = [norm_finding(reports, n), rank_finding(reports), qk_finding(reports),
                                value_finding(reports)]
    if any(r.trajectory is not None for r in reports.values()):
        out += [sphere_finding(reports), lens_finding(reports)]
    return out


def findings_markdown(reports: dict[str, ModelReport], n: int = 5) -> str:
    """The findings as Markdown (the notebook shows it with ``findings.show``)."""
    return to_markdown(findings(reports, n))


# ============================================================================ per-model detail (DataFrames)

def model_table(reports: dict[str, ModelReport]) -> pd.DataFrame:
    """One row per model: the numbers behind the findings (blocks are the probed ones, in order)."""
    rows = []
    for r in reports.values():
        st = _stats(r)
        row = {"label": r.label, "blocks": "/".join(map(str, r.layers)),
               "final_norm_bias": "both" in st.index,
               "spearman_scaled_vs_norm": float(st.loc["scaled_norm", "spearman_vs_norm"]),
               "spearman_both_vs_norm": float(st.loc["both", "spearman_vs_norm"]) if "both" in st.index else np.nan,
               "distinct_top1_keys": "/".join(_pct(v) for v in _block_stat(r, "keys", "distinct_top1").values()),
               "own_token_values_sum": "/".join(_pct(v) for v in
                                                _block_stat(r, "values_sum", "self_in_topk").values())}
        if r.trajectory is not None:
            g, cv = _norm_growth(r)
            a, b = _lens(r)
            row.update(norm_growth=g, normed_norm_cv=cv, lens_next_middle=a, lens_next_last=b)
        rows.append(row)
    return pd.DataFrame(rows)


def strongest_heads(reports: dict[str, ModelReport], n: int = 5) -> pd.DataFrame:
    """Per model and probed block, the head with the largest sigma_1 of W_qk: its first direction's query and
    key tokens and the tokens its W_vo's first direction writes toward."""
    rows = []
    for r in reports.values():
        dr = r.directions
        for l in r.layers:
            g = dr[(dr.layer == l) & (dr.component == 0)]
            h = int(g[g.kind == "qk"].sort_values("sigma", ascending=False)["head"].iloc[0])
            gk = g[g["head"] == h]
            side = lambda kind, s: ", ".join(fmt_token(t) for t in gk[(gk.kind == kind) & (gk.side == s)]
                                             .sort_values("rank")["token"].head(n))
            rows.append({"label": r.label, "block": l, "head": h, "query_tokens": side("qk", "query"),
                         "key_tokens": side("qk", "key"), "vo_writes_toward": side("vo", "output")})
    return pd.DataFrame(rows)

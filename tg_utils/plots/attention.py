"""Figures of notebook 07 (attention geometry): the embedding-norm scorings (norm against bias term per token),
the attention-ellipse probe (the nouns' top keys and value targets per block), cumulative singular-value
coverage and rank of the heads, the phrase trajectories in the embedding UMAP, and the state norms through
the layers. The trajectory
figures take the notebook's reports (label -> ``experiments.nb07_attention_geometry.ModelReport``; they read
only ``.label``, ``.spec`` and ``.trajectory``)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..weights.vocab import fmt_token
from .style import TOKEN_COLORS

PROBE_NAMES = {0: "first", 1: "middle", 2: "last"}
STAGE_NORMED = "final-normed"          # nb07_trajectory's stage of the final-normed states
LAYER_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def layer_role(layer: int, layers: Sequence[int]) -> str:
    """'first' / 'middle' / 'last' for the three default probe layers, else 'block <l+1>'."""
    layers = sorted(layers)
    if len(layers) == 3:
        return PROBE_NAMES[layers.index(layer)]
    return f"block {layer + 1}"


def plot_coverage(tables: dict[str, pd.DataFrame], level: float | None = None):
    """Per model (columns): cumulative singular-value coverage of each head's W_qk (row 1) and W_vo (row 2) at
    the probed blocks (colour = block, one line per head), and the rank at the coverage level of every head
    of every block (row 3; dots = heads, lines = median). Returns (fig, tidy)."""
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


def plot_trajectories(reports: dict, max_background: int = 2000, seed: int = 0):
    """Per model (rows): the phrase's final-normed states in the 3-D embedding UMAP as three 2-D projections
    (x-y, x-z, y-z); grey = fitted embedding rows (at most ``max_background``), one path per token in its own
    distinct colour (style.TOKEN_COLORS, named in the row's legend) from the embedding (open circle) to the
    last block (star), its markers growing with the layer so that the order of the states reads off the path;
    dark crosses: the raw token embeddings and token + position embeddings (the paper's input panel).
    Returns (fig, tidy coordinates)."""
    reps = [r for r in reports.values() if r.trajectory is not None]
    fig, axes = plt.subplots(len(reps), 3, figsize=(14.0, 3.9 * len(reps)), squeeze=False, layout="constrained")
    rng = np.random.default_rng(seed)
    tidy = []
    for i, rep in enumerate(reps):
        tr = rep.trajectory
        bg = tr.background
        if len(bg) > max_background:
            bg = bg[rng.choice(len(bg), max_background, replace=False)]
        tidy.append(tr.coords.assign(model=rep.spec, label=rep.label))
        co = tr.coords[tr.coords["stage"] == STAGE_NORMED] if "stage" in tr.coords else tr.coords
        raw = tr.coords[tr.coords["stage"] != STAGE_NORMED] if "stage" in tr.coords else co.iloc[:0]
        handles = []
        for j, (a, b) in enumerate((("x", "y"), ("x", "z"), ("y", "z"))):
            ax = axes[i][j]
            ax.scatter(bg[:, "xyz".index(a)], bg[:, "xyz".index(b)], s=1, color="0.85", alpha=0.4, rasterized=True)
            for stage, marker in zip(dict.fromkeys(raw["stage"]), ("x", "+")):
                g = raw[raw["stage"] == stage]
                h = ax.scatter(g[a], g[b], s=18, marker=marker, color="0.3", label=f"{stage} (raw)")
                if j == 0:
                    handles.append(h)
            for k, (p, g) in enumerate(co.groupby("position")):
                g = g.sort_values("layer")
                col = TOKEN_COLORS[k % len(TOKEN_COLORS)]
                line, = ax.plot(g[a], g[b], "-", color=col, lw=0.9, alpha=0.8, label=f"{p}: {fmt_token(tr.tokens[p])}")
                ax.scatter(g[a], g[b], s=np.linspace(4, 34, len(g)), color=col, alpha=0.8, lw=0)
                ax.scatter(g[a].iloc[0], g[b].iloc[0], s=46, marker="o", facecolor="none", edgecolor=col, lw=1.2)
                ax.scatter(g[a].iloc[-1], g[b].iloc[-1], s=110, marker="*", color=col, edgecolor="k", lw=0.4)
                if j == 0:
                    handles.append(line)
            ax.set(xlabel=f"UMAP {a}", ylabel=f"UMAP {b}")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_title(f"{rep.label}: {len(co.layer.unique())} states per token (marker size grows with the "
                             "layer)", fontsize=9, loc="left")
        axes[i][2].legend(handles=handles, title="position: token", fontsize=7, title_fontsize=7,
                          loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig, pd.concat(tidy, ignore_index=True)


def plot_state_norms(reports: dict):
    """Per model: ||h|| of every token's state at each state index (solid, log scale) and after the final norm
    (dashed): the final-normed states lie near a sphere. Returns (fig, tidy)."""
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


def plot_norm_scorings(tables: dict[str, pd.DataFrame], n_label: int = 5):
    """Per model: every token's norm term against its bias term (Traveling Words, word_embeddings.py): x =
    ||gamma * e||, y = beta . e, colour = the paper's "both" (x + y); the dashed line x + y = c passes through
    the n_label-th highest "both", so the tokens right of it are its top list (labelled, red) and the tokens
    left of the line through the n_label-th lowest its bottom list (labelled, blue). A model whose final norm
    has no bias (RMSNorm): ||e|| against ||gamma * e||, the top tokens of the scaled norm labelled.
    Returns (fig, tidy: the points drawn, with columns x, y, x_name, y_name and the labelled side)."""
    pts = tables["norm_points"]
    labels = list(dict.fromkeys(pts["label"]))
    fig, axes = plt.subplots(1, len(labels), figsize=(4.6 * len(labels), 4.2), squeeze=False)
    tidy = []
    for ax, lab in zip(axes[0], labels):
        g = pts[pts["label"] == lab].copy()
        has_bias = g["bias_term"].notna().any()
        if has_bias:
            xn, yn, sn = "scaled_norm", "bias_term", "both"
        else:
            xn, yn, sn = "norm", "scaled_norm", "scaled_norm"
        g["x"], g["y"], g["x_name"], g["y_name"] = g[xn], g[yn], xn, yn
        order = g.sort_values([sn, "token_id"], ascending=[False, True])
        top, bottom = order.head(n_label), order.tail(n_label)
        g["labelled"] = np.where(g.token_id.isin(top.token_id), "top", np.where(g.token_id.isin(bottom.token_id),
                                                                                 "bottom", ""))
        sc = ax.scatter(g["x"], g["y"], c=g[sn], s=2, cmap="viridis", alpha=0.6, rasterized=True)
        fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02).set_label(sn, fontsize=7)
        for part, col in ((top, "tab:red"), (bottom, "tab:blue")):
            ax.scatter(part[xn], part[yn], s=14, facecolor="none", edgecolor=col)
            for _, r in part.iterrows():
                ax.annotate(fmt_token(r["token"]), (r[xn], r[yn]), fontsize=6, color=col, xytext=(2, 2),
                            textcoords="offset points")
        if has_bias:
            xs = np.linspace(g["x"].min(), g["x"].max(), 2)
            for c, col in ((top[sn].min(), "tab:red"), (bottom[sn].max(), "tab:blue")):
                ax.plot(xs, c - xs, ls="--", lw=0.7, color=col)
            pad = 0.05 * np.ptp(g["y"]) or 0.05 * max(abs(g["y"].max()), 1.0)   # all-equal y (a zero bias):
            ax.set_ylim(g["y"].min() - pad, g["y"].max() + pad)                    # no singular-limits warning
        title = f"{lab} ({g['matrix'].iloc[0]})" + ("" if has_bias else ": no bias (RMSNorm)")
        ax.set(title=title, xlabel="||gamma * e||" if has_bias else "||e||",
               ylabel="beta . e" if has_bias else "||gamma * e||")
        ax.title.set_fontsize(9)
        tidy.append(g)
    fig.tight_layout()
    return fig, pd.concat(tidy, ignore_index=True)


def plot_ellipse(tables: dict[str, pd.DataFrame], nouns: Sequence[str], head: int = 0, n: int = 3):
    """Per model (rows): two token tables, nouns (rows) x probed blocks (columns), from the attention-ellipse
    probe (Traveling Words, common_nouns.py): the noun's top ``n`` keys of head ``head``, and the tokens the
    block moves the noun toward (the paper's read-out summed over heads, "values_sum"; with the variant
    read-out, head ``head``'s "update"). A model shows those of ``nouns`` that are one token under it, or,
    when none is, its first len(nouns) single-token nouns. Returns (fig, tidy: the tokens shown)."""
    ell = tables["ellipse"]
    labels = list(dict.fromkeys(ell["label"]))
    want = list(nouns)
    n_rows = max(1, len(want))
    fig, axes = plt.subplots(len(labels), 2, figsize=(13.0, 0.4 + 0.3 * (n_rows + 2) * len(labels)),
                             squeeze=False)
    tidy = []
    for i, lab in enumerate(labels):
        el = ell[ell["label"] == lab]
        have = list(dict.fromkeys(el["noun"]))
        rows = [x for x in want if x in set(have)] or have[:n_rows]
        e = el[el["noun"].isin(rows) & (el["rank"] <= n)]
        vprobe = "values_sum" if (el["probe"] == "values_sum").any() else "update"
        panels = (("keys", head, f"top keys, head {head}"),
                  (vprobe, -1 if vprobe == "values_sum" else head,
                   "values: ln_f(e + sum of heads' updates + b_O)" if vprobe == "values_sum"
                   else f"update of head {head} (variant read-out)"))
        for j, (probe, h, what) in enumerate(panels):
            ax = axes[i][j]
            ax.axis("off")
            d = e[(e["probe"] == probe) & (e["head"] == h)]
            tidy.append(d)
            if d.empty:
                ax.set_title(f"{lab}: {what} (no single-token noun)", fontsize=8)
                continue
            blocks = sorted(d["layer"].unique())
            cell = (d.sort_values("rank").groupby(["noun", "layer"])["token"]
                     .apply(lambda s: ", ".join(fmt_token(t) for t in s)))
            text = [[cell.get((r, b), "") for b in blocks] for r in rows]
            tab = ax.table(cellText=text, rowLabels=rows, colLabels=[f"block {b}" for b in blocks],
                           loc="upper center", cellLoc="left")
            tab.auto_set_font_size(False)
            tab.set_fontsize(7)
            ax.set_title(f"{lab}: {what}", fontsize=8)
    fig.tight_layout()
    return fig, pd.concat(tidy, ignore_index=True)

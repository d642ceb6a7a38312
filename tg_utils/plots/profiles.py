"""Figures of the layer profiles (notebooks 02, 03, 05): state norms, metric profiles with bands,
differences between models, cosine heatmaps, GRIDE scale curves, the ID-loss correlation."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..models.spec import table_label
from .style import METRIC_LABELS, log_ticks, outside_legend, panel_grid, profile_panel, with_labels


def plot_norms(df: pd.DataFrame):
    """Mean state norm per layer against relative depth, one line per model (log scale)."""
    df = with_labels(df)
    fig, ax = plt.subplots(figsize=(8.5, 4.5), layout="constrained")
    for lab, g in df.groupby("label", sort=False):
        ax.plot(g.relative_depth, g.mean_norm, marker=".", label=lab)
    ax.set(yscale="log", xlabel="relative depth (layer / number of layers)", ylabel="mean L2 norm of a token state",
           title="state norm per layer")
    outside_legend(fig, [ax])
    return fig, df


def plot_profiles(summary: pd.DataFrame, metrics: Sequence[str], x: str = "layer", by: str = "label",
                  title: str = "", order: Sequence[str] | None = None, columns: int = 2):
    """One panel per metric (at most `columns` per row), lines with bands (summary from
    geometry.profile_summary + labels), the legend right of the panels; a layer 0 far off the scale of the
    other layers is clipped and marked (style.clip_layer0)."""
    n_cols = min(len(metrics), columns)
    n_rows = -(-len(metrics) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols + 2.2, 3.8 * n_rows), squeeze=False,
                             layout="constrained")
    for k, m in enumerate(metrics):
        profile_panel(axes.flat[k], summary, m, x=x, by=by, order=order)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    outside_legend(fig, axes)
    if title:
        fig.suptitle(title)
    return fig, summary[summary.metric.isin(metrics)].reset_index(drop=True)


def plot_differences(summary: pd.DataFrame, pairs: Sequence[tuple[str, str]], metric: str, x: str = "layer"):
    """Mean profile of A minus mean profile of B for each (A, B) label pair, on shared axes."""
    sub = summary[summary.metric == metric]
    rows = []
    fig, ax = plt.subplots(figsize=(8.5, 4.2), layout="constrained")
    for a, b in pairs:
        ga = sub[sub.label == a].set_index(x)["mean"]
        gb = sub[sub.label == b].set_index(x)["mean"]
        d = (ga - gb).dropna()
        if d.empty:
            continue
        ax.plot(d.index, d.values, marker=".", label=f"{a} - {b}")
        rows.append(pd.DataFrame({"minuend": a, "subtrahend": b, x: d.index, "metric": metric,
                                  "difference": d.values}))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel=x, ylabel=f"difference in {METRIC_LABELS.get(metric, metric)}")
    outside_legend(fig, [ax])
    return fig, pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def plot_heatmaps(mats: dict[str, dict[int, np.ndarray]]):
    """Pairwise token cosine-similarity heatmaps: rows = models, columns = layers."""
    models = list(mats)
    n_cols = max(len(v) for v in mats.values())
    fig, axes = plt.subplots(len(models), n_cols, figsize=(3.2 * n_cols, 3.0 * len(models)), squeeze=False)
    rows = []
    for i, m in enumerate(models):
        for j, (layer, C) in enumerate(mats[m].items()):
            ax = axes[i][j]
            im = ax.imshow(C, vmin=-1, vmax=1, cmap="RdBu_r")
            ax.set_title(f"{m}\nlayer {layer}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
            ii, jj = np.triu_indices(len(C))
            rows.append(pd.DataFrame({"model": m, "layer": layer, "i": ii, "j": jj, "cosine": C[ii, jj]}))
    fig.colorbar(im, ax=axes, shrink=0.6, label="cosine similarity")
    return fig, pd.concat(rows, ignore_index=True)


def scale_curves(long: pd.DataFrame) -> pd.DataFrame:
    """Mean over prompts of the GRIDE ID at every scale: model, revision, layer, n1, id."""
    sub = long[long.metric.str.match(r"id_s\d+$")]
    sub = sub.assign(n1=sub.metric.str[4:].astype(int))
    return sub.groupby(["model", "revision", "layer", "n1"], as_index=False).value.mean().rename(
        columns={"value": "id"})


def plot_scale_curves(long: pd.DataFrame, keys: Sequence[tuple[str, str]]):
    """ID against scale n1 at the first, middle and last layer, one panel per (model, revision) of `keys`,
    three panels a row; log-log: the embedding output's ID (layer 0, up to ~10x the others in the toy
    models) and the later layers' both stay readable."""
    curves = scale_curves(long)
    fig, axes = panel_grid(len(keys))
    shown = []
    for ax, (model, rev) in zip(axes.flat, keys):
        c = curves[(curves.model == model) & (curves.revision == rev)]
        L = c.layer.max()
        for layer in sorted({0, L // 2, L}):
            g = c[c.layer == layer]
            ax.plot(g.n1, g.id, marker=".", label=f"layer {layer}")
            shown.append(g)
        ax.set(xscale="log", yscale="log", xlabel="scale n1", ylabel="GRIDE intrinsic dimension",
               title=table_label(model, rev))
        log_ticks(ax, xticks=c.n1.unique())
        ax.legend(fontsize=7)
    return fig, pd.concat(shown, ignore_index=True)


def plot_correlation(corr: pd.DataFrame, title: str = ""):
    """Pearson r between ID and loss across prompts against relative depth, one line per model (and
    per S when several are given); filled markers: p < 0.05, open: p >= 0.05."""
    fig, ax = plt.subplots(figsize=(8.5, 4.2), layout="constrained")
    depth = corr.groupby(["model", "revision"]).layer.transform("max")
    df = corr.assign(relative_depth=corr.layer / depth)
    for i, ((model, rev, s), g) in enumerate(df.groupby(["model", "revision", "shuffle_index"], sort=False)):
        g = g.sort_values("layer")
        s_txt = "pooled over S" if s == -1 else f"S={s}"
        line, = ax.plot(g.relative_depth, g.r, lw=1, color=f"C{i % 10}",
                        label=f"{table_label(model, rev)}, {s_txt} (n={int(g.n.iloc[0])})")
        sig = g.p < 0.05
        ax.scatter(g.relative_depth[sig], g.r[sig], color=line.get_color(), s=18, zorder=3)
        ax.scatter(g.relative_depth[~sig], g.r[~sig], facecolors="none", edgecolors=line.get_color(), s=18,
                   zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(ylim=(-1.05, 1.05), xlabel="relative depth (layer / number of layers)",
           ylabel="Pearson r (ID, loss) across prompts", title=title)
    outside_legend(fig, [ax])
    return fig, df


def plot_layer_similarity(sim: pd.DataFrame, metric: str = "cka"):
    """Layer-by-layer similarity heat maps (notebook 05's layer_similarity): one panel per model pair,
    layers of A down, layers of B across, colour in [0, 1]."""
    sub = sim[sim.metric == metric]
    pairs = list(dict.fromkeys(zip(sub.a, sub.b)))
    n_cols = min(4, len(pairs))
    n_rows = -(-len(pairs) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 3.4 * n_rows), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel()[len(pairs):]:
        ax.axis("off")
    for ax, (a, b) in zip(axes.ravel(), pairs):
        g = sub[(sub.a == a) & (sub.b == b)].pivot(index="layer_a", columns="layer_b", values="value")
        im = ax.imshow(g.to_numpy(), vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set(xlabel="layer of B", ylabel="layer of A", xticks=range(g.shape[1]), yticks=range(g.shape[0]))
        ax.set_title(f"A: {a}\nB: {b}", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label={"cka": "linear CKA", "mutual_knn": "mutual k-NN (k=10)"}.get(metric, metric))
    return fig, sub.reset_index(drop=True)

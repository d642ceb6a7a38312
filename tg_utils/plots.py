"""Plotting helpers shared by the notebooks. Each returns the figure and the tidy table of exactly
the numbers it draws (save both with tg_utils.figures.save_figure)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .models.spec import table_label

METRIC_LABELS = {"cos_full": "mean cosine similarity (diagonal incl.)",
                 "cos_offdiag": "mean cosine similarity (off-diagonal)",
                 "id": "intrinsic dimension (GRIDE, n1=1)", "chi_1": "neighbourhood overlap chi_1 (l, l+1)",
                 "loss": "next-token loss (nats)"}


_label = table_label


def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Add a 'label' column: toy runs as '<run> (random|trained)', other models by spec."""
    return df.assign(label=[_label(m, r) for m, r in zip(df.model, df.revision)])


def plot_norms(df: pd.DataFrame):
    """Mean state norm per layer against relative depth, one line per model (log scale)."""
    import matplotlib.pyplot as plt
    df = with_labels(df)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, g in df.groupby("label", sort=False):
        ax.plot(g.relative_depth, g.mean_norm, marker=".", label=label)
    ax.set(yscale="log", xlabel="relative depth (layer / number of layers)", ylabel="mean L2 norm of a token state",
           title="state norm per layer")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig, df


def profile_panel(ax, summary: pd.DataFrame, metric: str, x: str = "layer", by: str = "label",
                  order: Sequence[str] | None = None, **line_kw):
    """Mean over prompts with its bootstrap 95 % band, one line per `by` value, on `ax`."""
    sub = summary[summary.metric == metric]
    keys = order if order is not None else list(dict.fromkeys(sub[by]))
    for key in keys:
        g = sub[sub[by] == key].sort_values(x)
        if g.empty:
            continue
        line, = ax.plot(g[x], g["mean"], marker=".", label=str(key), **line_kw)
        if g["low"].notna().any():
            ax.fill_between(g[x], g["low"], g["high"], color=line.get_color(), alpha=0.18, lw=0)
    ax.set(xlabel="relative depth" if x == "relative_depth" else x, ylabel=METRIC_LABELS.get(metric, metric))


def plot_profiles(summary: pd.DataFrame, metrics: Sequence[str], x: str = "layer", by: str = "label",
                  title: str = "", order: Sequence[str] | None = None):
    """One panel per metric, lines with bands (summary from geometry.profile_summary + labels)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        profile_panel(ax, summary, m, x=x, by=by, order=order)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, summary[summary.metric.isin(metrics)].reset_index(drop=True)


def plot_differences(summary: pd.DataFrame, pairs: Sequence[tuple[str, str]], metric: str, x: str = "layer"):
    """Mean profile of A minus mean profile of B for each (A, B) label pair, on shared axes."""
    import matplotlib.pyplot as plt
    sub = summary[summary.metric == metric]
    rows = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
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
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def cosine_matrix(X) -> np.ndarray:
    """The N x N cosine-similarity matrix of one cloud (float64)."""
    X = np.asarray(X, dtype=np.float64)
    n = np.linalg.norm(X, axis=1, keepdims=True)
    Xn = X / np.where(n == 0, 1, n)
    return Xn @ Xn.T


def plot_heatmaps(mats: dict[str, dict[int, np.ndarray]]):
    """Pairwise token cosine-similarity heatmaps: rows = models, columns = layers."""
    import matplotlib.pyplot as plt
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

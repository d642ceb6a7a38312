"""Figures of the shuffle experiment (notebook 04): profiles coloured by shuffle index S, scale
curves per S, loss against S, and the ID peak of structured against fully shuffled prompts."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..models.spec import table_label
from .profiles import scale_curves
from .style import METRIC_LABELS, log_ticks, model_keys, outside_legend, panel_grid, s_colors


def plot_shuffle_profiles(long: pd.DataFrame, summary: pd.DataFrame, metric: str, show_prompts: int = 3,
                          min_layer: int = 0):
    """`metric` against layer coloured by S: one row per model; columns: the first `show_prompts`
    prompts one by one, then the mean over prompts with its bootstrap 95 % band; layers >= min_layer
    (1: the original's view of ID, chi_1 and nn_sim, which it never computes on the embedding output)."""
    long = long[long.layer >= min_layer]
    summary = summary[summary.layer >= min_layer]
    models = model_keys(long)
    colors = s_colors(long.shuffle_index.unique())
    n_cols = show_prompts + 1
    fig, axes = plt.subplots(len(models), n_cols, figsize=(3.3 * n_cols + 0.8, 2.9 * len(models)), squeeze=False,
                             layout="constrained")
    tidy = []
    for i, (model, rev) in enumerate(models):
        sub = long[(long.model == model) & (long.revision == rev) & (long.metric == metric)]
        pids = sorted(sub.prompt_id.unique())[:show_prompts]
        for j in range(show_prompts):
            ax = axes[i][j]
            if j >= len(pids):
                ax.axis("off")
                continue
            for s, g in sub[sub.prompt_id == pids[j]].groupby("shuffle_index"):
                g = g.sort_values("layer")
                ax.plot(g.layer, g.value, color=colors[s], lw=1.2, label=f"S={s}")
                tidy.append(g.assign(panel=f"prompt {pids[j]}", mean=g.value, low=np.nan, high=np.nan))
            ax.set_title(f"{table_label(model, rev)}: prompt {pids[j]}", fontsize=8)
        ax = axes[i][-1]
        sm = summary[(summary.model == model) & (summary.revision == rev) & (summary.metric == metric)]
        for s, g in sm.groupby("shuffle_index"):
            g = g.sort_values("layer")
            ax.plot(g.layer, g["mean"], color=colors[s], lw=1.5, label=f"S={s}")
            if g["low"].notna().any():
                ax.fill_between(g.layer, g["low"], g["high"], color=colors[s], alpha=0.2, lw=0)
            tidy.append(g.assign(panel="mean", prompt_id=-1, value=g["mean"]))
        n = int(sm.n_prompts.max()) if len(sm) else 0
        ax.set_title(f"{table_label(model, rev)}: mean of {n} prompts", fontsize=8)
        for ax in axes[i]:
            ax.set_xlabel("layer (l, l+1)" if metric.startswith("chi") else "layer", fontsize=8)
        axes[i][0].set_ylabel(METRIC_LABELS.get(metric, metric), fontsize=8)
    outside_legend(fig, axes[:1, -1:])
    cols = ["model", "revision", "panel", "prompt_id", "shuffle_index", "layer", "mean", "low", "high"]
    return fig, pd.concat(tidy, ignore_index=True)[cols].rename(columns={"mean": metric})


def plot_scale_curves_by_s(long: pd.DataFrame, min_layer: int = 1):
    """ID against the GRIDE scale n1 (mean over prompts) at the layer of each model's structured mean
    ID peak over layers >= min_layer (1, the original's: it computes no ID on the embedding output), one
    line per S, one panel per model."""
    models = model_keys(long)
    colors = s_colors(long.shuffle_index.unique())
    fig, axes = panel_grid(len(models))
    tidy = []
    for ax, (model, rev) in zip(axes.flat, models):
        m = long[(long.model == model) & (long.revision == rev)]
        s0 = m[(m.shuffle_index == 0) & (m.metric == "id") & (m.layer >= min_layer)].groupby("layer").value.mean()
        layer = int(s0.idxmax())
        for s, g in m.groupby("shuffle_index"):
            c = scale_curves(g.assign(revision=rev))
            c = c[c.layer == layer].sort_values("n1")
            ax.plot(c.n1, c.id, marker=".", color=colors[s], label=f"S={s}")
            tidy.append(c.assign(shuffle_index=s))
        ax.set(xscale="log", xlabel="scale n1 (n2 = 2 n1)", ylabel="GRIDE intrinsic dimension",
               title=f"{table_label(model, rev)}, layer {layer}")
        log_ticks(ax, xticks=c.n1.unique())
    outside_legend(fig, axes[:1, :1])
    return fig, pd.concat(tidy, ignore_index=True)


def plot_loss_vs_s(long: pd.DataFrame):
    """Mean next-token loss against S: thin lines one per prompt, thick line the mean over prompts."""
    models = model_keys(long)
    fig, axes = plt.subplots(1, len(models), figsize=(3.4 * len(models), 3.2), squeeze=False)
    sub = long[long.metric == "loss"]
    for ax, (model, rev) in zip(axes[0], models):
        g = sub[(sub.model == model) & (sub.revision == rev)]
        for _, p in g.groupby("prompt_id"):
            p = p.sort_values("shuffle_index")
            ax.plot(p.shuffle_index, p.value, color="grey", lw=0.7, alpha=0.6)
        m = g.groupby("shuffle_index").value.mean()
        ax.plot(m.index, m.values, color="C3", marker="o", lw=2, label="mean over prompts")
        ax.set(xlabel="shuffle index S", title=table_label(model, rev))
    axes[0][0].set_ylabel("mean next-token loss (nats)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig, sub.reset_index(drop=True)


def plot_peak_comparison(*cmps: pd.DataFrame):
    """One row per comparison (peak_comparison() tables, e.g. over all layers and from layer 1 on).
    Left: each prompt's ID peak under full shuffling against its structured peak (above the diagonal:
    higher when shuffled). Right: the peak's relative depth, structured against shuffled (below the
    diagonal: earlier when shuffled; points jittered by < 0.01 so that equal ones stay visible)."""
    fig, axes = plt.subplots(len(cmps), 2, figsize=(10, 4.0 * len(cmps)), squeeze=False)
    for row, cmp in zip(axes, cmps):
        ml = int(cmp.min_layer.iloc[0])
        where = "all layers: ours" if ml == 0 else ("layers >= 1: the paper's" if ml == 1 else f"layers >= {ml}")
        for i, ((model, rev), g) in enumerate(cmp.groupby(["model", "revision"], sort=False)):
            lab = f"{table_label(model, rev)} (S={int(g.s_cmp.iloc[0])}: {g.higher.mean():.0%} higher)"
            row[0].scatter(g.peak_ref, g.peak_cmp, color=f"C{i}", s=22, label=lab)
            jitter = (np.random.default_rng(i).random((2, len(g))) - 0.5) * 0.02
            row[1].scatter(g.depth_ref + jitter[0], g.depth_cmp + jitter[1], color=f"C{i}", s=22)
        lo = float(min(cmp.peak_ref.min(), cmp.peak_cmp.min())) * 0.9
        hi = float(max(cmp.peak_ref.max(), cmp.peak_cmp.max())) * 1.1
        row[0].plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        row[0].set(xscale="log", yscale="log", xlabel="peak ID, structured (S=0)",
                   ylabel="peak ID, fully shuffled", title=f"ID peak per prompt ({where})")
        row[1].plot([0, 1], [0, 1], color="grey", lw=0.8)
        row[1].set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xlabel="peak depth, structured",
                   ylabel="peak depth, fully shuffled", title=f"where the peak sits ({where})")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    return fig, pd.concat(cmps, ignore_index=True)

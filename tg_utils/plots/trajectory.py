"""Figures of notebook 06 (training-trajectory phases): RankMe / alpha-ReQ against step with the phases
shaded, eigenspectra, layer x checkpoint heat maps, token convergence and context perturbation. Each
plot_* takes notebook 06's Results (or one of its tables) and returns (fig, tidy DataFrame of exactly
the numbers drawn)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from .. import metrics as M
from ..metrics import trajectory as T


# ============================================================================ the curves a figure reads
# `res` is tg_utils.experiments.nb06_training_trajectory_phases.Results (read through its tables only).

def final_layer(res, trajectory: str) -> int:
    """The final-normed state index of a trajectory (the last layer of its spectra)."""
    return int(res.spectra.loc[res.spectra.trajectory == trajectory, "layer"].max())


def n_label(res, trajectory: str) -> str:
    """"N = <sequences>" of a trajectory's spectra (RankMe depends on N: every figure states it)."""
    info = getattr(res, "inputs", {}).get(trajectory, {})
    return f"N = {info.get('n_seqs', '?')} {info.get('sequences', 'sequences')}"


def spectral_curves(res, layer: str | int = "final") -> pd.DataFrame:
    """Wide per-checkpoint curves of one layer ("final" = each trajectory's final-normed layer):
    trajectory, step, rankme, rankme_singular, alpha, alpha_r2, alpha_r2_100, next_token_nll."""
    s = res.spectra
    if layer == "final":
        last = s.groupby("trajectory")["layer"].transform("max")
        s = s[s.layer == last]
    else:
        s = s[s.layer == int(layer)]
    w = s.pivot_table(index=["trajectory", "step"], columns="metric", values="value", sort=False).reset_index()
    w.columns.name = None
    return w


# ============================================================================ figures
# Each returns (fig, tidy DataFrame of exactly the numbers drawn).

PHASE_COLORS = {T.WARMUP: "tab:red", T.ENTROPY: "tab:green", T.COMPRESSION: "tab:blue"}


def _x(step):
    return np.asarray(step, dtype=float) + 1.0


def _grid(nrow: int, ncol: int, w: float, h: float, top: float = 0.5, sharex=False, sharey=False,
          left: float = 0.9, wspace: float = 0.12, hspace: float = 0.18):
    """A figure of nrow x ncol axes of w x h inches with fixed margins (top, left in inches): no
    tight_layout, which costs more than drawing on figures of many axes."""
    W, H = w * ncol + left + 0.2, h * nrow + top + 0.55
    fig, axes = plt.subplots(nrow, ncol, figsize=(W, H), squeeze=False, sharex=sharex, sharey=sharey)
    fig.subplots_adjust(left=left / W, right=1 - 0.2 / W, bottom=0.55 / H, top=1 - top / H,
                        wspace=wspace, hspace=hspace)
    return fig, axes


def _log(ax, axis: str = "x"):
    """Log scale without minor ticks (their labels dominate the drawing time of many small axes)."""
    for a in axis:
        getattr(ax, f"set_{a}scale")("log")
        getattr(ax, f"{a}axis").set_minor_locator(NullLocator())


def show(fig, png=None):
    """Show a saved figure in the notebook from its PNG (no second rendering) and close it; without a
    PNG, plt.show()."""
    if png is None:
        plt.show()
        return
    from IPython.display import Image, display      # lazy: IPython exists only where a notebook runs
    plt.close(fig)
    display(Image(filename=str(png)))


def _shade(ax, iv: pd.DataFrame):
    for r in iv.itertuples():
        if isinstance(r.label, str):
            ax.axvspan(_x(r.start_step), _x(r.end_step), color=PHASE_COLORS[r.label], alpha=0.12, lw=0)


def layer_names(n_states: int) -> list[str]:
    """Names of the state indices 0..n_states-1: emb (embedding), 1..L (blocks), final (final-normed)."""
    return ["emb"] + [str(i) for i in range(1, n_states - 1)] + ["final"]


def plot_spectral_trajectories(res):
    """One row per trajectory: RankMe, alpha-ReQ (markers sized by fit r2) and the losses against 1 + step
    (log axis), final-normed layer; phases shaded (red: warmup collapse, green: entropy-seeking, blue:
    compression-seeking); dotted line: end of the LR warmup."""
    curves = spectral_curves(res)
    names = list(dict.fromkeys(curves.trajectory))
    fig, axes = _grid(len(names), 3, 4.3, 2.5, top=0.8, sharex=True, left=1.1, wspace=0.3, hspace=0.15)
    tidy = []
    for i, t in enumerate(names):
        c = curves[curves.trajectory == t].sort_values("step")
        L = final_layer(res, t)
        iv = res.intervals[(res.intervals.trajectory == t) & (res.intervals.layer == L)] if len(res.intervals) else res.intervals
        a0, a1, a2 = axes[i]
        a0.plot(_x(c.step), c.rankme, "o-", color="k")
        a1.plot(_x(c.step), c.alpha, "-", color="k", lw=1)
        a1.scatter(_x(c.step), c.alpha, s=12 + 40 * np.clip(c.alpha_r2.fillna(0), 0, 1), color="k", zorder=3)
        tidy += [{"trajectory": t, "step": s, "series": m, "value": v} for m in ("rankme", "alpha", "alpha_r2")
                 for s, v in zip(c.step, c[m])]
        tidy += [{"trajectory": t, "step": s, "series": "n_seqs", "value": res.inputs.get(t, {}).get("n_seqs")}
                 for s in c.step]
        if "next_token_nll" in c and c.next_token_nll.notna().any():
            a2.plot(_x(c.step), c.next_token_nll, "x-", color="tab:purple", label="last-token NLL (spectra sequences)")
            tidy += [{"trajectory": t, "step": s, "series": "next_token_nll", "value": v}
                     for s, v in zip(c.step, c.next_token_nll)]
        if len(res.logs) and t in set(res.logs.trajectory):
            lg = res.logs[res.logs.trajectory == t]
            tr = lg[lg.step > 0]
            sm = tr.train_loss.rolling(5, min_periods=1, center=True).mean()
            a2.plot(_x(tr.step), sm, color="tab:gray", lw=1, label="train loss (running mean of 5 steps)")
            ev = lg.dropna(subset=["val_loss"])
            a2.plot(_x(ev.step), ev.val_loss, "s", color="tab:orange", label="validation loss (training log)")
            tidy += [{"trajectory": t, "step": s, "series": "train_loss_smoothed", "value": v} for s, v in zip(tr.step, sm)]
            tidy += [{"trajectory": t, "step": s, "series": "val_loss", "value": v} for s, v in zip(ev.step, ev.val_loss)]
        _log(a0, "y")
        for ax in (a0, a1, a2):
            _shade(ax, iv)
            if res.warmup.get(t):
                ax.axvline(_x(res.warmup[t]), color="gray", ls=":", lw=1)
            _log(ax)
            if i == len(names) - 1:
                ax.set_xlabel("1 + step")
        a0.set_ylabel(f"{t}\n{n_label(res, t)}\nRankMe (log)", fontsize=8)
        a1.set_ylabel("alpha-ReQ")
        a2.set_ylabel("loss (nats)")
        if i == 0:
            a0.set_title("RankMe (final-normed last-token states)")
            a1.set_title("alpha-ReQ (marker size = fit r2)")
            a2.set_title("loss")
            a2.legend(fontsize=7)
    handles = [Patch(color=c, alpha=0.3, label=p) for p, c in PHASE_COLORS.items()]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 1.0))
    return fig, pd.DataFrame(tidy)


def plot_spectral_overlay(res):
    """RankMe and alpha-ReQ of the final-normed layer against 1 + step, all trajectories in one panel each."""
    curves = spectral_curves(res)
    fig, axes = _grid(1, 2, 5.2, 3.6, wspace=0.25)
    axes = axes[0]
    for t, c in curves.groupby("trajectory", sort=False):
        c = c.sort_values("step")
        axes[0].plot(_x(c.step), c.rankme, "o-", ms=3, label=f"{t} ({n_label(res, t)})")
        axes[1].plot(_x(c.step), c.alpha, "o-", ms=3, label=t)
    axes[0].set(xlabel="1 + step", ylabel="RankMe (log)", title="RankMe, final-normed layer")
    axes[1].set(xlabel="1 + step", ylabel="alpha-ReQ", title="alpha-ReQ, final-normed layer")
    for ax in axes:
        _log(ax)
    _log(axes[0], "y")
    axes[0].legend(fontsize=7)
    out = curves[["trajectory", "step", "rankme", "alpha", "alpha_r2"]].reset_index(drop=True)
    return fig, out.assign(n_seqs=[res.inputs.get(t, {}).get("n_seqs") for t in out.trajectory])


def plot_layer_heatmaps(res, metrics: Sequence[str] = ("rankme", "alpha")):
    """Layer x checkpoint heat maps of each metric, one row per trajectory (columns: checkpoints in
    order, labelled by step; rows: state index, emb = embedding, final = final-normed)."""
    s = res.spectra[res.spectra.metric.isin(metrics)]
    names = list(dict.fromkeys(s.trajectory))
    fig, axes = _grid(len(names), len(metrics), 5.0, 2.1, top=0.4, left=0.7, wspace=0.15, hspace=0.35)
    for i, t in enumerate(names):
        for j, m in enumerate(metrics):
            g = s[(s.trajectory == t) & (s.metric == m)]
            w = g.pivot_table(index="layer", columns="step", values="value").sort_index()
            ax = axes[i, j]
            im = ax.imshow(w.to_numpy(), aspect="auto", origin="lower", cmap="viridis")
            ax.set_xticks(range(w.shape[1]), [str(c) for c in w.columns], fontsize=7, rotation=90)
            ax.set_yticks(range(w.shape[0]), layer_names(w.shape[0]), fontsize=7)
            ax.set_title(f"{t}: {m} ({n_label(res, t)})", fontsize=9)
            if i == len(names) - 1:
                ax.set_xlabel("checkpoint step")
            fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    out = s[["trajectory", "layer", "step", "metric", "value"]].reset_index(drop=True)
    return fig, out.assign(n_seqs=[res.inputs.get(t, {}).get("n_seqs") for t in out.trajectory])


def shown_steps(steps: Sequence[int], k: int) -> list[int]:
    """k checkpoints spread over the trajectory's (log-spaced) checkpoints: the first, the last and
    evenly spaced indices between."""
    steps = list(steps)
    if k >= len(steps):
        return steps
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, k)).astype(int))
    return [steps[i] for i in idx]


def plot_eigenspectra(res, k: int = 4):
    """Eigenspectra (normalised covariance eigenvalues vs rank, log-log) of k checkpoints per trajectory,
    final-normed layer, with the fitted alpha-ReQ power law (dashed, over its fit ranks 12..100)."""
    names = list(dict.fromkeys(res.eigs.trajectory))
    ncol = min(3, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = _grid(nrow, ncol, 4.4, 3.3, top=0.35, left=0.8, wspace=0.25, hspace=0.35)
    tidy = []
    lo, hi = M.ALPHA_FIT_RANKS
    for i, t in enumerate(names):
        ax = axes.flat[i]
        L = final_layer(res, t)
        e = res.eigs[(res.eigs.trajectory == t) & (res.eigs.layer == L)]
        f = res.fits[(res.fits.trajectory == t) & (res.fits.layer == L)].set_index("step")
        cmap = plt.get_cmap("viridis")
        chosen = shown_steps(sorted(e.step.unique()), k)
        for j, st in enumerate(chosen):
            g = e[(e.step == st) & (e.eigenvalue > 0)].sort_values("rank")
            col = cmap(j / max(1, len(chosen) - 1))
            a, b, r2 = f.loc[st, "alpha"], f.loc[st, "intercept"], f.loc[st, "alpha_r2"]
            ax.loglog(g["rank"], g.eigenvalue, color=col, lw=1.3, label=f"step {st}: alpha={a:.2f}, r2={r2:.2f}")
            tidy += [{"trajectory": t, "step": st, "rank": r, "series": "eigenvalue", "value": v,
                      "n_seqs": res.inputs.get(t, {}).get("n_seqs")} for r, v in zip(g["rank"], g.eigenvalue)]
            if np.isfinite(a):
                rr = np.arange(lo, min(hi, int(g["rank"].max())) + 1)
                fit = np.exp(b) * rr ** (-a)
                ax.loglog(rr, fit, "--", color=col, lw=1)
                tidy += [{"trajectory": t, "step": st, "rank": r, "series": "power_law_fit", "value": v}
                         for r, v in zip(rr, fit)]
        _log(ax, "xy")
        ax.set(title=f"{t} ({n_label(res, t)})", xlabel="rank", ylabel="eigenvalue (fraction of variance)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return fig, pd.DataFrame(tidy)


def _bucket_colors(buckets):
    cmap = plt.get_cmap("plasma")
    bs = sorted(buckets)
    return {b: cmap(i / max(1, len(bs) - 1) * 0.85) for i, b in enumerate(bs)}


def plot_convergence(conv: pd.DataFrame, value: str = "mean_cos", min_words: int = 1):
    """Rows: trajectories; columns: layers. Per bucket (colour; n_words in the legend), `value`
    ("mean_cos": cosine to the final checkpoint; "mean_abs_delta": mean |change| of a word's cosine since
    the previous checkpoint) against 1 + step; solid: the word alone, dashed / dotted: after a prefix."""
    conv = conv[conv.n_words >= min_words]
    if value == "mean_abs_delta":
        conv = conv[conv.step > conv.groupby("trajectory").step.transform("min")]
    names = list(dict.fromkeys(conv.trajectory))
    layers = sorted(conv.layer.unique())
    prefixes = list(dict.fromkeys(conv.prefix))
    styles = dict(zip(prefixes, ["-", "--", ":", "-."]))
    colors = _bucket_colors(conv.bucket.unique())
    lnames = layer_names(len(layers))
    fig, axes = _grid(len(names), len(layers), 1.9, 1.8, top=0.75, sharex=True, sharey=True, left=0.9,
                      wspace=0.08, hspace=0.12)
    for i, t in enumerate(names):
        for j, l in enumerate(layers):
            ax = axes[i, j]
            g = conv[(conv.trajectory == t) & (conv.layer == l)]
            for (p, b), h in g.groupby(["prefix", "bucket"], sort=True):
                h = h.sort_values("step")
                ax.plot(_x(h.step), h[value], styles[p], color=colors[b], lw=1.1,
                        label=f"{b} tok (n={int(h.n_words.iloc[0])})" if (i, j) == (0, 0) and p == prefixes[0] else None)
            _log(ax)
            if i == 0:
                ax.set_title(f"layer {lnames[j]}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{t}\n{'cos to final' if value == 'mean_cos' else 'mean |delta cos|'}", fontsize=8)
            if i == len(names) - 1:
                ax.set_xlabel("1 + step", fontsize=8)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles += [Line2D([], [], color="k", ls=styles[p]) for p in prefixes]
    labels += [f"prefix: {p!r}" if p else "word alone" for p in prefixes]
    fig.legend(handles, labels, loc="upper center", ncol=min(8, len(labels)), fontsize=7)
    return fig, conv[["trajectory", "prefix", "layer", "bucket", "step", value, "n_words"]].reset_index(drop=True)


def plot_convergence_summary(summary: pd.DataFrame, min_words: int = 1):
    """Convergence deficit (mean over the checkpoints before the last of 1 - cos to final) against
    layer, one panel per trajectory, one line per bucket; solid: word alone, dashed: after a prefix."""
    s = summary[summary.n_words >= min_words]
    names = list(dict.fromkeys(s.trajectory))
    prefixes = list(dict.fromkeys(s.prefix))
    styles = dict(zip(prefixes, ["-", "--", ":", "-."]))
    colors = _bucket_colors(s.bucket.unique())
    ncol = min(3, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = _grid(nrow, ncol, 4.2, 3.0, top=0.35, sharey=True, left=0.8, wspace=0.1, hspace=0.35)
    for i, t in enumerate(names):
        ax = axes.flat[i]
        g = s[s.trajectory == t]
        for (p, b), h in g.groupby(["prefix", "bucket"], sort=True):
            h = h.sort_values("layer")
            ax.plot(h.layer, h.deficit, styles[p], marker="o", ms=3, color=colors[b],
                    label=(f"{b} tok" + ("" if not p else ", prefix")))
        n = int(g.layer.max()) + 1
        ax.set_xticks(range(n), layer_names(n), fontsize=7)
        ax.set(title=t, xlabel="layer", ylabel="convergence deficit (mean 1 - cos to final)")
        if i == 0:
            ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return fig, s.reset_index(drop=True)


def plot_perturbation_final(pert: pd.DataFrame, short: Sequence[int] = ()):
    """At each trajectory's final checkpoint, against layer, one line per bucket (n_words in the legend;
    dotted: a bucket the corpus cannot fill to min_context_words): P1, P2 and P1 - P2 of the raw states,
    and P1 - P2 of the centred states (minus the windows' mean state)."""
    last = pert[pert.step == pert.groupby("trajectory").step.transform("max")]
    names = list(dict.fromkeys(last.trajectory))
    colors = _bucket_colors(last.bucket.unique())
    panels = [("raw", "P1", "P1: same word, other contexts"), ("raw", "P2", "P2: last word swapped (same last token)"),
              ("raw", "P1_minus_P2", "P1 - P2"), ("centred", "P1_minus_P2", "P1 - P2, centred states")]
    fig, axes = _grid(len(names), len(panels), 3.4, 2.1, top=0.35, sharex=True, left=1.0, wspace=0.3, hspace=0.15)
    for i, t in enumerate(names):
        for j, (kind, col, title) in enumerate(panels):
            ax = axes[i, j]
            g = last[(last.trajectory == t) & (last.states == kind)]
            for b, h in g.groupby("bucket"):
                h = h.sort_values("layer")
                ax.plot(h.layer, h[col], ":" if b in short else "-", marker="o", ms=3, color=colors[b],
                        label=f"{b} tok (n={int(h.n_words.iloc[0])})")
            n = int(last.layer.max()) + 1
            ax.set_xticks(range(n), layer_names(n), fontsize=7)
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(axis="y", useOffset=False)
            if col == "P1_minus_P2":
                ax.axhline(0, color="gray", lw=0.8)
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{t}\nmean cosine", fontsize=8)
                if i == 0:
                    ax.legend(fontsize=6)
    return fig, last[["trajectory", "step", "states", "layer", "bucket", "P1", "P2", "P1_minus_P2", "diff_std",
                      "n_words"]].reset_index(drop=True)


def plot_perturbation_trajectory(pert: pd.DataFrame, short: Sequence[int] = ()):
    """P1 - P2 against 1 + step, rows: trajectories, columns: layers, one colour per bucket; solid: raw
    states, dashed: centred states."""
    names = list(dict.fromkeys(pert.trajectory))
    layers = sorted(pert.layer.unique())
    lnames = layer_names(len(layers))
    colors = _bucket_colors(pert.bucket.unique())
    styles = {"raw": "-", "centred": "--"}
    fig, axes = _grid(len(names), len(layers), 1.9, 1.8, top=0.6, sharex=True, sharey=True, left=0.9,
                      wspace=0.08, hspace=0.12)
    for i, t in enumerate(names):
        for j, l in enumerate(layers):
            ax = axes[i, j]
            g = pert[(pert.trajectory == t) & (pert.layer == l)]
            for (kind, b), h in g.groupby(["states", "bucket"]):
                h = h.sort_values("step")
                ax.plot(_x(h.step), h.P1_minus_P2, ":" if b in short else styles[kind], lw=1.1, color=colors[b],
                        label=f"{b} tok (n={int(h.n_words.iloc[0])})" if (i, j) == (0, 0) and kind == "raw" else None)
            ax.axhline(0, color="gray", lw=0.6)
            _log(ax)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(f"layer {lnames[j]}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{t}\nP1 - P2", fontsize=8)
            if i == len(names) - 1:
                ax.set_xlabel("1 + step", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles += [Line2D([], [], color="k", ls=styles[k]) for k in styles]
    labels += ["raw states", "centred states"]
    fig.legend(handles, labels, loc="upper center", ncol=min(8, len(labels)), fontsize=7)
    return fig, pert[["trajectory", "step", "states", "layer", "bucket", "P1", "P2", "P1_minus_P2",
                      "n_words"]].reset_index(drop=True)



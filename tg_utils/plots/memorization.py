"""The memorization figure of notebook 06 (issue 24): the model's log-likelihood of seen / unseen / held-out
probes, their gaps and the model-vs-∞-gram Spearman correlation against step, over each run's phases
shaded as in plots.trajectory. Returns (fig, tidy DataFrame of exactly the numbers drawn)."""
from __future__ import annotations

import pandas as pd
from matplotlib.patches import Patch

from .trajectory import PHASE_COLORS, _grid, _log, _shade, _x, final_layer

KIND_STYLE = {"seen": ("tab:purple", "-"), "not_yet_seen": ("plum", "-."), "train_unseen": ("tab:orange", "--"), "held_out": ("tab:gray", ":"),
              "all": ("black", "-")}
SPEARMAN_KINDS = ("all", "held_out")   # the training spans' ∞-gram log-probability is ~0 throughout
PANELS = ("model log-prob / token", "gap to held-out / train-unseen", "Spearman(model, ∞-gram)")


def _intervals(res, trajectory: str) -> pd.DataFrame:
    iv = getattr(res, "intervals", pd.DataFrame())
    if not len(iv) or trajectory not in set(iv.trajectory):
        return pd.DataFrame(columns=["start_step", "end_step", "label"])
    return iv[(iv.trajectory == trajectory) & (iv.layer == final_layer(res, trajectory))]


def plot_memorization(summary: pd.DataFrame, res=None):
    """One row per toy run: (1) mean model log-probability per continuation token by probe group (seen =
    seen by a batch by that step; not_yet_seen = its batch comes later), (2) the gaps seen - held_out
    (solid) and seen - train_unseen (dashed), (3) Spearman correlation over the probes
    of the model's and the ∞-gram's continuation log-probability (all probes and held_out: the training
    spans' ∞-gram log-probability is ~0: in a small corpus their prefix occurs about once); x = 1 + step
    (log); phases of the final-normed layer shaded (res: notebook 06's Results; None: no shading)."""
    runs = list(dict.fromkeys(summary.trajectory))
    fig, axes = _grid(len(runs), 3, 3.6, 2.3, top=0.6, wspace=0.35, hspace=0.35, left=0.8)
    rows = []
    for i, t in enumerate(runs):
        g = summary[summary.trajectory == t].sort_values("step")
        iv = _intervals(res, t) if res is not None else pd.DataFrame(columns=["label"])
        for ax in axes[i]:
            _shade(ax, iv)
            _log(ax)
        for kind, (c, ls) in KIND_STYLE.items():
            h = g[g.kind == kind]
            if not len(h):
                continue
            if kind != "all":
                axes[i, 0].plot(_x(h.step), h.model_logp_token, color=c, ls=ls, marker="o", ms=3, label=kind)
                rows += [{"trajectory": t, "step": s, "kind": kind, "panel": "model_logp_token", "value": v}
                         for s, v in zip(h.step, h.model_logp_token)]
            if kind not in SPEARMAN_KINDS:
                continue
            axes[i, 2].plot(_x(h.step), h.spearman, color=c, ls=ls, marker="o", ms=3, label=kind)
            rows += [{"trajectory": t, "step": s, "kind": kind, "panel": "spearman", "value": v}
                     for s, v in zip(h.step, h.spearman)]
        seen = g[g.kind == "seen"]
        for col, ls in (("gap_held_out", "-"), ("gap_train_unseen", "--")):
            axes[i, 1].plot(_x(seen.step), seen[col], color="tab:purple", ls=ls, marker="o", ms=3,
                            label=f"seen - {col[4:]}")
            rows += [{"trajectory": t, "step": s, "kind": "seen", "panel": col, "value": v}
                     for s, v in zip(seen.step, seen[col])]
        lim = (_x(g.step.min()) / 1.2, _x(g.step.max()) * 1.2)
        for ax in axes[i]:
            ax.set_xlim(*lim)
        axes[i, 1].axhline(0, color="0.6", lw=0.8)
        axes[i, 2].axhline(0, color="0.6", lw=0.8)
        axes[i, 0].set_ylabel(f"{t}\nlog P / token", fontsize=8)
        n = g[g.kind == "all"].n_probes.max() if (g.kind == "all").any() else 0
        for j, name in enumerate(PANELS):
            axes[i, j].set_title(f"{name}" + (f" (n = {n})" if j == 2 else ""), fontsize=8)
            axes[i, j].tick_params(labelsize=7)
        if i == len(runs) - 1:
            for ax in axes[i]:
                ax.set_xlabel("1 + step", fontsize=8)
    handles = [Patch(color=c, alpha=0.3, label=p) for p, c in PHASE_COLORS.items()]
    axes[0, 0].legend(fontsize=6, loc="lower right")
    axes[0, 1].legend(fontsize=6, loc="upper left")
    axes[0, 2].legend(fontsize=6, loc="lower right")
    fig.legend(handles=handles, fontsize=7, loc="upper right", ncol=3, frameon=False)
    return fig, pd.DataFrame(rows)

"""What the figures share: axis labels of the metrics, legend labels of the models (through
tg_utils.models.spec), colours, and the mean-with-band panel of a profile summary."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
import numpy as np
import pandas as pd

from ..models.spec import table_label

METRIC_LABELS = {"cos_full": "mean cosine similarity (diagonal incl.)",
                 "cos_offdiag": "mean cosine similarity (off-diagonal)",
                 "id": "intrinsic dimension (GRIDE, n1=1)", "chi_1": "neighbourhood overlap chi_1 (l, l+1)",
                 "loss": "next-token loss (nats)",
                 "nn_sim": "nn_sim: cos(x - nn1, x - nn2), mean over tokens",
                 "nn_angle": "angle(x - nn1, x - nn2), degrees, mean over tokens",
                 "entropy": "prompt entropy (matrix, / min(ln N, ln d))",
                 "curvature": "token-trajectory curvature (rad)",
                 "anisotropy": "anisotropy (top variance share)",
                 "cka_next": "linear CKA (l, l+1)",
                 "depth_curvature": "curvature through depth (rad)",
                 "linearity": "linearity l -> l+1 (pooled tokens)",
                 "linearity_residual": "linearity of the update l -> l+1 (pooled)"}
# Distinct colours for many lines (tokens, models): Kelly's colours of maximum contrast, without white, black
# and grey (the background of the UMAP figures), the strongest first; tab20's pairs of near-equal hues are not
# told apart once more than ten lines share a panel.
TOKEN_COLORS = ("#0067a5", "#e25822", "#008856", "#be0032", "#875692", "#f3c300", "#882d17", "#a1caf1",
                "#8db600", "#e68fac", "#604e97", "#f6a600", "#2b3d26", "#b3446c", "#c2b280", "#654522",
                "#f99379", "#dcd300")


def model_keys(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The (model, revision) pairs of a table, in the order they first appear."""
    return list(dict.fromkeys(zip(df.model, df.revision)))


def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Add a 'label' column: toy runs as '<run> (random|trained)', other models as 'model[@revision]'."""
    return df.assign(label=[table_label(m, r) for m, r in zip(df.model, df.revision)])


RANDOM = " (random)"      # the label suffix of a toy run at its random initialisation (checkpoint step 0)


def by_training(labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """The distinct labels split into (trained models, toy runs at random initialisation), in order."""
    labels = list(dict.fromkeys(labels))
    return [x for x in labels if not x.endswith(RANDOM)], [x for x in labels if x.endswith(RANDOM)]


def s_colors(shuffle_indices: Sequence[int]) -> dict[int, tuple]:
    """One colour per shuffle index, dark (structured) to bright (fully shuffled), as the paper."""
    s = sorted(set(int(x) for x in shuffle_indices))
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(len(s) - 1, 1) * 0.9) for i, v in enumerate(s)}


def profile_panel(ax, summary: pd.DataFrame, metric: str, x: str = "layer", by: str = "label",
                  order: Sequence[str] | None = None, clip_first: bool = True, **line_kw):
    """Mean over prompts with its bootstrap 95 % band, one line per `by` value, on `ax`; `clip_first`: a
    layer 0 far off the other layers' scale is clipped and marked (clip_layer0)."""
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
    if clip_first:
        clip_layer0(ax, sub, x, by)


def layer0_far(sub: pd.DataFrame, far: float = 1.0) -> tuple[float, float] | None:
    """(low, high) of layers >= 1 (means and bands) of a profile table when some layer-0 mean lies more than
    `far` x that span outside it, else None."""
    rest, first = sub[sub["layer"] >= 1], sub[sub["layer"] == 0]
    if rest.empty or first.empty:
        return None
    vals = pd.concat([rest["mean"], rest["low"], rest["high"]]).dropna()
    lo, hi = float(vals.min()), float(vals.max())
    span = max(hi - lo, 1e-12)
    return (lo, hi) if ((first["mean"] > hi + far * span) | (first["mean"] < lo - far * span)).any() else None


def clip_layer0(ax, sub: pd.DataFrame, x: str = "layer", by: str = "label", far: float = 1.0) -> bool:
    """When a line's layer-0 mean lies more than `far` x the span of layers >= 1 (means and bands) outside
    that span, fit the y axis to layers >= 1 and mark every layer-0 point outside it at the edge (a triangle in
    its line's colour, its value listed in a band left free above / below the data): layer 0 (the embedding
    output) no longer squashes the other layers. Returns whether it clipped."""
    span_of_rest = layer0_far(sub, far)
    if span_of_rest is None:
        return False
    lo, hi = span_of_rest
    span = max(hi - lo, 1e-12)
    first = sub[sub["layer"] == 0]
    n_up, n_down = int((first["mean"] > hi).sum()), int((first["mean"] < lo).sum())
    top, bottom = hi + (0.06 + 0.075 * n_up) * span, lo - (0.06 + 0.075 * n_down) * span
    ax.set_ylim(bottom, top)
    colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
    k = {True: 0, False: 0}
    for _, r in first[(first["mean"] > top) | (first["mean"] < bottom)].iterrows():
        above = bool(r["mean"] > top)
        y, col = (top if above else bottom), colors.get(str(r[by]), "k")
        ax.plot([r[x]], [y], marker="^" if above else "v", ms=7, color=col, clip_on=False, zorder=4)
        dy = -8 - 8 * k[above] if above else 3 + 8 * k[above]          # stacked: one label under the other
        ax.annotate(f"layer 0: {r['mean']:.3g}", (r[x], y), xytext=(8, dy),
                    textcoords="offset points", fontsize=6.5, color=col, va="center",
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})
        k[above] += 1
    return True


def panel_grid(n: int, columns: int = 3, width: float = 3.9, height: float = 3.3):
    """A figure of `n` panels, at most `columns` a row (a row of five shrinks until JupyterLab shows its labels
    at ~5 px), unused panels switched off; constrained layout. Returns (fig, 2-D axes array)."""
    n_cols = max(1, min(n, columns))
    n_rows = max(1, -(-n // n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


def log_ticks(ax, xticks: Sequence[float] | None = None):
    """Plain numbers on the log axes of `ax` (1, 2, 5, 10, 20, ... instead of powers of ten); `xticks`: the
    x values to tick (e.g. the scales n1 drawn)."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
    if xticks is not None and len(xticks):
        ax.set_xticks(sorted(set(float(v) for v in xticks)))


def outside_legend(fig, axes, **kw):
    """One legend for the whole figure right of the panels (constrained layout), from the lines of every
    panel (each label once): it never covers data."""
    seen = {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=kw.pop("fontsize", 7), **kw)

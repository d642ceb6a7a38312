"""What the figures share: axis labels of the metrics, legend labels of the models (through
tg_utils.models.spec), colours, and the mean-with-band panel of a profile summary."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
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

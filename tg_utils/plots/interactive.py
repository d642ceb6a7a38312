"""Interactive figures (plotly) built from the tidy tables the static figures save: layer profiles with their
bands (notebooks 03-05) and the 3-D UMAP phrase trajectories (07, one figure per model). Every data trace
names the table columns it carries (trace.meta), so a page's numbers can be read back (page_table)."""
from __future__ import annotations

import base64
import json
import re
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from ..models.spec import table_label
from ..weights.vocab import fmt_token
from .style import METRIC_LABELS, TOKEN_COLORS, layer0_far

TEMPLATE = "plotly_white"
STAGE_NORMED = "final-normed"          # nb07_trajectory's stage of the final-normed states


def _traced(df: pd.DataFrame, axes: dict[str, str], custom: Sequence[str], const: Sequence[str]) -> dict:
    """The trace arguments carrying the rows of `df`: axes {'x': column, ...}, `custom` columns as
    customdata, `const` columns (one value in `df`) in meta; meta also records the column dtypes."""
    cols = [*axes.values(), *custom]
    meta = {"axes": dict(axes), "custom": list(custom),
            "const": {c: df[c].iloc[0].item() if hasattr(df[c].iloc[0], "item") else df[c].iloc[0] for c in const},
            "dtypes": {c: df[c].dtype.kind for c in [*cols, *const]}}
    out = {k: df[c].to_numpy() for k, c in axes.items()}
    if custom:
        out["customdata"] = df[list(custom)].to_numpy(dtype=float if all(
            df[c].dtype.kind in "iuf" for c in custom) else object)
    return {**out, "meta": meta}


def _rgba(color: str, alpha: float) -> str:
    h = color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def profile_page(tidy: pd.DataFrame, title: str = "", columns: int = 2) -> go.Figure:
    """Layer profiles of a summary table (geometry.profile_summary with labels: one row per label, metric,
    layer; mean, low, high): one panel per metric, one line per label against relative depth (layer when the
    table has no depth), its bootstrap band toggled with it; hover: model, layer, value and interval."""
    x = "relative_depth" if "relative_depth" in tidy else "layer"
    metrics = list(dict.fromkeys(tidy["metric"]))
    labels = list(dict.fromkeys(tidy["label"]))
    n_cols = min(columns, len(metrics))
    n_rows = -(-len(metrics) // n_cols)
    fig = make_subplots(n_rows, n_cols, subplot_titles=[METRIC_LABELS.get(m, m) for m in metrics],
                        horizontal_spacing=0.08, vertical_spacing=0.12 if n_rows > 1 else 0.1)
    custom = [c for c in ("layer", "low", "high", "n_prompts") if c in tidy and c != x]
    const = [c for c in tidy.columns if c not in {x, "mean", *custom}]
    colors = {lab: qualitative.D3[i % 10] for i, lab in enumerate(labels)}      # matplotlib's C0, C1, ...: as the PNG
    shown = set()
    lay = "%{x}" if x == "layer" else "%{customdata[0]} (depth %{x:.3f})"
    for k, metric in enumerate(metrics):
        row, col = k // n_cols + 1, k % n_cols + 1
        for lab in labels:
            g = tidy[(tidy["metric"] == metric) & (tidy["label"] == lab)].sort_values(x)
            if g.empty:
                continue
            if g["low"].notna().any():
                band = g[g["low"].notna()]
                fig.add_trace(go.Scatter(x=np.r_[band[x], band[x][::-1]], y=np.r_[band["high"], band["low"][::-1]],
                                         fill="toself", mode="lines", fillcolor=_rgba(colors[lab], 0.15), line={"width": 0},
                                         hoverinfo="skip", legendgroup=lab, showlegend=False), row, col)
            lo, hi = custom.index("low"), custom.index("high")
            fig.add_trace(go.Scatter(
                **_traced(g, {"x": x, "y": "mean"}, custom, const), mode="lines+markers", name=lab,
                legendgroup=lab, showlegend=lab not in shown, line={"color": colors[lab]}, marker={"size": 5},
                hovertemplate=f"<b>{lab}</b><br>layer {lay}<br>{metric} = %{{y:.4g}}<br>95 % interval "
                              f"[%{{customdata[{lo}]:.4g}}, %{{customdata[{hi}]:.4g}}]<extra></extra>"), row, col)
            shown.add(lab)
        fig.update_xaxes(title_text="relative depth" if x == "relative_depth" else "layer", row=row, col=col)
        far = layer0_far(tidy[tidy["metric"] == metric]) if "layer" in tidy else None
        if far is not None:               # as the PNG: open on layers >= 1; double-click shows layer 0 too
            pad = 0.08 * (far[1] - far[0])
            fig.update_yaxes(range=[far[0] - pad, far[1] + pad], row=row, col=col)
            fig.layout.annotations[k].text += " (layer 0 off scale: double-click to see it)"
    fig.update_layout(template=TEMPLATE, title=title or None, height=380 * n_rows + 80, hovermode="closest",
                      legend={"title": {"text": "model (click: hide / show)"}})
    return fig


def shuffle_page(tidy: pd.DataFrame, title: str = "") -> go.Figure:
    """A shuffle-profile table (plots.shuffle.plot_shuffle_profiles: model, revision, panel, prompt_id,
    shuffle_index, layer, <metric>, low, high): one row of panels per model (single prompts, then the mean
    with its band), one line per shuffle index S; hover: model, layer, S, value and interval."""
    metric = [c for c in tidy.columns if c not in
              {"model", "revision", "panel", "prompt_id", "shuffle_index", "layer", "low", "high"}][0]
    models = list(dict.fromkeys(zip(tidy["model"], tidy["revision"])))
    panels = list(dict.fromkeys(tidy["panel"]))
    panels = [p for p in panels if p != "mean"] + ["mean"] * ("mean" in panels)
    s_vals = sorted(tidy["shuffle_index"].unique())
    titles = [f"{table_label(m, r)}: {p}" for m, r in models for p in panels]
    fig = make_subplots(len(models), len(panels), subplot_titles=titles, horizontal_spacing=0.05,
                        vertical_spacing=min(0.16, 0.45 / max(len(models), 1)))
    for i, (model, rev) in enumerate(models):
        for j, panel in enumerate(panels):
            sub = tidy[(tidy["model"] == model) & (tidy["revision"] == rev) & (tidy["panel"] == panel)]
            for s in s_vals:
                g = sub[sub["shuffle_index"] == s].sort_values("layer")
                if g.empty:
                    continue
                color = _viridis(s_vals.index(s), len(s_vals))
                if g["low"].notna().any():
                    fig.add_trace(go.Scatter(x=np.r_[g["layer"], g["layer"][::-1]],
                                             y=np.r_[g["high"], g["low"][::-1]], fill="toself", mode="lines",
                                             fillcolor=_rgba(color, 0.15), line={"width": 0}, hoverinfo="skip",
                                             legendgroup=f"S={s}", showlegend=False), i + 1, j + 1)
                fig.add_trace(go.Scatter(
                    **_traced(g, {"x": "layer", "y": metric}, ["low", "high"],
                              ["model", "revision", "panel", "prompt_id", "shuffle_index"]),
                    mode="lines+markers", name=f"S={s}", legendgroup=f"S={s}", showlegend=i == 0 and j == 0,
                    line={"color": color}, marker={"size": 4},
                    hovertemplate=f"<b>{model}</b> ({panel})<br>layer %{{x}}, S={s}<br>{metric} = %{{y:.4g}}"
                                  "<br>95 % interval [%{customdata[0]:.4g}, %{customdata[1]:.4g}]<extra></extra>"),
                    i + 1, j + 1)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(template=TEMPLATE, title=title or METRIC_LABELS.get(metric, metric),
                      height=330 * len(models) + 100, legend={"title": {"text": "shuffle index"}})
    return fig


def _viridis(i: int, n: int) -> str:
    """Colour i of n along viridis, dark (structured) to bright (shuffled), as style.s_colors."""
    rgb = sample_colorscale("Viridis", [i / max(n - 1, 1) * 0.9])[0]
    r, g, b = (int(float(v)) for v in rgb[rgb.index("(") + 1:-1].split(","))
    return f"#{r:02x}{g:02x}{b:02x}"


def backgrounds(reports: dict, max_background: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """Model spec -> the fitted embedding rows of its UMAP (at most `max_background`, the same sample as
    attention.plot_trajectories draws with the same seed), from notebook 07's reports."""
    rng, out = np.random.default_rng(seed), {}
    for rep in reports.values():
        if rep.trajectory is None:
            continue
        bg = rep.trajectory.background
        out[rep.spec] = bg[rng.choice(len(bg), max_background, replace=False)] if len(bg) > max_background else bg
    return out


def trajectory_pages(tidy: pd.DataFrame, backgrounds: dict | None = None) -> dict[str, go.Figure]:
    """One 3-D figure per model of notebook 07's trajectory table (stage, layer, position, token, x, y, z,
    model, label): one trace per token (its states in order, markers numbered by layer, toggled from the
    legend), the raw token (+ position) embeddings, and the grey embedding rows of `backgrounds` (model ->
    (n, 3) array) when given. Keys: the model labels."""
    pages = {}
    for lab, t in tidy.groupby("label", sort=False):
        fig = go.Figure()
        bg = (backgrounds or {}).get(t["model"].iloc[0])
        if bg is not None and len(bg):
            fig.add_trace(go.Scatter3d(x=bg[:, 0], y=bg[:, 1], z=bg[:, 2], mode="markers", name="embedding rows",
                                       marker={"size": 1.5, "color": "#b0b0b0", "opacity": 0.35}, hoverinfo="skip"))
        normed = t[t["stage"] == STAGE_NORMED]
        for k, (pos, g) in enumerate(normed.groupby("position", sort=True)):
            g = g.sort_values("layer")
            color = TOKEN_COLORS[k % len(TOKEN_COLORS)]
            tok = fmt_token(g["token"].iloc[0])
            n = len(g)
            fig.add_trace(go.Scatter3d(
                **_traced(g, {"x": "x", "y": "y", "z": "z"}, ["layer"],
                          ["stage", "position", "token", "model", "label"]),
                mode="lines+markers+text", name=f"{pos}: {tok}", text=[str(v) for v in g["layer"]],
                textposition="top center", textfont={"size": 9, "color": color},
                line={"color": color, "width": 4}, marker={"color": color, "size": np.linspace(3, 9, n),
                                                           "symbol": ["circle-open"] + ["circle"] * (n - 1)},
                hovertemplate=f"<b>{tok}</b> (position {pos})<br>layer %{{customdata[0]}}"
                              "<br>UMAP (%{x:.3f}, %{y:.3f}, %{z:.3f})<extra></extra>"))
        for stage, g in t[t["stage"] != STAGE_NORMED].groupby("stage", sort=False):
            fig.add_trace(go.Scatter3d(
                **_traced(g, {"x": "x", "y": "y", "z": "z"}, ["layer", "position", "token"],
                          ["stage", "model", "label"]),
                mode="markers", name=f"{stage} (raw)", text=[fmt_token(v) for v in g["token"]],
                marker={"symbol": "diamond" if stage == "embedding" else "cross", "size": 4, "color": "#333333"},
                hovertemplate=f"<b>%{{text}}</b> (position %{{customdata[1]}})<br>{stage}, raw<extra></extra>"))
        fig.update_layout(template=TEMPLATE, height=760,
                          title=f"{lab}: {normed['layer'].nunique()} states per token (numbers: layer; "
                                "open circle: embedding; click a token in the legend to hide / show it)",
                          scene={"xaxis_title": "UMAP x", "yaxis_title": "UMAP y", "zaxis_title": "UMAP z"},
                          legend={"title": {"text": "position: token"}, "itemsizing": "constant"})
        pages[str(lab)] = fig
    return pages


def _decode(v):
    """A plotly JSON array (a list, or a typed array {'dtype', 'bdata'[, 'shape']}) as numpy."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(s) for s in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v, dtype=object)


def page_figure(html: str) -> tuple[list[dict], dict]:
    """(data, layout) of the figure written in a plotly HTML page (the Plotly.newPlot call)."""
    at = html.find("Plotly.newPlot(")
    if at < 0:
        raise ValueError("not a plotly page: no Plotly.newPlot call")
    dec, space = json.JSONDecoder(), re.compile(r"\s*")
    pos = space.match(html, html.index(",", at) + 1).end()          # past the div id
    data, end = dec.raw_decode(html, pos)
    layout, _ = dec.raw_decode(html, space.match(html, html.index(",", end) + 1).end())
    return data, layout


def page_table(html: str) -> pd.DataFrame:
    """The rows a page's data traces carry (those with meta from _traced), as a table with the dtypes
    they had."""
    data, _ = page_figure(html)
    parts = []
    for tr in data:
        meta = tr.get("meta")
        if not isinstance(meta, dict) or "axes" not in meta:
            continue
        cols = {c: _decode(tr[k]) for k, c in meta["axes"].items()}
        if meta["custom"]:
            cd = _decode(tr["customdata"]).reshape(-1, len(meta["custom"]))
            cols.update({c: cd[:, i] for i, c in enumerate(meta["custom"])})
        n = len(next(iter(cols.values())))
        cols.update({c: [v] * n for c, v in meta["const"].items()})
        df = pd.DataFrame(cols)
        for c, kind in meta["dtypes"].items():
            df[c] = df[c].astype({"i": "int64", "u": "int64", "f": "float64", "b": "bool"}.get(kind, object))
        parts.append(df)
    if not parts:
        raise ValueError("the page holds no table traces")
    return pd.concat(parts, ignore_index=True)

"""Notebook 04 (shuffle experiment), after "The Geometry of Tokens in Internal Representations of Large
Language Models" (token_geometry): each model's prompts (tg_utils.data.prompts.build_shuffle_prompts:
N = n_tokens where the context allows it, else the longest power of 4 that fits) at every shuffle
index S (4**S blocks permuted, a BOS kept first and left out of the clouds), every (model, S) through
geometry.geometry_table (cached), and the derived tables and findings.

The original's procedures (token_geometry, src/) are the defaults: the ID peak over the blocks' outputs
(layers >= 1: its src/summarize.py:11 never computes ID on the embedding output), chi_k over the pairs
(1, 2) .. (L-1, L) (src/summarize.py:103), the nearest-neighbour difference cosine nn_sim (src/utils.py:37-49,
per token; its notebook plots the angle from layer 1 on). The peak over all layers (layer 0 included) is
our addition, kept beside it and labelled so.

Derived quantities, each also as a long table (model, revision, prompt_id, shuffle_index, layer,
metric, value) with these conventions: prompt_id = -1 for a number over all prompts, shuffle_index =
-1 for a number pooled over shuffle indices, layer = -1 for a number of the whole prompt (a peak, a
loss, a summary).
  - peaks(): each prompt's ID peak (value, layer, relative depth) at each S;
  - peak_comparison(): the peak under full shuffling against the structured peak, prompt by prompt;
  - id_loss_correlation(): Pearson r and p between ID and loss across prompts at every layer (at each
    S, or pooled over (prompt, S) pairs).
Notebook 05 reuses peaks, id_loss_correlation, band_mean and the long forms; nb04_findings builds the findings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..data.prompts import ShufflePrompts, build_shuffle_prompts
from ..geometry import geometry_table, id_auto_scale, profile_summary
from ..models import ModelSpec
from ..metrics.stats import pearson
from ..tables import LONG_COLUMNS
from .nb02_extract_states import free_memory, load, prompt_corpus

NB = "04_shuffle_experiment"
PROFILE_METRICS = ("id", "chi_1", "cos_full", "nn_angle")
# token_geometry src/summarize.py:11 computes ID for reps[1:] (the blocks' outputs, no embedding output) and
# src/summarize.py:103 pairs (reps[1:-1], reps[2:]) for the overlap: both start at layer 1
PAPER_MIN_LAYER = 1
MIN_LAYERS = (PAPER_MIN_LAYER, 0)   # ID peaks: the original's (layers >= 1), then ours over all layers
# the original's first layer per metric in the profile figures (its shuffle_experiment.ipynb plots ID, chi_k
# and the nn_sim angle from layer 1 on, the cosine from layer 0)
PAPER_FIRST_LAYER = {"id": 1, "chi_1": 1, "nn_sim": 1, "nn_angle": 1, "cos_full": 0}


def paper_view(summary: pd.DataFrame) -> pd.DataFrame:
    """A profile summary (or long table) cut to the layers the original reports per metric
    (PAPER_FIRST_LAYER): layer 0 left out of ID, chi_1 and nn_sim; other metrics untouched."""
    first = summary.metric.map(PAPER_FIRST_LAYER).fillna(0)
    return summary[summary.layer >= first].reset_index(drop=True)


def chi_range(summary: pd.DataFrame, metric: str = "chi_1", first_pair: int = PAPER_MIN_LAYER) -> tuple[float, float]:
    """(min, max) of a mean chi profile over the pairs (l, l+1) with l >= first_pair: the original's
    pairs (1, 2) .. (L-1, L) by default (src/summarize.py:103); first_pair = 0 adds (0, 1)."""
    sub = summary[(summary.metric == metric) & (summary.layer >= first_pair)]["mean"]
    return float(sub.min()), float(sub.max())


def shuffle_experiment(spec: str, P, corpus, progress: bool = True) -> tuple[pd.DataFrame, ShufflePrompts]:
    """The long geometry table of one model at every usable shuffle index (cached per S by
    geometry_table). P: ShuffleParams. Returns (table, ShufflePrompts)."""
    lm = load(spec, P)
    n_prompts = P.n_prompts_by_model.get(spec, P.n_prompts)
    sp = build_shuffle_prompts(lm, corpus, P.prompt_split, P.n_tokens, n_prompts, spec in P.bos_models,
                               P.shuffle_indices, P.seed)
    frames = [geometry_table(spec, sp.at(s), P.out_dir, prompt_ids=sp.prompt_ids, shuffle_index=s,
                             range_max=P.range_max, k_max=P.k_max, batch_size=P.batch_size,
                             skip_first=sp.keep_first, progress=progress, lm=lm, keep_states=P.cache_states)
              for s in sp.shuffle_indices]
    model, rev = ModelSpec.parse(spec).table_key(P.out_dir)
    return pd.concat(frames, ignore_index=True), dataclasses.replace(sp, model=model, revision=rev)


@dataclass(frozen=True)
class ShuffleRun:
    long: pd.DataFrame              # every model at every S (shuffle_long)
    infos: pd.DataFrame             # one row per model: its prompt set (prompt_sets)
    summary: pd.DataFrame           # mean and bootstrap interval per (model, S, metric, layer)


def run(P, progress: bool = True) -> ShuffleRun:
    """Notebook 04: every model of P.models at every shuffle index, and the profile summary."""
    torch.manual_seed(P.seed)
    corpus = prompt_corpus(P, P.models, progress)
    tables, infos = [], []
    for spec in P.models:
        df, sp = shuffle_experiment(spec, P, corpus, progress)      # its model is released on return
        free_memory()
        tables.append(df)
        infos.append(sp.info())
    long = pd.concat(tables, ignore_index=True)
    summary = profile_summary(long, PROFILE_METRICS, n_boot=P.n_boot, seed=P.seed)
    return ShuffleRun(long, pd.DataFrame(infos), summary)


def auto_scale(long: pd.DataFrame) -> pd.DataFrame:
    """The automatic GRIDE scale (geometry.id_auto_scale: the first flat window of the mean ID-vs-scale curve
    over prompts) per model, shuffle index and layer, with the scale it chose: the ID tables' n1 = 1 beside a
    scale chosen by rule rather than by eye."""
    return id_auto_scale(long)


def id_peaks_long(long: pd.DataFrame) -> pd.DataFrame:
    """Every prompt's ID peak at every S, from layer 1 on (the paper's) and over all layers, in the long form."""
    return pd.concat([peaks_long(peaks(long, min_layer=m)) for m in MIN_LAYERS])


def peak_comparisons(long: pd.DataFrame) -> list[pd.DataFrame]:
    """peak_comparison() from layer 1 on (the paper's procedure) and over all layers (ours), in that order."""
    return [peak_comparison(long, min_layer=m) for m in MIN_LAYERS]


def peak_comparisons_long(cmps: list[pd.DataFrame]) -> pd.DataFrame:
    """peak_comparisons() in the long form, one after the other."""
    return pd.concat([comparison_long(c) for c in cmps])


def peak_fractions_of(cmps: list[pd.DataFrame]) -> pd.DataFrame:
    """peak_fractions() of each of peak_comparisons(), one after the other."""
    return pd.concat([peak_fractions(c) for c in cmps], ignore_index=True)


def correlations(long: pd.DataFrame) -> pd.DataFrame:
    """The ID-loss correlation at S = 0 (structured prompts) and pooled over every (prompt, S)."""
    corr0 = id_loss_correlation(long[long.shuffle_index == 0])
    corrp = id_loss_correlation(long, pooled=True)
    return pd.concat([corr0, corrp], ignore_index=True)


# ---------------------------------------------------------------- derived tables

_KEYS = ["model", "revision", "prompt_id", "shuffle_index"]


def n_layers_of(long: pd.DataFrame) -> pd.Series:
    """L per (model, revision): the last layer of the profile (layers 0..L)."""
    return long[long.metric == "id"].groupby(["model", "revision"]).layer.max().rename("n_layers")


def peaks(long: pd.DataFrame, metric: str = "id", min_layer: int = PAPER_MIN_LAYER) -> pd.DataFrame:
    """Each profile's peak over the layers >= min_layer: model, revision, prompt_id, shuffle_index, peak,
    peak_layer, n_layers, peak_depth (peak_layer / n_layers), min_layer. The first layer wins a tie;
    NaN layers are skipped. min_layer = 1 (default, the original's: src/summarize.py:11) leaves out the
    embedding output (layer 0), whose cloud is the same at every S (the same tokens, permuted) and so cannot
    tell structured from shuffled; min_layer = 0 is our all-layers view."""
    sub = long[(long.metric == metric) & long.value.notna() & (long.layer >= min_layer)].reset_index(drop=True)
    if sub.empty:
        raise ValueError(f"no finite {metric!r} rows at layers >= {min_layer}")
    at = sub.loc[sub.groupby(_KEYS).value.idxmax()]
    out = at[_KEYS + ["value", "layer"]].rename(columns={"value": "peak", "layer": "peak_layer"})
    out = out.join(n_layers_of(long), on=["model", "revision"])
    return out.assign(peak_depth=out.peak_layer / out.n_layers, min_layer=min_layer).reset_index(drop=True)


def peak_comparison(long: pd.DataFrame, reference: int = 0, shuffled: int | None = None,
                    metric: str = "id", min_layer: int = PAPER_MIN_LAYER) -> pd.DataFrame:
    """Prompt by prompt, the peak (over layers >= min_layer) at S = `shuffled` (default: each model's
    largest S, full shuffling when N = 4**S) against the peak at S = `reference`: model, revision,
    prompt_id, s_ref, s_cmp, peak_ref, peak_cmp, layer_ref, layer_cmp, depth_ref, depth_cmp, min_layer,
    higher (peak_cmp > peak_ref), shift (layer_cmp - layer_ref; negative = the peak moves earlier)."""
    pk = peaks(long, metric, min_layer)
    rows = []
    for (model, rev), g in pk.groupby(["model", "revision"], sort=False):
        s_cmp = int(g.shuffle_index.max()) if shuffled is None else shuffled
        a = g[g.shuffle_index == reference].set_index("prompt_id")
        b = g[g.shuffle_index == s_cmp].set_index("prompt_id")
        common = a.index.intersection(b.index)
        if a.empty or b.empty or s_cmp == reference:
            continue
        a, b = a.loc[common], b.loc[common]
        rows.append(pd.DataFrame({
            "model": model, "revision": rev, "prompt_id": common, "s_ref": reference, "s_cmp": s_cmp,
            "peak_ref": a.peak.to_numpy(), "peak_cmp": b.peak.to_numpy(),
            "layer_ref": a.peak_layer.to_numpy(), "layer_cmp": b.peak_layer.to_numpy(),
            "depth_ref": a.peak_depth.to_numpy(), "depth_cmp": b.peak_depth.to_numpy(), "min_layer": min_layer}))
    if not rows:
        raise ValueError(f"no model has prompts at both S={reference} and S={shuffled}")
    out = pd.concat(rows, ignore_index=True)
    return out.assign(higher=out.peak_cmp > out.peak_ref, shift=out.layer_cmp - out.layer_ref)


def peak_fractions(cmp: pd.DataFrame) -> pd.DataFrame:
    """Per model: prompts, the fraction whose shuffled peak is higher, mean peaks and their ratio, mean
    peak layers, and the fractions of prompts whose peak moves earlier / stays / moves later."""
    g = cmp.groupby(["model", "revision", "s_ref", "s_cmp", "min_layer"], sort=False)
    out = g.agg(n_prompts=("prompt_id", "size"), frac_higher=("higher", "mean"),
                peak_ref=("peak_ref", "mean"), peak_cmp=("peak_cmp", "mean"),
                layer_ref=("layer_ref", "mean"), layer_cmp=("layer_cmp", "mean"),
                mean_shift=("shift", "mean"),
                frac_earlier=("shift", lambda s: float((s < 0).mean())),
                frac_same=("shift", lambda s: float((s == 0).mean())),
                frac_later=("shift", lambda s: float((s > 0).mean()))).reset_index()
    return out.assign(ratio=out.peak_cmp / out.peak_ref)


def id_loss_correlation(long: pd.DataFrame, metric: str = "id", pooled: bool = False) -> pd.DataFrame:
    """Pearson r (and its two-sided p) between a prompt's `metric` at each layer and its mean next-token
    loss, across prompts: per (model, revision, shuffle_index), or pooled over every (prompt, S) pair
    (shuffle_index = -1). Models without a loss (encoders) and groups of fewer than 3 prompts are left
    out. Columns: model, revision, shuffle_index, layer, r, p, n."""
    loss = long[(long.metric == "loss")].set_index(_KEYS).value
    x = long[long.metric == metric].pivot_table(index=_KEYS, columns="layer", values="value")
    out = []
    for (model, rev), g in x.groupby(level=["model", "revision"], sort=False):
        g = g.dropna(axis=1, how="all")            # layers of other (deeper) models
        groups = [(-1, g)] if pooled else list(g.groupby(level="shuffle_index"))
        for s, gs in groups:
            y = loss.reindex(gs.index)
            keep = y.notna().to_numpy() & np.isfinite(gs.to_numpy()).all(axis=1)
            if keep.sum() < 3:
                continue
            res = pearson(gs.to_numpy()[keep], y.to_numpy()[keep])
            out.append(pd.DataFrame({"model": model, "revision": rev, "shuffle_index": int(s),
                                     "layer": gs.columns.astype(int), "r": np.atleast_1d(res.r),
                                     "p": np.atleast_1d(res.p), "n": int(keep.sum())}))
    cols = ["model", "revision", "shuffle_index", "layer", "r", "p", "n"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=cols)


def long_form(df: pd.DataFrame, values: dict[str, str], prompt_id="prompt_id", shuffle_index="shuffle_index",
              layer="layer") -> pd.DataFrame:
    """Wide rows to the long form: `values` maps a column of df to the metric name it becomes;
    prompt_id / shuffle_index / layer name a column of df or give a constant."""
    def col(c):
        return df[c].to_numpy() if isinstance(c, str) else np.full(len(df), c)
    parts = [pd.DataFrame({"model": df.model.to_numpy(), "revision": df.revision.to_numpy(),
                           "prompt_id": col(prompt_id), "shuffle_index": col(shuffle_index),
                           "layer": col(layer), "metric": m, "value": df[c].to_numpy(dtype=float)})
             for c, m in values.items()]
    return pd.concat(parts, ignore_index=True)[LONG_COLUMNS]


def _peak_name(metric: str, min_layer: int) -> str:
    return f"{metric}_peak_all_layers" if min_layer == 0 else f"{metric}_peak_from_l{min_layer}"


def peaks_long(pk: pd.DataFrame, metric: str = "id") -> pd.DataFrame:
    """peaks() in the long form (layer -1): {name}, {name}_layer, {name}_depth with name =
    {metric}_peak_from_l{min_layer} (l1: the paper's) or {metric}_peak_all_layers (ours)."""
    name = _peak_name(metric, int(pk.min_layer.iloc[0]))
    return long_form(pk, {"peak": name, "peak_layer": f"{name}_layer", "peak_depth": f"{name}_depth"}, layer=-1)


def comparison_long(cmp: pd.DataFrame, metric: str = "id") -> pd.DataFrame:
    """peak_comparison() in the long form: per prompt (shuffle_index = the shuffled S, layer -1)
    {name}_higher_than_s0 (1/0) and {name}_shift_from_s0 (layers), name as in peaks_long."""
    name = _peak_name(metric, int(cmp.min_layer.iloc[0]))
    df = cmp.assign(higher=cmp.higher.astype(float), shift=cmp["shift"].astype(float))
    return long_form(df, {"higher": f"{name}_higher_than_s0", "shift": f"{name}_shift_from_s0"},
                 shuffle_index="s_cmp", layer=-1)


def correlation_long(corr: pd.DataFrame, metric: str = "id") -> pd.DataFrame:
    """id_loss_correlation() in the long form (prompt_id -1): pearson_r_{metric}_loss,
    pearson_p_{metric}_loss and n_samples per layer."""
    return long_form(corr, {"r": f"pearson_r_{metric}_loss", "p": f"pearson_p_{metric}_loss", "n": "n_samples"},
                 prompt_id=-1)


def summary_long(summary: pd.DataFrame) -> pd.DataFrame:
    """geometry.profile_summary() in the long form (prompt_id -1): {metric}_mean, _ci_low, _ci_high."""
    parts = [long_form(g, {"mean": f"{m}_mean", "low": f"{m}_ci_low", "high": f"{m}_ci_high"}, prompt_id=-1)
             for m, g in summary.groupby("metric", sort=False)]
    return pd.concat(parts, ignore_index=True)


def loss_by_s(long: pd.DataFrame) -> pd.DataFrame:
    """Mean next-token loss per (model, revision, shuffle_index): mean, min, max over prompts, n."""
    sub = long[long.metric == "loss"]
    return sub.groupby(["model", "revision", "shuffle_index"], sort=False).value.agg(
        ["mean", "min", "max", "size"]).rename(columns={"size": "n"}).reset_index()


def band_mean(long: pd.DataFrame, metric: str, lo: float, hi: float) -> pd.DataFrame:
    """Mean of `metric` over the layers with relative depth in [lo, hi] (then over prompts), per
    (model, revision, shuffle_index). chi_k of the pair (l, l + 1) sits at depth (l + 1/2) / L."""
    sub = long[long.metric == metric].join(n_layers_of(long), on=["model", "revision"])
    # chi_k at layer l compares l and l + 1: place it at l + 1/2
    depth = (sub.layer + (0.5 if metric.startswith("chi_") else 0.0)) / sub.n_layers
    sub = sub[(depth >= lo - 1e-9) & (depth <= hi + 1e-9)]
    per_prompt = sub.groupby(_KEYS, sort=False).value.mean()
    return per_prompt.groupby(level=["model", "revision", "shuffle_index"], sort=False).mean().rename(
        metric).reset_index()

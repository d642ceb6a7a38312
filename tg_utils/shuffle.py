"""The shuffle experiment (notebook 04) and the model comparison (notebook 05), after "The Geometry of
Tokens in Internal Representations of Large Language Models" (token_geometry).

Shuffle experiment. Each model gets prompts of exactly N tokens from one corpus split (N = n_tokens
where the model's context allows it, else the longest power of 4 that fits: the shuffle needs N
divisible by 4**S). For every shuffle index S the N tokens are split into K = 4**S equal blocks and
the blocks permuted (tg_utils.corpus.shuffle_blocks, seeded per prompt and S); a BOS stays first and
is left out of the clouds. Every (model, S) goes through geometry.geometry_table (cached), so the
long table holds, per prompt and layer, the ID (headline `id` and the scale curve `id_s{n1}`),
chi_k between consecutive layers, the mean cosine, and the prompt's mean next-token loss (layer -1).

Derived quantities, each also as a long table (model, revision, prompt_id, shuffle_index, layer,
metric, value) with these conventions: prompt_id = -1 for a number over all prompts, shuffle_index =
-1 for a number pooled over shuffle indices, layer = -1 for a number of the whole prompt (a peak, a
loss, a summary).
  - peaks(): each prompt's ID peak (value, layer, relative depth) at each S;
  - peak_comparison(): the peak under full shuffling against the structured peak, prompt by prompt;
  - id_loss_correlation(): Pearson r and p between ID and loss across prompts at every layer (at each
    S, or pooled over (prompt, S) pairs);
  - comparison_summary(): notebook 05's table of peak ID and its depth, middle-third cosine, chi_1 range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .tables import LONG_COLUMNS

NB04 = "04_shuffle_experiment"
NB05 = "05_model_comparison"
PROFILE_METRICS = ("id", "chi_1", "cos_full")


# ============================================================================ prompts

def split_revision(spec: str) -> tuple[str, str | None]:
    """(spec, revision) for loading: 'org/name@rev' -> ('org/name', 'rev'); toy specs and offline
    names are returned as they are (a toy's '@step' is part of its spec)."""
    if spec.startswith("toy:") or "@" not in spec:
        return spec, None
    base, _, rev = spec.partition("@")
    return base, rev


def load_spec(spec: str, out_dir="outputs", device: str = "cpu", device_map: str | None = None):
    """load_model for a spec that may carry a hub revision ('org/name@rev'); device_map only for
    hub models (toy and wheel models load on `device`)."""
    from .models import OFFLINE_SPECS, load_model
    base, rev = split_revision(spec)
    kw = {"device": device}
    if device_map is not None and not spec.startswith("toy:") and spec not in OFFLINE_SPECS:
        kw = {"device_map": device_map}
    return load_model(base, revision=rev, out_dir=out_dir, **kw)


def prompt_length(context: int, n_tokens: int, n_special: int = 0) -> int:
    """N for a model: n_tokens if n_tokens + n_special positions fit its context (0 = no limit), else
    the largest power of 4 that fits (so that every S up to log4 N divides it)."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    avail = (context - n_special) if context else n_tokens
    if n_tokens <= avail:
        return n_tokens
    if avail < 1:
        raise ValueError(f"a context of {context} positions leaves no room for a prompt")
    n = 1
    while n * 4 <= avail:
        n *= 4
    return n


def usable_shuffle_indices(n_tokens: int, shuffle_indices: Sequence[int]) -> list[int]:
    """The S of `shuffle_indices` whose 4**S divides n_tokens, sorted."""
    return sorted(s for s in set(int(s) for s in shuffle_indices) if s >= 0 and n_tokens % 4 ** s == 0)


def shuffle_seed(seed: int, prompt_id: int, shuffle_index: int) -> int:
    """The seed of one prompt's permutation at one S: independent streams per (seed, prompt, S)."""
    return int(np.random.SeedSequence([int(seed), int(prompt_id), int(shuffle_index)]).generate_state(1)[0])


def shuffled_prompts(prompts: Sequence[Sequence[int]], shuffle_index: int, seed: int, keep_first: int = 0,
                     prompt_ids: Sequence[int] | None = None) -> list[list[int]]:
    """Every prompt with its tokens (after the first `keep_first`, e.g. a BOS) cut into 4**S blocks and
    the blocks permuted; prompt i uses shuffle_seed(seed, prompt_ids[i], S). S = 0 returns copies."""
    from .corpus import shuffle_blocks
    ids = range(len(prompts)) if prompt_ids is None else prompt_ids
    return [shuffle_blocks(p, shuffle_index, shuffle_seed(seed, pid, shuffle_index), keep_first=keep_first)
            for pid, p in zip(ids, prompts)]


@dataclass
class ShufflePrompts:
    """One model's structured prompts and the shuffle indices it is run at."""
    spec: str
    n_tokens: int                     # N: tokens per prompt (BOS not counted)
    bos: bool                         # a BOS in front of every prompt (kept first, left out of the clouds)
    ids: list[list[int]]              # the structured prompts (S = 0), BOS included when bos
    sources: list[str]
    per_article: int
    shuffle_indices: list[int]
    seed: int
    model: str = ""                   # the (model, revision) keys of its rows in the long tables
    revision: str = ""
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def keep_first(self) -> int:
        return 1 if self.bos else 0

    @property
    def prompt_ids(self) -> list[int]:
        return list(range(len(self.ids)))

    def __len__(self) -> int:
        return len(self.ids)

    def at(self, shuffle_index: int) -> list[list[int]]:
        """The prompts at shuffle index S (seeded, so the same on every call)."""
        if shuffle_index not in self._cache:
            self._cache[shuffle_index] = shuffled_prompts(self.ids, shuffle_index, self.seed, self.keep_first,
                                                          self.prompt_ids)
        return self._cache[shuffle_index]

    def info(self) -> dict:
        return {"model": self.model, "revision": self.revision, "spec": self.spec, "n_tokens": self.n_tokens, "positions": self.n_tokens + self.keep_first,
                "bos": self.bos, "n_prompts": len(self), "per_article": self.per_article,
                "shuffle_indices": " ".join(map(str, self.shuffle_indices)),
                "articles": len({s.split("#")[0] for s in self.sources}), "sources": "; ".join(self.sources)}


def build_shuffle_prompts(lm, corpus, split: str, n_tokens: int, n_prompts: int, bos: bool,
                          shuffle_indices: Sequence[int], seed: int, max_per_article: int = 16) -> ShufflePrompts:
    """n_prompts prompts of N = prompt_length(context, n_tokens) tokens: the first N tokens of the
    split's articles, and further consecutive windows of each article (build_prompts' per_article,
    the smallest value that gives n_prompts) when the split has too few long articles."""
    from .corpus import CorpusError
    from .geometry import model_prompts
    n = prompt_length(lm.desc.context, n_tokens, 1 if bos else 0)
    usable = usable_shuffle_indices(n, shuffle_indices)
    if 0 not in usable:
        raise ValueError("shuffle_indices must contain 0")
    err = None
    for per_article in range(1, max_per_article + 1):
        try:
            ps = model_prompts(lm, corpus, split, n, n_prompts, bos=bos, per_article=per_article)
        except CorpusError as e:
            err = e
            continue
        return ShufflePrompts(lm.spec, n, bool(ps.bos), ps.ids, ps.sources, per_article, usable, seed)
    raise ValueError(f"{lm.spec}: not {n_prompts} prompts of {n} tokens in split {split!r} even with "
                     f"{max_per_article} windows per article ({err}); lower n_prompts")


def numeric_values(df: pd.DataFrame) -> pd.DataFrame:
    """The long table with a float `value` column. geometry_table's cached CSV writes NaN as an empty
    field and reads it back with keep_default_na=False, which turns the whole column into strings when
    a table holds any NaN (an encoder's loss, a GRIDE scale a cloud with repeated tokens lacks)."""
    if not pd.api.types.is_float_dtype(df["value"]):
        df = df.assign(value=pd.to_numeric(df["value"].replace("", np.nan), errors="coerce"))
    return df


def shuffle_experiment(spec: str, P, corpus, progress: bool = True):
    """The long geometry table of one model at every usable shuffle index (cached per S by
    geometry_table). P: ShuffleParams. Returns (table, ShufflePrompts)."""
    from .geometry import geometry_table
    lm = load_spec(spec, P.out_dir, P.device, P.device_map)
    n_prompts = P.n_prompts_by_model.get(spec, P.n_prompts)
    sp = build_shuffle_prompts(lm, corpus, P.prompt_split, P.n_tokens, n_prompts, spec in P.bos_models,
                               P.shuffle_indices, P.seed)
    base, rev = split_revision(spec)
    frames = [geometry_table(base, sp.at(s), P.out_dir, prompt_ids=sp.prompt_ids, shuffle_index=s,
                             range_max=P.range_max, k_max=P.k_max, batch_size=P.batch_size, revision=rev,
                             skip_first=sp.keep_first, progress=progress, lm=lm, keep_states=P.cache_states)
              for s in sp.shuffle_indices]
    df = numeric_values(pd.concat(frames, ignore_index=True))
    sp.model, sp.revision = str(df.model.iloc[0]), str(df.revision.iloc[0])
    return df, sp


# ============================================================================ derived tables

_KEYS = ["model", "revision", "prompt_id", "shuffle_index"]


def n_layers_of(long: pd.DataFrame) -> pd.Series:
    """L per (model, revision): the last layer of the profile (layers 0..L)."""
    return long[long.metric == "id"].groupby(["model", "revision"]).layer.max().rename("n_layers")


def peaks(long: pd.DataFrame, metric: str = "id", min_layer: int = 0) -> pd.DataFrame:
    """Each profile's peak over the layers >= min_layer: model, revision, prompt_id, shuffle_index, peak,
    peak_layer, n_layers, peak_depth (peak_layer / n_layers), min_layer. The first layer wins a tie;
    NaN layers are skipped. min_layer = 1 leaves out the embedding output (layer 0), whose cloud is the
    same at every S (the same tokens, permuted) and so cannot tell structured from shuffled."""
    sub = long[(long.metric == metric) & long.value.notna() & (long.layer >= min_layer)].reset_index(drop=True)
    if sub.empty:
        raise ValueError(f"no finite {metric!r} rows at layers >= {min_layer}")
    at = sub.loc[sub.groupby(_KEYS).value.idxmax()]
    out = at[_KEYS + ["value", "layer"]].rename(columns={"value": "peak", "layer": "peak_layer"})
    out = out.join(n_layers_of(long), on=["model", "revision"])
    return out.assign(peak_depth=out.peak_layer / out.n_layers, min_layer=min_layer).reset_index(drop=True)


def peak_comparison(long: pd.DataFrame, reference: int = 0, shuffled: int | None = None,
                    metric: str = "id", min_layer: int = 0) -> pd.DataFrame:
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
    from .metrics.stats import pearson
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


def _long(df: pd.DataFrame, values: dict[str, str], prompt_id="prompt_id", shuffle_index="shuffle_index",
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
    return f"{metric}_peak" if min_layer == 0 else f"{metric}_peak_from_l{min_layer}"


def peaks_long(pk: pd.DataFrame, metric: str = "id") -> pd.DataFrame:
    """peaks() in the long form (layer -1): {name}, {name}_layer, {name}_depth with name = {metric}_peak
    (all layers) or {metric}_peak_from_l{min_layer}."""
    name = _peak_name(metric, int(pk.min_layer.iloc[0]))
    return _long(pk, {"peak": name, "peak_layer": f"{name}_layer", "peak_depth": f"{name}_depth"}, layer=-1)


def comparison_long(cmp: pd.DataFrame, metric: str = "id") -> pd.DataFrame:
    """peak_comparison() in the long form: per prompt (shuffle_index = the shuffled S, layer -1)
    {name}_higher_than_s0 (1/0) and {name}_shift_from_s0 (layers), name as in peaks_long."""
    name = _peak_name(metric, int(cmp.min_layer.iloc[0]))
    df = cmp.assign(higher=cmp.higher.astype(float), shift=cmp["shift"].astype(float))
    return _long(df, {"higher": f"{name}_higher_than_s0", "shift": f"{name}_shift_from_s0"},
                 shuffle_index="s_cmp", layer=-1)


def correlation_long(corr: pd.DataFrame, metric: str = "id") -> pd.DataFrame:
    """id_loss_correlation() in the long form (prompt_id -1): pearson_r_{metric}_loss,
    pearson_p_{metric}_loss and n_samples per layer."""
    return _long(corr, {"r": f"pearson_r_{metric}_loss", "p": f"pearson_p_{metric}_loss", "n": "n_samples"},
                 prompt_id=-1)


def summary_long(summary: pd.DataFrame) -> pd.DataFrame:
    """geometry.profile_summary() in the long form (prompt_id -1): {metric}_mean, _ci_low, _ci_high."""
    parts = [_long(g, {"mean": f"{m}_mean", "low": f"{m}_ci_low", "high": f"{m}_ci_high"}, prompt_id=-1)
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


def comparison_summary(long: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Notebook 05's table, one row per model (S = 0): depth, peak of the mean ID profile and its layer
    and relative depth (over all layers, and over the blocks' outputs, layers >= 1, leaving out the
    embedding output), the per-prompt peaks (mean, and the mean of their depths), the mean cosine over
    the middle third of the depth (layers with l/L in [1/3, 2/3]), the chi_1 range of the mean profile
    and the mean loss (NaN for encoders)."""
    from .plots import _label
    s0 = long[long.shuffle_index == 0]
    pk = peaks(s0).groupby(["model", "revision"], sort=False)[["peak", "peak_depth"]].mean()
    cos_mid = band_mean(s0, "cos_full", 1 / 3, 2 / 3).set_index(["model", "revision"]).cos_full
    loss = s0[s0.metric == "loss"].groupby(["model", "revision"], sort=False).value.mean()
    rows = []
    for (model, rev), g in summary[summary.shuffle_index == 0].groupby(["model", "revision"], sort=False):
        idp = g[g.metric == "id"].sort_values("layer")
        chi = g[g.metric == "chi_1"]
        top = idp.loc[idp["mean"].idxmax()]
        blocks = idp[idp.layer >= 1]
        top1 = blocks.loc[blocks["mean"].idxmax()]
        L = int(idp.layer.max())
        rows.append({"model": model, "revision": rev, "label": _label(model, rev), "n_layers": L,
                     "n_prompts": int(idp.n_prompts.iloc[0]),
                     "peak_id": float(top["mean"]), "peak_layer": int(top.layer), "peak_depth": top.layer / L,
                     "peak_id_from_l1": float(top1["mean"]), "peak_layer_from_l1": int(top1.layer),
                     "peak_depth_from_l1": top1.layer / L,
                     "prompt_peak_id": float(pk.loc[(model, rev), "peak"]),
                     "prompt_peak_depth": float(pk.loc[(model, rev), "peak_depth"]),
                     "cos_mid": float(cos_mid.loc[(model, rev)]),
                     "chi1_min": float(chi["mean"].min()), "chi1_max": float(chi["mean"].max()),
                     "mean_loss": float(loss.get((model, rev), np.nan))})
    order = {k: i for i, k in enumerate(_models(long))}            # the models in the order they came
    rows.sort(key=lambda r: order[(r["model"], r["revision"])])
    return pd.DataFrame(rows)


def comparison_summary_long(table: pd.DataFrame) -> pd.DataFrame:
    """comparison_summary() in the long form (prompt_id -1, shuffle_index 0, layer -1)."""
    cols = ["n_layers", "n_prompts", "peak_id", "peak_layer", "peak_depth", "peak_id_from_l1", "peak_layer_from_l1",
            "peak_depth_from_l1", "prompt_peak_id", "prompt_peak_depth", "cos_mid", "chi1_min", "chi1_max", "mean_loss"]
    return _long(table, {c: c for c in cols}, prompt_id=-1, shuffle_index=0, layer=-1)


# ============================================================================ model comparison (05)

def comparison_specs(P) -> list[str]:
    """The specs notebook 05 compares: toy runs (random initialisation, then trained), then the models."""
    from .geometry import toy_specs
    return toy_specs(P.toy_runs, P.toy_random) + list(P.models)


def comparison_tables(P, corpus, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The long geometry table of every model of notebook 05 on the structured prompts (the cache
    entries of notebooks 02 and 03) and one row per model describing it (kind, layers, prompts, BOS)."""
    from .geometry import model_geometry
    tables, info = [], []
    for spec in comparison_specs(P):
        kw = {"device": P.device}
        if P.device_map is not None and not spec.startswith("toy:"):
            kw = {"device_map": P.device_map}
        df, lm, prompts = model_geometry(spec, P, corpus, progress=progress, **kw)
        tables.append(numeric_values(df))
        info.append({"spec": spec, "kind": "decoder" if lm.desc.is_decoder else "encoder (bidirectional)",
                     "n_layers": lm.desc.n_layers, "d_model": lm.desc.d_model, "n_prompts": len(prompts),
                     "positions": len(prompts.ids[0]), "bos_dropped": bool(prompts.bos),
                     "quantized_from": lm.desc.quantized_from or ""})
    return pd.concat(tables, ignore_index=True), pd.DataFrame(info)


# ============================================================================ figures

def s_colors(shuffle_indices: Sequence[int]) -> dict[int, tuple]:
    """One colour per shuffle index, dark (structured) to bright (fully shuffled), as the paper."""
    import matplotlib.pyplot as plt
    s = sorted(set(int(x) for x in shuffle_indices))
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(len(s) - 1, 1) * 0.9) for i, v in enumerate(s)}


def _models(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(df.model, df.revision)))


def plot_shuffle_profiles(long: pd.DataFrame, summary: pd.DataFrame, metric: str, show_prompts: int = 3):
    """`metric` against layer coloured by S: one row per model; columns: the first `show_prompts`
    prompts one by one, then the mean over prompts with its bootstrap 95 % band."""
    import matplotlib.pyplot as plt
    from .plots import METRIC_LABELS, _label
    models = _models(long)
    colors = s_colors(long.shuffle_index.unique())
    n_cols = show_prompts + 1
    fig, axes = plt.subplots(len(models), n_cols, figsize=(3.3 * n_cols, 2.9 * len(models)), squeeze=False)
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
            ax.set_title(f"{_label(model, rev)}: prompt {pids[j]}", fontsize=8)
        ax = axes[i][-1]
        sm = summary[(summary.model == model) & (summary.revision == rev) & (summary.metric == metric)]
        for s, g in sm.groupby("shuffle_index"):
            g = g.sort_values("layer")
            ax.plot(g.layer, g["mean"], color=colors[s], lw=1.5, label=f"S={s}")
            if g["low"].notna().any():
                ax.fill_between(g.layer, g["low"], g["high"], color=colors[s], alpha=0.2, lw=0)
            tidy.append(g.assign(panel="mean", prompt_id=-1, value=g["mean"]))
        n = int(sm.n_prompts.max()) if len(sm) else 0
        ax.set_title(f"{_label(model, rev)}: mean of {n} prompts", fontsize=8)
        for ax in axes[i]:
            ax.set_xlabel("layer (l, l+1)" if metric.startswith("chi") else "layer", fontsize=8)
        axes[i][0].set_ylabel(METRIC_LABELS.get(metric, metric), fontsize=8)
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    cols = ["model", "revision", "panel", "prompt_id", "shuffle_index", "layer", "mean", "low", "high"]
    return fig, pd.concat(tidy, ignore_index=True)[cols].rename(columns={"mean": metric})


def plot_scale_curves_by_s(long: pd.DataFrame):
    """ID against the GRIDE scale n1 (mean over prompts) at the layer of each model's structured mean
    ID peak, one line per S, one panel per model."""
    import matplotlib.pyplot as plt
    from .geometry import scale_curves
    from .plots import _label
    models = _models(long)
    colors = s_colors(long.shuffle_index.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(3.8 * len(models), 3.4), squeeze=False)
    tidy = []
    for ax, (model, rev) in zip(axes[0], models):
        m = long[(long.model == model) & (long.revision == rev)]
        s0 = m[(m.shuffle_index == 0) & (m.metric == "id")].groupby("layer").value.mean()
        layer = int(s0.idxmax())
        for s, g in m.groupby("shuffle_index"):
            c = scale_curves(g.assign(revision=rev))
            c = c[c.layer == layer].sort_values("n1")
            ax.plot(c.n1, c.id, marker=".", color=colors[s], label=f"S={s}")
            tidy.append(c.assign(shuffle_index=s))
        ax.set(xscale="log", xlabel="scale n1 (n2 = 2 n1)", title=f"{_label(model, rev)}, layer {layer}")
        ax.xaxis.set_major_formatter(plt.ScalarFormatter())
    axes[0][0].set_ylabel("GRIDE intrinsic dimension")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig, pd.concat(tidy, ignore_index=True)


def plot_loss_vs_s(long: pd.DataFrame):
    """Mean next-token loss against S: thin lines one per prompt, thick line the mean over prompts."""
    import matplotlib.pyplot as plt
    from .plots import _label
    models = _models(long)
    fig, axes = plt.subplots(1, len(models), figsize=(3.4 * len(models), 3.2), squeeze=False)
    sub = long[long.metric == "loss"]
    for ax, (model, rev) in zip(axes[0], models):
        g = sub[(sub.model == model) & (sub.revision == rev)]
        for _, p in g.groupby("prompt_id"):
            p = p.sort_values("shuffle_index")
            ax.plot(p.shuffle_index, p.value, color="grey", lw=0.7, alpha=0.6)
        m = g.groupby("shuffle_index").value.mean()
        ax.plot(m.index, m.values, color="C3", marker="o", lw=2, label="mean over prompts")
        ax.set(xlabel="shuffle index S", title=_label(model, rev))
    axes[0][0].set_ylabel("mean next-token loss (nats)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig, sub.reset_index(drop=True)


def plot_peak_comparison(*cmps: pd.DataFrame):
    """One row per comparison (peak_comparison() tables, e.g. over all layers and from layer 1 on).
    Left: each prompt's ID peak under full shuffling against its structured peak (above the diagonal:
    higher when shuffled). Right: the peak's relative depth, structured against shuffled (below the
    diagonal: earlier when shuffled; points jittered by < 0.01 so that equal ones stay visible)."""
    import matplotlib.pyplot as plt
    from .plots import _label
    fig, axes = plt.subplots(len(cmps), 2, figsize=(10, 4.0 * len(cmps)), squeeze=False)
    for row, cmp in zip(axes, cmps):
        ml = int(cmp.min_layer.iloc[0])
        where = "all layers" if ml == 0 else f"layers >= {ml}"
        for i, ((model, rev), g) in enumerate(cmp.groupby(["model", "revision"], sort=False)):
            lab = f"{_label(model, rev)} (S={int(g.s_cmp.iloc[0])}: {g.higher.mean():.0%} higher)"
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


def plot_correlation(corr: pd.DataFrame, title: str = ""):
    """Pearson r between ID and loss across prompts against relative depth, one line per model (and
    per S when several are given); filled markers: p < 0.05, open: p >= 0.05."""
    import matplotlib.pyplot as plt
    from .plots import _label
    fig, ax = plt.subplots(figsize=(7, 4.2))
    depth = corr.groupby(["model", "revision"]).layer.transform("max")
    df = corr.assign(relative_depth=corr.layer / depth)
    for i, ((model, rev, s), g) in enumerate(df.groupby(["model", "revision", "shuffle_index"], sort=False)):
        g = g.sort_values("layer")
        s_txt = "pooled over S" if s == -1 else f"S={s}"
        line, = ax.plot(g.relative_depth, g.r, lw=1, color=f"C{i % 10}",
                        label=f"{_label(model, rev)}, {s_txt} (n={int(g.n.iloc[0])})")
        sig = g.p < 0.05
        ax.scatter(g.relative_depth[sig], g.r[sig], color=line.get_color(), s=18, zorder=3)
        ax.scatter(g.relative_depth[~sig], g.r[~sig], facecolors="none", edgecolors=line.get_color(), s=18,
                   zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(ylim=(-1.05, 1.05), xlabel="relative depth (layer / number of layers)",
           ylabel="Pearson r (ID, loss) across prompts", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, df


# ============================================================================ findings

def _fmt_list(vals, fmt="{:.1f}") -> str:
    return ", ".join(fmt.format(v) for v in vals)


def describe_shuffle(long: pd.DataFrame, infos: pd.DataFrame | None = None) -> str:
    """The measured findings of notebook 04, in numbers, one block per model."""
    from .plots import _label
    pk = peaks(long)
    fracs = {ml: peak_fractions(peak_comparison(long, min_layer=ml)).set_index(["model", "revision"])
             for ml in (0, 1)}
    corr0 = id_loss_correlation(long[long.shuffle_index == 0])
    corrp = id_loss_correlation(long, pooled=True)
    loss = loss_by_s(long)
    chi_late = band_mean(long, "chi_1", 2 / 3, 1.0)
    cos_mid = band_mean(long, "cos_full", 1 / 3, 2 / 3)
    lines = []
    for model, rev in _models(long):
        sel = (pk.model == model) & (pk.revision == rev)
        L = int(pk[sel].n_layers.iloc[0])
        mean_profile = long[(long.model == model) & (long.revision == rev) & (long.metric == "id")].groupby(
            ["shuffle_index", "layer"]).value.mean()
        ss = sorted(mean_profile.index.get_level_values(0).unique())
        l0 = [mean_profile.loc[(s, 0)] for s in ss]
        head = f"{_label(model, rev)} ({L} layers"
        if infos is not None:
            row = infos[(infos.model == model) & (infos.revision.fillna("") == rev)]
            if len(row):
                r = row.iloc[0]
                head += f"; N={r.n_tokens} tokens{' + BOS' if r.bos else ''}, {r.n_prompts} prompts"
        lines.append(head + f"; S = {ss[0]}..{ss[-1]})")
        lines.append(f"  ID at layer 0 (embedding output) per S, equal by construction: {_fmt_list(l0)}")
        for ml in (0, 1):
            where = "all layers" if ml == 0 else f"layers >= {ml}"
            prof = mean_profile[mean_profile.index.get_level_values("layer") >= ml]
            mp_peak = [prof.loc[s].max() for s in ss]
            mp_layer = [int(prof.loc[s].idxmax()) for s in ss]
            lines.append(f"  [{where}] ID peak of the mean profile per S: {_fmt_list(mp_peak)} at layers {mp_layer}")
            f = fracs[ml].loc[(model, rev)]
            lines.append(f"  [{where}] per prompt, S={int(f.s_cmp)} vs S=0: peak higher for {f.frac_higher:.0%} of "
                         f"{int(f.n_prompts)} prompts (mean peak {f.peak_ref:.1f} -> {f.peak_cmp:.1f}, x{f.ratio:.2f}); "
                         f"peak layer {f.layer_ref:.1f} -> {f.layer_cmp:.1f} (earlier for {f.frac_earlier:.0%}, same "
                         f"{f.frac_same:.0%}, later {f.frac_later:.0%})")
        lv = loss[(loss.model == model) & (loss.revision == rev)].sort_values("shuffle_index")
        lines.append(f"  mean loss per S: {_fmt_list(lv['mean'], '{:.2f}')} nats")
        ch = chi_late[(chi_late.model == model) & (chi_late.revision == rev)].sort_values("shuffle_index")
        cm = cos_mid[(cos_mid.model == model) & (cos_mid.revision == rev)].sort_values("shuffle_index")
        chi = long[(long.model == model) & (long.revision == rev) & (long.metric == "chi_1")]
        chi_max = chi.groupby(["shuffle_index", "layer"]).value.mean().groupby(level=0).max()
        lines.append(f"  chi_1 over the last third of the layers per S: {_fmt_list(ch.chi_1, '{:.2f}')}; "
                     f"largest chi_1 of the mean profile per S: {_fmt_list(chi_max, '{:.2f}')}")
        lines.append(f"  mean cosine over the middle third per S: {_fmt_list(cm.cos_full, '{:.2f}')}")
        for name, c in (("S=0, across prompts", corr0), ("pooled over (prompt, S)", corrp)):
            g = c[(c.model == model) & (c.revision == rev)]
            if g.empty:
                lines.append(f"  ID-loss correlation ({name}): not defined (no loss or < 3 samples)")
                continue
            g = g[g.r.notna()]
            lines.append(f"  ID-loss Pearson r ({name}, n={int(g.n.iloc[0])}): positive at {int((g.r > 0).sum())}/"
                         f"{len(g)} layers, positive with p<0.05 at {int(((g.r > 0) & (g.p < 0.05)).sum())}, "
                         f"negative with p<0.05 at {int(((g.r < 0) & (g.p < 0.05)).sum())}; r range "
                         f"{g.r.min():.2f}..{g.r.max():.2f}, median {g.r.median():.2f}")
    return "\n".join(lines)


def describe_comparison(table: pd.DataFrame, corr: pd.DataFrame) -> str:
    """The measured findings of notebook 05, in numbers, one line per model."""
    lines = []
    for _, r in table.iterrows():
        c = corr[(corr.model == r.model) & (corr.revision == r.revision)]
        c = c[c.r.notna()]
        cor = ("no loss (encoder)" if c.empty else
               f"ID-loss r>0 at {int((c.r > 0).sum())}/{len(c)} layers ({int(((c.r > 0) & (c.p < 0.05)).sum())} "
               f"with p<0.05), median r {c.r.median():.2f}")
        loss = "" if math.isnan(r.mean_loss) else f"; loss {r.mean_loss:.2f}"
        lines.append(f"{r.label:26s} ID peak {r.peak_id:5.1f} at layer {r.peak_layer}/{r.n_layers} (depth "
                     f"{r.peak_depth:.2f}; per-prompt peaks {r.prompt_peak_id:.1f} at depth {r.prompt_peak_depth:.2f}); "
                     f"from layer 1 on {r.peak_id_from_l1:.1f} at layer {r.peak_layer_from_l1} (depth "
                     f"{r.peak_depth_from_l1:.2f}); "
                     f"cos mid-third {r.cos_mid:.2f}; chi_1 {r.chi1_min:.2f}..{r.chi1_max:.2f}{loss}; {cor}")
    return "\n".join(lines)

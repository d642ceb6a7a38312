"""Notebook 05 (model comparison): every model on the structured prompts of notebooks 02 and 03 (the
same cache entries), its profile summary, the ID-loss correlation of the trained models, one summary
row per model (peak ID and its depth, middle-third cosine, chi_1 range, nn_sim, loss), from which
nb05_findings builds the findings. The original's procedures (token_geometry src/) are the defaults: ID
peak over the blocks' outputs, chi_1 over the pairs (1, 2) .. (L-1, L); the all-layers peak is our addition, labelled so."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..geometry import cross_layer_similarity, id_auto_scale, profile_states, profile_summary
from ..models import ModelSpec
from ..models.spec import table_label
from ..plots.style import model_keys, with_labels
from .nb02_extract_states import free_memory, model_specs, prompt_corpus
from .nb03_geometry_metrics import ARCH_PAIRS, model_geometry
from .nb04_shuffle_experiment import (PAPER_MIN_LAYER, PROFILE_METRICS, band_mean, chi_range, correlation_long,
                                      id_loss_correlation, long_form, peaks, summary_long)
from .nb04_shuffle_experiment import paper_view  # noqa: F401  (notebook 05's figures: the original's layers)

NB = "05_model_comparison"


def comparison_tables(P, corpus, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The long geometry table of every model of notebook 05 (toy runs, random initialisation then trained,
    then the models) on the structured prompts (the cache entries of notebooks 02 and 03), one row per
    model describing it (kind, layers, prompts, BOS), and the toy runs' states by spec (they share a
    tokenizer: layer_similarity compares them token by token; empty without layer_measures)."""
    tables, info, toy_states = [], [], {}
    for spec in model_specs(P):
        df, lm, prompts = model_geometry(spec, P, corpus, progress)
        tables.append(df)
        info.append({"spec": spec, "kind": "decoder" if lm.desc.is_decoder else "encoder (bidirectional)",
                     "n_layers": lm.desc.n_layers, "d_model": lm.desc.d_model, "n_prompts": len(prompts),
                     "positions": len(prompts.ids[0]), "bos_dropped": bool(prompts.bos),
                     "quantized_from": lm.desc.quantized_from or ""})
        if P.layer_measures and ModelSpec.parse(spec).kind == "toy":
            toy_states[spec] = profile_states(lm, prompts.ids, P.out_dir, P.batch_size, progress=False)
        del lm                               # one model in memory at a time
        free_memory()
    return pd.concat(tables, ignore_index=True), pd.DataFrame(info), toy_states


def similarity_pairs(specs) -> list[tuple[str, str]]:
    """The toy pairs whose layers are compared: each trained run with its random initialisation (what
    training changed, layer by layer), then notebook 03's architecture pairs (trained)."""
    trained = {ModelSpec.parse(s).name: s for s in specs if ModelSpec.parse(s).step is None}
    random_ = {ModelSpec.parse(s).name: s for s in specs if ModelSpec.parse(s).step == 0}
    pairs = [(trained[r], random_[r]) for r in trained if r in random_]
    return pairs + [(trained[a], trained[b]) for a, b in ARCH_PAIRS if a in trained and b in trained]


def layer_similarity(toy_states: dict, P) -> pd.DataFrame:
    """Linear CKA and mutual k-NN of every layer pair of each pair of similarity_pairs, mean over prompts."""
    frames = []
    for a, b in similarity_pairs(list(toy_states)):
        la, lb = (table_label(*ModelSpec.parse(s).table_key(P.out_dir)) for s in (a, b))
        frames.append(cross_layer_similarity(toy_states[a], toy_states[b], la, lb))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@dataclass(frozen=True)
class ComparisonRun:
    long: pd.DataFrame              # every model's long table (geometry_long)
    info: pd.DataFrame              # one row per model (models)
    summary: pd.DataFrame           # mean and bootstrap interval per (model, metric, layer), with labels
    corr: pd.DataFrame              # ID-loss correlation across prompts per model and layer
    table: pd.DataFrame             # one summary row per model (comparison_summary)
    similarity: pd.DataFrame = field(default_factory=pd.DataFrame)   # layer_similarity of the toy pairs
    id_auto: pd.DataFrame = field(default_factory=pd.DataFrame)      # the automatic GRIDE scale per layer

    @property
    def trained_corr(self) -> pd.DataFrame:
        """The correlation of the trained models (checkpoint step 0 left out)."""
        return self.corr[self.corr.revision != "step0"]

    @property
    def profiles_long(self) -> pd.DataFrame:
        return summary_long(self.summary)

    @property
    def correlation_long(self) -> pd.DataFrame:
        return correlation_long(self.corr)

    @property
    def summary_long(self) -> pd.DataFrame:
        return comparison_summary_long(self.table)


def run(P, progress: bool = True) -> ComparisonRun:
    """Notebook 05: every model's table (mostly cache reads), summary, correlation and summary table."""
    torch.manual_seed(P.seed)
    corpus = prompt_corpus(P, model_specs(P), progress)
    long, info, toy_states = comparison_tables(P, corpus, progress)
    summary = with_labels(profile_summary(long, PROFILE_METRICS, n_boot=P.n_boot, seed=P.seed))
    return ComparisonRun(long, info, summary, id_loss_correlation(long), comparison_summary(long, summary),
                         layer_similarity(toy_states, P), with_labels(id_auto_scale(long)))


def comparison_summary(long: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Notebook 05's table, one row per model (S = 0): depth, peak of the mean ID profile and its layer
    and relative depth over the blocks' outputs (layers >= 1, the paper's: token_geometry
    src/summarize.py:11; `*_from_l1`) and over all layers (our addition, the embedding output included;
    `*_all_layers`), the per-prompt peaks from layer 1 on (mean, and the mean of their depths), the mean
    cosine over the middle third of the depth (layers with l/L in [1/3, 2/3]), the chi_1 range of the
    mean profile over the pairs (1, 2) .. (L-1, L) (src/summarize.py:103), the mean nn_sim and its angle
    over layers >= 1 and the mean loss (NaN for encoders)."""
    s0 = long[long.shuffle_index == 0]
    pk = peaks(s0, min_layer=PAPER_MIN_LAYER).groupby(["model", "revision"], sort=False)[["peak", "peak_depth"]].mean()
    cos_mid = band_mean(s0, "cos_full", 1 / 3, 2 / 3).set_index(["model", "revision"]).cos_full
    loss = s0[s0.metric == "loss"].groupby(["model", "revision"], sort=False).value.mean()
    nn = s0[s0.metric.isin(["nn_sim", "nn_angle"]) & (s0.layer >= PAPER_MIN_LAYER)].groupby(
        ["model", "revision", "metric"], sort=False).value.mean()
    rows = []
    for (model, rev), g in summary[summary.shuffle_index == 0].groupby(["model", "revision"], sort=False):
        idp = g[g.metric == "id"].sort_values("layer")
        top = idp.loc[idp["mean"].idxmax()]
        blocks = idp[idp.layer >= PAPER_MIN_LAYER]
        top1 = blocks.loc[blocks["mean"].idxmax()]
        L = int(idp.layer.max())
        chi_lo, chi_hi = chi_range(g)
        rows.append({"model": model, "revision": rev, "label": table_label(model, rev), "n_layers": L,
                     "n_prompts": int(idp.n_prompts.iloc[0]),
                     "peak_id_from_l1": float(top1["mean"]), "peak_layer_from_l1": int(top1.layer),
                     "peak_depth_from_l1": top1.layer / L,
                     "peak_id_all_layers": float(top["mean"]), "peak_layer_all_layers": int(top.layer),
                     "peak_depth_all_layers": top.layer / L,
                     "prompt_peak_id_from_l1": float(pk.loc[(model, rev), "peak"]),
                     "prompt_peak_depth_from_l1": float(pk.loc[(model, rev), "peak_depth"]),
                     "cos_mid": float(cos_mid.loc[(model, rev)]),
                     "chi1_min": chi_lo, "chi1_max": chi_hi,
                     "nn_sim": float(nn.get((model, rev, "nn_sim"), np.nan)),
                     "nn_angle": float(nn.get((model, rev, "nn_angle"), np.nan)),
                     "mean_loss": float(loss.get((model, rev), np.nan))})
    order = {k: i for i, k in enumerate(model_keys(long))}            # the models in the order they came
    rows.sort(key=lambda r: order[(r["model"], r["revision"])])
    return pd.DataFrame(rows)


def comparison_summary_long(table: pd.DataFrame) -> pd.DataFrame:
    """comparison_summary() in the long form (prompt_id -1, shuffle_index 0, layer -1)."""
    cols = ["n_layers", "n_prompts", "peak_id_from_l1", "peak_layer_from_l1", "peak_depth_from_l1", "peak_id_all_layers",
            "peak_layer_all_layers", "peak_depth_all_layers", "prompt_peak_id_from_l1", "prompt_peak_depth_from_l1",
            "cos_mid", "chi1_min", "chi1_max", "nn_sim", "nn_angle", "mean_loss"]
    return long_form(table, {c: c for c in cols}, prompt_id=-1, shuffle_index=0, layer=-1)

"""Notebook 05 (model comparison): every model on the structured prompts of notebooks 02 and 03 (the
same cache entries), its profile summary, the ID-loss correlation of the trained models, one summary
row per model (peak ID and its depth, middle-third cosine, chi_1 range, loss) and the findings text."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..data.corpus import load_corpus
from ..geometry import profile_summary
from ..models.spec import table_label
from ..plots.style import model_keys, with_labels
from .nb02_extract_states import free_memory, model_specs
from .nb03_geometry_metrics import model_geometry
from .nb04_shuffle_experiment import (PROFILE_METRICS, band_mean, correlation_long, id_loss_correlation, long_form,
                                      peaks, summary_long)

NB = "05_model_comparison"


def comparison_tables(P, corpus, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The long geometry table of every model of notebook 05 (toy runs, random initialisation then trained,
    then the models) on the structured prompts (the cache entries of notebooks 02 and 03) and one row per
    model describing it (kind, layers, prompts, BOS)."""
    tables, info = [], []
    for spec in model_specs(P):
        df, lm, prompts = model_geometry(spec, P, corpus, progress)
        tables.append(df)
        info.append({"spec": spec, "kind": "decoder" if lm.desc.is_decoder else "encoder (bidirectional)",
                     "n_layers": lm.desc.n_layers, "d_model": lm.desc.d_model, "n_prompts": len(prompts),
                     "positions": len(prompts.ids[0]), "bos_dropped": bool(prompts.bos),
                     "quantized_from": lm.desc.quantized_from or ""})
        del lm                               # one model in memory at a time
        free_memory()
    return pd.concat(tables, ignore_index=True), pd.DataFrame(info)


@dataclass(frozen=True)
class ComparisonRun:
    long: pd.DataFrame              # every model's long table (geometry_long)
    info: pd.DataFrame              # one row per model (models)
    summary: pd.DataFrame           # mean and bootstrap interval per (model, metric, layer), with labels
    corr: pd.DataFrame              # ID-loss correlation across prompts per model and layer
    table: pd.DataFrame             # one summary row per model (comparison_summary)

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
    corpus = load_corpus(P.corpus, P.corpus_path)
    long, info = comparison_tables(P, corpus, progress)
    summary = with_labels(profile_summary(long, PROFILE_METRICS, n_boot=P.n_boot, seed=P.seed))
    return ComparisonRun(long, info, summary, id_loss_correlation(long), comparison_summary(long, summary))


def comparison_summary(long: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Notebook 05's table, one row per model (S = 0): depth, peak of the mean ID profile and its layer
    and relative depth (over all layers, and over the blocks' outputs, layers >= 1, leaving out the
    embedding output), the per-prompt peaks (mean, and the mean of their depths), the mean cosine over
    the middle third of the depth (layers with l/L in [1/3, 2/3]), the chi_1 range of the mean profile
    and the mean loss (NaN for encoders)."""
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
        rows.append({"model": model, "revision": rev, "label": table_label(model, rev), "n_layers": L,
                     "n_prompts": int(idp.n_prompts.iloc[0]),
                     "peak_id": float(top["mean"]), "peak_layer": int(top.layer), "peak_depth": top.layer / L,
                     "peak_id_from_l1": float(top1["mean"]), "peak_layer_from_l1": int(top1.layer),
                     "peak_depth_from_l1": top1.layer / L,
                     "prompt_peak_id": float(pk.loc[(model, rev), "peak"]),
                     "prompt_peak_depth": float(pk.loc[(model, rev), "peak_depth"]),
                     "cos_mid": float(cos_mid.loc[(model, rev)]),
                     "chi1_min": float(chi["mean"].min()), "chi1_max": float(chi["mean"].max()),
                     "mean_loss": float(loss.get((model, rev), np.nan))})
    order = {k: i for i, k in enumerate(model_keys(long))}            # the models in the order they came
    rows.sort(key=lambda r: order[(r["model"], r["revision"])])
    return pd.DataFrame(rows)


def comparison_summary_long(table: pd.DataFrame) -> pd.DataFrame:
    """comparison_summary() in the long form (prompt_id -1, shuffle_index 0, layer -1)."""
    cols = ["n_layers", "n_prompts", "peak_id", "peak_layer", "peak_depth", "peak_id_from_l1", "peak_layer_from_l1",
            "peak_depth_from_l1", "prompt_peak_id", "prompt_peak_depth", "cos_mid", "chi1_min", "chi1_max", "mean_loss"]
    return long_form(table, {c: c for c in cols}, prompt_id=-1, shuffle_index=0, layer=-1)


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

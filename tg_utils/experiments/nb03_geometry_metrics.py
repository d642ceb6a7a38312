"""Notebook 03 (geometry metrics): the long geometry table of the toy models (random and trained) and
the pretrained models on the structured prompts, its profile summary, the heatmap matrices, the
architecture pairs compared, and the findings (tg_utils.findings)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..findings import Finding
from ..geometry import (MEASURE_METRICS, cosine_matrix, geometry_table, id_auto_scale, profile_states,
                        profile_summary)
from ..models import ModelSpec
from ..models.spec import table_label
from ..plots.style import RANDOM, with_labels
from .nb02_extract_states import free_memory, load, model_specs, prompt_corpus, prompts_for

NB = "03_geometry_metrics"
PROFILE_METRICS = ("cos_full", "cos_offdiag", "id", "chi_1")
LAYER_MEASURES = MEASURE_METRICS + ("linearity", "linearity_residual")
# toy runs compared (trained): PreLN - PostLN in each family, then LLaMA-style - standard at each norm
ARCH_PAIRS = [("llama-preln", "llama-postln"), ("standard-preln", "standard-postln"),
              ("llama-preln", "standard-preln"), ("llama-postln", "standard-postln")]


def model_geometry(spec: str, P, corpus, progress: bool = True):
    """The long geometry table of one model on its prompt set (PromptParams fields of P, plus
    range_max, k_max and layer_measures). Returns (table, lm, prompts)."""
    lm = load(spec, P)
    prompts = prompts_for(spec, lm, P, corpus)
    df = geometry_table(spec, prompts.ids, P.out_dir, range_max=P.range_max, k_max=P.k_max,
                        batch_size=P.batch_size, skip_first=1 if prompts.bos else 0, progress=progress, lm=lm,
                        measures=P.layer_measures)
    return df, lm, prompts


def is_random_init(spec: str) -> bool:
    """A toy run's random initialisation (checkpoint step 0)."""
    ms = ModelSpec.parse(spec)
    return ms.kind == "toy" and ms.step == 0


@dataclass(frozen=True)
class GeometryRun:
    specs: list[str]
    long: pd.DataFrame              # the long table of every model (geometry_long)
    summary: pd.DataFrame           # mean and bootstrap interval per (model, metric, layer), with labels
    heatmaps: dict                  # label -> {layer: cosine matrix} of every trained model (see heatmaps)
    measures: pd.DataFrame          # the layer-wise measures' summary (empty without layer_measures)
    id_auto: pd.DataFrame           # the automatic GRIDE scale per (model, layer), with labels

    @property
    def trained_specs(self) -> list[str]:
        return [s for s in self.specs if not is_random_init(s)]


def run(P, progress: bool = True) -> GeometryRun:
    """Notebook 03: every model's geometry table (cached), its heatmap matrices (trained models) and the
    profile summary. One model is in memory at a time: each is released once its tables are computed."""
    torch.manual_seed(P.seed)
    specs = model_specs(P)
    corpus = prompt_corpus(P, specs, progress)
    tables, maps = [], {}
    for spec in specs:
        df, lm, prompts = model_geometry(spec, P, corpus, progress)
        tables.append(df)
        if not is_random_init(spec):
            key = ModelSpec.parse(spec).table_key(P.out_dir)
            maps[table_label(*key)] = heatmap_matrices(lm, prompts, P, P.heatmap_layers, P.heatmap_prompt,
                                                       P.heatmap_tokens)
        del lm, prompts
        free_memory()
    long = pd.concat(tables, ignore_index=True)
    summary = with_labels(profile_summary(long, PROFILE_METRICS, n_boot=P.n_boot, seed=P.seed))
    measures = (with_labels(profile_summary(long, LAYER_MEASURES, n_boot=P.n_boot, seed=P.seed))
                if P.layer_measures else pd.DataFrame())
    return GeometryRun(specs, long, summary, maps, measures, with_labels(id_auto_scale(long)))


def heatmap_matrices(lm, prompts, P, rel_layers: Sequence[float], prompt: int, n_tokens: int) -> dict[int, np.ndarray]:
    """Cosine matrices of the first n_tokens tokens of one prompt at layers chosen by relative depth."""
    st = profile_states(lm, prompts.ids, P.out_dir, P.batch_size, progress=False)
    X = st.states[prompt][:, 1 if prompts.bos else 0:]
    L = X.shape[0] - 1
    layers = sorted({int(round(r * L)) for r in rel_layers})
    return {l: cosine_matrix(X[l, :n_tokens]) for l in layers}


def trained_keys(res: GeometryRun, P) -> list[tuple[str, str]]:
    """The (model, revision) table keys of the trained models (one scale-curve panel each)."""
    return [ModelSpec.parse(s).table_key(P.out_dir) for s in res.trained_specs]


def heatmaps(res: GeometryRun, P) -> dict[str, dict[int, np.ndarray]]:
    """{label: {layer: cosine matrix}} of every trained model, at P.heatmap_layers of P.heatmap_prompt
    (computed by run while each model was loaded)."""
    return res.heatmaps


def difference_pairs(P) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Label pairs (A, B) whose profile difference A - B is drawn: architectures (ARCH_PAIRS, trained), and
    trained minus random initialisation per toy run (when toy_random)."""
    def lab(spec):
        return ModelSpec.parse(spec).label
    arch = [(lab(f"toy:{a}"), lab(f"toy:{b}")) for a, b in ARCH_PAIRS]
    train = [(lab(f"toy:{r}"), lab(f"toy:{r}@0")) for r in P.toy_runs] if P.toy_random else []
    return arch, train


FIRST_BLOCK = 1          # the ID peak over the blocks' outputs (layers >= 1), as token_geometry src/summarize.py:11
CHI_PAPER = 0.85         # "chi_1 climbs to about 0.9 in late layers": a maximum at or above this counts as agreeing
EARLY_MIDDLE = 0.5       # "a peak in the early-middle layers": an inner peak at relative depth <= this agrees
GEOMETRY_OF_TOKENS = "The Geometry of Tokens (Viswanathan et al.)"


def span(lo: float, hi: float) -> str:
    """A range as text: 'lo to hi', or one value when both are equal at two decimals."""
    return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f} to {hi:.2f}"


def profile_facts(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per model (means over prompts): layers, cosine at the first / middle / last layer, the ID
    peak over layers >= 1 (value, layer, relative depth), the ID of the embedding output (layer 0), the
    chi_1 range over the pairs (1, 2) .. (L-1, L), and whether it is a toy run at random initialisation."""
    rows = []
    for lab, g in summary.groupby("label", sort=False):
        def prof(metric):
            return g[g.metric == metric].set_index("layer")["mean"].sort_index()
        cos, idp, chi = prof("cos_full"), prof("id"), prof("chi_1")
        L = int(cos.index.max())
        blocks = idp[idp.index >= FIRST_BLOCK]
        chi = chi[chi.index >= FIRST_BLOCK]
        rows.append({"label": lab, "random_init": lab.endswith(RANDOM), "n_layers": L, "cos_first": cos.loc[0],
                     "cos_mid": cos.loc[L // 2], "cos_last": cos.loc[L], "id_peak": blocks.max(),
                     "id_peak_layer": int(blocks.idxmax()), "id_peak_depth": blocks.idxmax() / L,
                     "id_layer0": idp.get(0, np.nan), "chi1_min": chi.min(), "chi1_max": chi.max()})
    return pd.DataFrame(rows)


def _peak_verdict(facts: pd.DataFrame) -> str:
    inner = facts.id_peak_layer < facts.n_layers
    if not inner.any():
        return "disagrees"
    return "agrees" if inner.all() and (facts.id_peak_depth <= EARLY_MIDDLE).all() else "partly"


def findings(summary: pd.DataFrame) -> list[Finding]:
    """Notebook 03's findings from its profile summary, one paragraph each: where the ID peaks (layers >= 1,
    the paper's procedure), the embedding output's ID (our addition), chi_1's top, the cosine through depth,
    and what training changed in the toy runs."""
    f = profile_facts(summary)
    tr, rnd = f[~f.random_init], f[f.random_init]
    out = [Finding(
        "Where the ID peaks (layers >= 1)",
        "; ".join(f"{r.label} {r.id_peak:.1f} at layer {r.id_peak_layer}/{r.n_layers} (depth {r.id_peak_depth:.2f})"
                  for r in tr.itertuples()) + f". An inner peak in {int((tr.id_peak_layer < tr.n_layers).sum())} of "
        f"{len(tr)} trained models; the others rise to their last layer.",
        paper=f"{GEOMETRY_OF_TOKENS}: the ID rises to a peak in the early-middle layers, then falls.",
        verdict=_peak_verdict(tr)),
        Finding("The embedding output (layer 0)",
                f"Its ID is above the peak of the blocks' outputs in {int((f.id_layer0 > f.id_peak).sum())} of "
                f"{len(f)} models (" + "; ".join(f"{r.label} {r.id_layer0:.1f}" for r in f.itertuples()) + ").",
                paper="not measured: the paper's code computes no ID on the embedding output.",
                verdict="our addition"),
        Finding("Neighbourhood overlap chi_1 (pairs (1, 2) .. (L-1, L))",
                "; ".join(f"{r.label} {span(r.chi1_min, r.chi1_max)}" for r in tr.itertuples())
                + f"; {int((tr.chi1_max >= CHI_PAPER).sum())} of {len(tr)} trained models reach {CHI_PAPER:.2f}.",
                paper=f"{GEOMETRY_OF_TOKENS}: chi_1 climbs to about 0.9 in late layers.",
                verdict=_share_verdict(tr.chi1_max >= CHI_PAPER)),
        Finding("Cosine similarity through depth",
                "Mean cosine at the first -> middle -> last layer: " + "; ".join(
                    f"{r.label} {r.cos_first:.2f} -> {r.cos_mid:.2f} -> {r.cos_last:.2f}" for r in tr.itertuples())
                + ".")]
    if len(rnd):
        pairs = [(t, r) for t in tr.itertuples() for r in rnd.itertuples() if r.label == t.label.replace(
            " (trained)", RANDOM)]
        out.append(Finding("What training changed (toy runs)", "; ".join(
            f"{t.label.replace(' (trained)', '')}: ID peak {r.id_peak:.2f} -> {t.id_peak:.2f}, middle-layer cosine "
            f"{r.cos_mid:.2f} -> {t.cos_mid:.2f}" for t, r in pairs) + " (random initialisation -> trained).",
            verdict="our addition"))
    return out


def _share_verdict(ok: pd.Series) -> str:
    return "agrees" if ok.all() else ("partly" if ok.any() else "disagrees")

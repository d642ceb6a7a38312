"""Notebook 03 (geometry metrics): the long geometry table of the toy models (random and trained) and
the pretrained models on the structured prompts, its profile summary, the heatmap matrices, the
architecture pairs compared, and the findings text."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..geometry import cosine_matrix, geometry_table, profile_states, profile_summary
from ..models import ModelSpec
from ..models.spec import table_label
from ..plots.style import with_labels
from .nb02_extract_states import free_memory, load, model_specs, prompt_corpus, prompts_for

NB = "03_geometry_metrics"
PROFILE_METRICS = ("cos_full", "cos_offdiag", "id", "chi_1")
# toy runs compared (trained): PreLN - PostLN in each family, then LLaMA-style - standard at each norm
ARCH_PAIRS = [("llama-preln", "llama-postln"), ("standard-preln", "standard-postln"),
              ("llama-preln", "standard-preln"), ("llama-postln", "standard-postln")]


def model_geometry(spec: str, P, corpus, progress: bool = True):
    """The long geometry table of one model on its prompt set (PromptParams fields of P, plus
    range_max and k_max). Returns (table, lm, prompts)."""
    lm = load(spec, P)
    prompts = prompts_for(spec, lm, P, corpus)
    df = geometry_table(spec, prompts.ids, P.out_dir, range_max=P.range_max, k_max=P.k_max,
                        batch_size=P.batch_size, skip_first=1 if prompts.bos else 0, progress=progress, lm=lm)
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
    return GeometryRun(specs, long, summary, maps)


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


def describe_profiles(summary: pd.DataFrame) -> str:
    """One line per model: cosine at the first / middle / last layer, the ID peak and where it sits,
    the chi_1 range (all means over prompts)."""
    lines = []
    for lab, g in summary.groupby("label", sort=False):
        def prof(metric):
            return g[g.metric == metric].sort_values("layer")
        cos, idp, chi = prof("cos_full"), prof("id"), prof("chi_1")
        L = int(cos.layer.max())
        c = cos.set_index("layer")["mean"]
        peak = idp.loc[idp["mean"].idxmax()]
        lines.append(f"{lab:28s} cos {c.loc[0]:.2f} -> {c.loc[L // 2]:.2f} -> {c.loc[L]:.2f} (first/mid/last); "
                     f"ID peak {peak['mean']:.1f} at layer {int(peak.layer)}/{L} (depth {peak.layer / L:.2f}); "
                     f"chi_1 {chi['mean'].min():.2f}..{chi['mean'].max():.2f}")
    return "\n".join(lines)

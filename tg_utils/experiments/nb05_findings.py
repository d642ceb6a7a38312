"""Notebook 05's findings from its summary table (comparison_summary) and ID-loss correlation: one paragraph
per claim of the paper beside what this run measured, every number formatted from those tables."""
from __future__ import annotations

import pandas as pd

from ..findings import Finding
from .nb03_geometry_metrics import CHI_PAPER, EARLY_MIDDLE, GEOMETRY_OF_TOKENS as PAPER, span
from .nb04_findings import MIN_CORR_PROMPTS, each, verdict_of
from .nb04_shuffle_experiment import PAPER_MIN_LAYER


def _groups(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(pretrained models, trained toy runs, toy runs at random initialisation)."""
    toy = table.model.str.startswith("toy:")
    rnd = toy & (table.revision == "step0")
    return table[~toy], table[toy & ~rnd], table[rnd]


def correlation_facts(table: pd.DataFrame, corr: pd.DataFrame) -> pd.DataFrame:
    """Per model with a loss: n, layers (>= 1, as the paper's code), how many have r > 0, r > 0 with
    p < 0.05, and the median r."""
    rows = []
    for r in table.itertuples():
        c = corr[(corr.model == r.model) & (corr.revision == r.revision) & corr.r.notna()
                 & (corr.layer >= PAPER_MIN_LAYER)]
        if len(c):
            rows.append({"label": r.label, "random_init": r.revision == "step0" and r.model.startswith("toy:"),
                         "n": int(c.n.iloc[0]), "layers": len(c), "pos": int((c.r > 0).sum()),
                         "pos_sig": int(((c.r > 0) & (c.p < 0.05)).sum()), "r_median": float(c.r.median())})
    return pd.DataFrame(rows, columns=["label", "random_init", "n", "layers", "pos", "pos_sig", "r_median"])


def findings(table: pd.DataFrame, corr: pd.DataFrame) -> list[Finding | str]:
    """Notebook 05's findings: where the ID peaks (layers >= 1, the paper's), the all-layers view (ours),
    chi_1's range, the cosine, the nn_sim angle, the toy runs' loss, and the ID-loss correlation."""
    table = table.assign(revision=table.revision.fillna(""))
    pre, toy, rnd = _groups(table)
    out: list[Finding | str] = []
    if len(pre):
        inner = pre.peak_layer_from_l1 < pre.n_layers
        out.append(Finding(
            "Where the ID peaks, pretrained models (layers >= 1)",
            each(pre, lambda r: f"{r.peak_id_from_l1:.1f} at layer {r.peak_layer_from_l1}/{r.n_layers} (depth "
                                 f"{r.peak_depth_from_l1:.2f})") + f". An inner peak in {int(inner.sum())} of {len(pre)}.",
            paper=f"{PAPER}: the ID rises to a peak in the early-middle layers, then falls.",
            verdict=verdict_of(inner & (pre.peak_depth_from_l1 <= EARLY_MIDDLE), inner)))
    toys = pd.concat([toy, rnd])
    if len(toys):
        out.append(Finding(
            "Where the ID peaks, toy runs (layers >= 1)",
            each(toys, lambda r: f"{r.peak_id_from_l1:.2f} at layer {r.peak_layer_from_l1}/{r.n_layers}") +
            f". An inner peak in {int((toys.peak_layer_from_l1 < toys.n_layers).sum())} of {len(toys)}.",
            paper=f"{PAPER}: the ID rises to a peak in the early-middle layers, then falls.",
            verdict=verdict_of(toy.peak_layer_from_l1 < toy.n_layers) if len(toy) else ""))
    at0 = table.peak_layer_all_layers == 0
    out.append(Finding(
        "The ID over all layers, embedding output included",
        f"The embedding output holds the highest ID in {int(at0.sum())} of {len(table)} models ("
        + each(table, lambda r: f"{r.peak_id_all_layers:.1f} at layer {r.peak_layer_all_layers}") + ").",
        paper="not measured: the paper's code computes no ID on the embedding output.", verdict="our addition"))
    trained = pd.concat([pre, toy])
    out.append(Finding(
        "chi_1 climbs to about 0.9 in late layers (pairs (1, 2) .. (L-1, L))",
        each(trained, lambda r: span(r.chi1_min, r.chi1_max)) + "." +
        (" At random initialisation: " + each(rnd, lambda r: f"up to {r.chi1_max:.2f}") +
         " (a high chi_1 is not by itself a sign of training)." if len(rnd) else ""),
        paper=f"{PAPER}: chi_1 climbs to about 0.9 in the late layers.",
        verdict=verdict_of(trained.chi1_max >= CHI_PAPER)))
    out.append(Finding("Mean cosine over the middle third",
                       each(table, lambda r: f"{r.cos_mid:.2f}") + "."))
    out.append(Finding("nn_sim angle (layers >= 1, mean over tokens)",
                       each(table, lambda r: f"{r.nn_angle:.1f} degrees") +
                       " (60 degrees: the token and its two nearest neighbours form an equilateral triangle)."))
    if len(toys) and toys.mean_loss.notna().any():
        out.append(Finding("Toy runs' next-token loss on these prompts",
                           each(toys, lambda r: f"{r.mean_loss:.2f} nats") +
                           ". See notebook 01's final_perplexity table for how far they are from converged."))
    out += _correlation(correlation_facts(table, corr), table)
    return out


def _correlation(cf: pd.DataFrame, table: pd.DataFrame) -> list[Finding | str]:
    tr, rnd = cf[~cf.random_init], cf[cf.random_init]
    if tr.empty:
        return []
    test = tr[tr.n >= MIN_CORR_PROMPTS]
    verdict = "not testable here" if test.empty else verdict_of(test.pos == test.layers, test.pos > test.layers / 2)
    ours = each(tr, lambda r: f"n = {r.n}: r > 0 at {r.pos}/{r.layers} layers ({r.pos_sig} with p < 0.05), "
                               f"median r {r.r_median:.2f}") + "."
    if len(rnd):
        ours += (f" At random initialisation the median r ranges from {rnd.r_median.min():.2f} to "
                 f"{rnd.r_median.max():.2f}, so with these prompts a sign alone says little.")
    no_loss = table[table.mean_loss.isna()].label.tolist()
    if no_loss:
        ours += f" No next-token loss (encoders): {', '.join(no_loss)}."
    if len(test) < len(tr):
        ours += f" A model with fewer than {MIN_CORR_PROMPTS} prompts is not tested."
    return [Finding("ID and loss correlate positively at every layer (trained decoders, structured prompts)", ours,
                    paper=f"{PAPER}: the ID correlates positively with the loss across prompts, at every layer.",
                    verdict=verdict)]

"""Notebook 04's findings from its long table: one row of facts per model (detail_table) and one paragraph
per claim of the paper beside what this run measured (findings), every number formatted from the table."""
from __future__ import annotations

import pandas as pd

from ..findings import Finding
from ..models.spec import table_label
from ..plots.style import model_keys
from .nb03_geometry_metrics import CHI_PAPER, GEOMETRY_OF_TOKENS as PAPER
from .nb04_shuffle_experiment import (MIN_LAYERS, PAPER_MIN_LAYER, band_mean, id_loss_correlation, loss_by_s,
                                      peak_comparisons, peak_fractions)

MIN_CORR_PROMPTS = 10    # fewer prompts than this: a correlation across prompts is not tested (n - 2 degrees of freedom)

def _corr_facts(c: pd.DataFrame, model: str, rev: str, prefix: str) -> dict:
    g = c[(c.model == model) & (c.revision == rev) & c.r.notna() & (c.layer >= PAPER_MIN_LAYER)]
    if g.empty:
        return {f"{prefix}_n": 0}
    return {f"{prefix}_n": int(g.n.iloc[0]), f"{prefix}_layers": len(g), f"{prefix}_pos": int((g.r > 0).sum()),
            f"{prefix}_pos_sig": int(((g.r > 0) & (g.p < 0.05)).sum()),
            f"{prefix}_neg_sig": int(((g.r < 0) & (g.p < 0.05)).sum()), f"{prefix}_r_median": float(g.r.median())}

def detail_table(long: pd.DataFrame, infos: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model: layers, prompts and tokens (from infos, when given), shuffle indices, the ID peak
    per prompt at the largest S against S = 0 over layers >= 1 (the paper's) and over all layers (`_all`,
    ours), the ID of the embedding output, loss, chi_1, cosine and nn_sim angle at S = 0 and the largest S,
    and the ID-loss correlation counts over layers >= 1 (at S = 0, and pooled over (prompt, S): `pooled_`)."""
    long = long.assign(revision=long.revision.fillna(""))           # a table read back from CSV
    fr = {ml: peak_fractions(c).set_index(["model", "revision"]) for ml, c in zip(MIN_LAYERS, peak_comparisons(long))}
    loss = loss_by_s(long).set_index(["model", "revision", "shuffle_index"])["mean"]
    chi_late = band_mean(long, "chi_1", 2 / 3, 1.0).set_index(["model", "revision", "shuffle_index"]).chi_1
    cos_mid = band_mean(long, "cos_full", 1 / 3, 2 / 3).set_index(["model", "revision", "shuffle_index"]).cos_full
    corr0 = id_loss_correlation(long[long.shuffle_index == 0])
    corrp = id_loss_correlation(long, pooled=True)
    rows = []
    for model, rev in model_keys(long):
        m = long[(long.model == model) & (long.revision == rev)]
        ss = sorted(int(s) for s in m.shuffle_index.unique())
        prof = m.groupby(["metric", "shuffle_index", "layer"]).value.mean()
        ids = prof.loc["id"]
        f, fa = fr[PAPER_MIN_LAYER].loc[(model, rev)], fr[0].loc[(model, rev)]
        mp = [float(ids.loc[s][ids.loc[s].index >= PAPER_MIN_LAYER].max()) for s in ss]
        lv = [float(loss.loc[(model, rev, s)]) for s in ss] if "loss" in set(m.metric) else []
        row = {"model": model, "revision": rev, "label": table_label(model, rev),
               "n_layers": int(m[m.metric == "id"].layer.max()), "n_prompts": int(m.prompt_id.nunique()),
               "s_max": ss[-1], "n_higher": int(round(f.frac_higher * f.n_prompts)), "peak_s0": f.peak_ref,
               "peak_smax": f.peak_cmp, "ratio": f.ratio, "profile_peaks": ", ".join(f"{v:.1f}" for v in mp),
               "profile_peak_rises": all(b > a for a, b in zip(mp, mp[1:])),
               "layer_s0": f.layer_ref, "layer_smax": f.layer_cmp, "mean_shift": f.mean_shift,
               "n_earlier": int(round(f.frac_earlier * f.n_prompts)), "n_later": int(round(f.frac_later * f.n_prompts)),
               "id_layer0": float(ids.loc[ss[0]].get(0, float("nan"))),
               "n_higher_all": int(round(fa.frac_higher * fa.n_prompts)), "ratio_all": fa.ratio,
               "loss_s0": lv[0] if lv else float("nan"), "loss_smax": lv[-1] if lv else float("nan"),
               "loss_rises": bool(lv) and all(b > a for a, b in zip(lv, lv[1:])),
               "chi1_max": float(prof.loc["chi_1"].loc[ss[0]].loc[lambda x: x.index >= PAPER_MIN_LAYER].max()),
               "chi1_late_s0": chi_late.get((model, rev, ss[0])), "chi1_late_smax": chi_late.get((model, rev, ss[-1])),
               "cos_mid_s0": cos_mid.get((model, rev, ss[0])), "cos_mid_smax": cos_mid.get((model, rev, ss[-1]))}
        if "nn_angle" in set(m.metric):
            ang = prof.loc["nn_angle"]
            ang = ang[ang.index.get_level_values("layer") >= PAPER_MIN_LAYER].groupby(level=0).mean()
            row.update(nn_angle_s0=float(ang.loc[ss[0]]), nn_angle_smax=float(ang.loc[ss[-1]]))
        if infos is not None:
            info = infos[(infos.model == model) & (infos.revision.fillna("") == rev)]
            if len(info):
                row.update(n_tokens=int(info.n_tokens.iloc[0]), bos=bool(info.bos.iloc[0]))
        row.update(_corr_facts(corr0, model, rev, "corr"))
        row.update(_corr_facts(corrp, model, rev, "pooled"))
        rows.append(row)
    return pd.DataFrame(rows)

def verdict_of(ok: pd.Series, some: pd.Series | None = None) -> str:
    """agrees when every model satisfies `ok`, partly when some satisfy `some` (default: `ok`), else disagrees."""
    some = ok if some is None else some
    return "agrees" if ok.all() else ("partly" if some.any() else "disagrees")

def each(d: pd.DataFrame, fmt) -> str:
    return "; ".join(f"{r.label}: {fmt(r)}" for r in d.itertuples())

def findings(long: pd.DataFrame, infos: pd.DataFrame | None = None) -> list[Finding | str]:
    """Notebook 04's findings (see findings_of) from its long table and prompt sets."""
    return findings_of(detail_table(long, infos))

def findings_of(d: pd.DataFrame) -> list[Finding | str]:
    """One paragraph per claim of the paper (its procedures: layers >= 1, chi_1 pairs from (1, 2), the
    correlation at layers 1..L) beside this run's numbers, then our additions; a prompt-count caveat first."""
    tokens = (lambda r: f"{r.n_tokens} tokens{' + BOS' if r.bos else ''}, ") if "n_tokens" in d else (lambda r: "")
    out: list[Finding | str] = [
        "This run: " + each(d, lambda r: f"{r.n_prompts} prompts ({tokens(r)}S = 0..{r.s_max}, {r.n_layers} layers)")
        + f". A correlation across prompts is tested only with {MIN_CORR_PROMPTS} prompts or more; fewer prompts "
        "show large per-prompt effects, not a correlation."]
    out.append(Finding(
        "Shuffled prompts reach a higher ID peak (layers >= 1)",
        each(d, lambda r: f"higher for {r.n_higher}/{r.n_prompts} prompts at S = {r.s_max} (mean peak "
                           f"{r.peak_s0:.1f} -> {r.peak_smax:.1f}, x{r.ratio:.2f}); peak of the mean profile per S "
                           f"{r.profile_peaks}{' (rising with every S)' if r.profile_peak_rises else ''}") + ".",
        paper=f"{PAPER}: the ID peak is higher for shuffled prompts, for every prompt.",
        verdict=verdict_of(d.n_higher == d.n_prompts, d.n_higher > d.n_prompts / 2)))
    out.append(Finding(
        "The ID peak over all layers, embedding output included",
        each(d, lambda r: f"layer 0 holds ID {r.id_layer0:.1f} at every S; shuffled peak higher for "
                           f"{r.n_higher_all}/{r.n_prompts} prompts (x{r.ratio_all:.2f})") + ".",
        paper="not measured: the paper's code computes no ID on the embedding output.", verdict="our addition"))
    out.append(Finding(
        "The ID peak moves earlier when shuffled",
        each(d, lambda r: f"peak layer {r.layer_s0:.1f} -> {r.layer_smax:.1f} on average (earlier for "
                           f"{r.n_earlier}/{r.n_prompts} prompts, later for {r.n_later})") + ".",
        paper=f"{PAPER}: shuffling moves the peak to earlier layers.",
        verdict=verdict_of(d.mean_shift < 0)))
    dec = d[d.loss_s0.notna()]
    if len(dec):
        out.append(Finding(
            "Loss rises with S",
            each(dec, lambda r: f"{r.loss_s0:.2f} -> {r.loss_smax:.2f} nats (S = 0..{r.s_max}"
                                 f"{', rising at every step' if r.loss_rises else ''})") + ".",
            paper=f"{PAPER}: the next-token loss rises with the shuffle index.",
            verdict=verdict_of(dec.loss_rises, dec.loss_smax > dec.loss_s0)))
    out.append(Finding(
        "chi_1 climbs to about 0.9 in late layers (pairs (1, 2) .. (L-1, L))",
        each(d, lambda r: f"at most {r.chi1_max:.2f}, over the last third {r.chi1_late_s0:.2f} at S = 0 and "
                           f"{r.chi1_late_smax:.2f} at S = {r.s_max}") + ".",
        paper=f"{PAPER}: chi_1 climbs to about 0.9 in the late layers.", verdict=verdict_of(d.chi1_max >= CHI_PAPER)))
    out += _correlation_findings(d[d.corr_n > 0])
    if "nn_angle_s0" in d:
        out.append(Finding("nn_sim angle (layers >= 1)", each(
            d, lambda r: f"{r.nn_angle_s0:.1f} degrees at S = 0, {r.nn_angle_smax:.1f} at S = {r.s_max}") +
            " (mean over tokens and layers; 60 degrees: the token and its two nearest neighbours form an "
            "equilateral triangle)."))
    out.append(Finding("Mean cosine over the middle third", each(
        d, lambda r: f"{r.cos_mid_s0:.2f} at S = 0, {r.cos_mid_smax:.2f} at S = {r.s_max}") + "."))
    return out

def _correlation_findings(d: pd.DataFrame) -> list[Finding]:
    if d.empty:
        return []
    test = d[d.corr_n >= MIN_CORR_PROMPTS]
    verdict = ("not testable here" if test.empty else
               verdict_of(test.corr_pos == test.corr_layers, test.corr_pos > test.corr_layers / 2))
    return [Finding(
        "ID and loss correlate positively at every layer (S = 0, across prompts)",
        each(d, lambda r: f"n = {r.corr_n}: r > 0 at {r.corr_pos}/{r.corr_layers} layers ({r.corr_pos_sig} "
                           f"with p < 0.05, {r.corr_neg_sig} negative with p < 0.05), median r {r.corr_r_median:.2f}"
                           f"{'' if r.corr_n >= MIN_CORR_PROMPTS else ' (too few prompts: not tested)'}") +
        ("" if test.empty else f". The verdict counts the models with {MIN_CORR_PROMPTS} prompts or more") + ".",
        paper=f"{PAPER}: the ID correlates positively with the loss across prompts, at every layer.",
        verdict=verdict),
        Finding("ID and loss pooled over (prompt, S)", each(
            d, lambda r: f"n = {r.pooled_n}: r > 0 at {r.pooled_pos}/{r.pooled_layers} layers ({r.pooled_pos_sig} with "
                         f"p < 0.05), median r {r.pooled_r_median:.2f}") +
            ". Shuffling drives both quantities, so this is not the paper's claim.", verdict="our addition")]

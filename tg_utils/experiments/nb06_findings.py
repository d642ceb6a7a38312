"""The findings text of notebook 06: the measured numbers of the result tables in words (RankMe /
alpha-ReQ trajectories and their phases, the per-layer picture at the last checkpoint, token convergence
and its trends, P1 - P2, and the buckets the corpus cannot fill)."""
from __future__ import annotations

import numpy as np

from ..metrics import trajectory as T
from ..plots.trajectory import final_layer, layer_names, spectral_curves
from .nb06_training_trajectory_phases import Results, convergence_summary, convergence_trends, short_buckets


def _fmt_curve(steps, values, fmt="{:.3g}") -> str:
    return ", ".join(f"{s}: {fmt.format(v)}" for s, v in zip(steps, values))


def sequences_text(info: dict) -> str:
    """The spectra's sequences of one trajectory in words, N first (RankMe depends on N)."""
    n, L = info.get("n_seqs", "?"), info.get("seq_len", "?")
    if info.get("sequences") == "documents":
        return (f"N = {n} documents (lines), each its first <= {L} tokens (mean {info.get('mean_seq_tokens')}), "
                f"of the {info.get('n_available')} with more than the minimum; the Tracing paper's sampling")
    return f"N = {n} windows of {L} tokens over the joined split (overlap {info.get('window_overlap', 0):.2f}; our variant)"


def procedures(P) -> dict[str, str]:
    """Which procedure made each family of numbers (for captions and the findings): spectra, phases,
    words (token convergence) and perturbation, each naming the paper's procedure or our variant."""
    seqs = ("the Tracing paper's documents: every non-empty line of the split on its own, its first <= "
            f"{P.seq_len} tokens, those of <= {P.min_doc_tokens} tokens dropped"
            + ("" if P.max_docs is None else f", a seeded sample of at most {P.max_docs}")
            if P.spectra_sequences == "documents" else
            f"our windows: {P.n_seqs} windows of {P.seq_len} tokens over the split's articles joined by EOS")
    pca = f"PCA of at most {P.max_components} components" if P.max_components else "every PCA component"
    words = ("Token Representation Evolution's words: a seeded sample of " f"{P.n_sampled_words} words of the list, "
             f"buckets of >= {P.min_bucket_words} words" if P.word_sampling == "sample" else
             f"our words: the first {P.words_per_bucket} of each bucket")
    words += ("; the bare word (the paper)" if P.word_form == "bare" else "; the spaced word ' word' (ours)")
    pert = ("Token Representation Evolution's P1 / P2: each word's first sentence against its other sentences "
            f"(P1) and against up to {P.n_swaps} variants of it with the last word swapped (P2)"
            if P.perturbation == "first_base" else
            "our P1 / P2: every sentence a base in turn (leave one out for P1, one swap per sentence for P2)")
    return {"spectra": f"{seqs}; {pca}",
            "phases": "phase boundaries by our rule (tg_utils.metrics.trajectory.mark_phases; the paper reads "
                      "them off plots): the collapse starts at the last checkpoint before RankMe falls",
            "words": words, "perturbation": pert}


def findings(res: Results, threshold: float = 0.9, P=None) -> str:
    """The measured results in numbers: RankMe / alpha trajectories and phases (final-normed layer), the
    per-layer picture at the end, token convergence per bucket and its trends, P1 - P2, and the buckets
    the corpus cannot fill; with P, the procedures that made them first."""
    out = []
    if P is not None:
        out.append("== Procedures ==")
        out += [f"{k}: {v}" for k, v in procedures(P).items()]
        out.append("")
    curves = spectral_curves(res)
    out.append("== Spectral trajectories (final-normed last-token states) ==")
    for t, c in curves.groupby("trajectory", sort=False):
        c = c.sort_values("step")
        i_min, i_max = int(np.nanargmin(c.rankme.to_numpy())), int(np.nanargmax(c.rankme.to_numpy()))
        info = res.inputs.get(t, {})
        out.append(f"{t} ({sequences_text(info)}; LR warmup {res.warmup.get(t)} steps):")
        out.append(f"  RankMe  {_fmt_curve(c.step, c.rankme, '{:.1f}')}")
        out.append(f"          min {c.rankme.iloc[i_min]:.1f} at step {c.step.iloc[i_min]}, max {c.rankme.iloc[i_max]:.1f} "
                   f"at step {c.step.iloc[i_max]}")
        out.append(f"  alpha   {_fmt_curve(c.step, c.alpha, '{:.3f}')}")
        out.append(f"  fit r2  {_fmt_curve(c.step, c.alpha_r2, '{:.2f}')}")
        if "next_token_nll" in c:
            out.append(f"  last-token NLL {_fmt_curve(c.step, c.next_token_nll, '{:.2f}')}")
        L = final_layer(res, t)
        ph = res.phases[(res.phases.trajectory == t) & (res.phases.layer == L)] if len(res.phases) else res.phases
        if len(res.phases.columns):                     # computed (an empty table: no phase)
            out += [f"  phase: {line}" for line in T.describe_phases(ph)]
            if res.rule.get("smooth", 1) != 1 and np.isfinite(c.rankme).all() and np.isfinite(c.alpha).all():
                raw = T.mark_phases(c.step, c.rankme, c.alpha, **dict(res.rule, smooth=1), warmup_until=res.warmup.get(t))
                out.append("  without smoothing (smooth=1): " + "; ".join(
                    f"{r.phase} {r.start_step:g}-{r.end_step:g}" for r in raw) if len(raw) else
                    "  without smoothing (smooth=1): no phase")
        else:
            out.append("  phases: not computed (RankMe or alpha undefined at some checkpoint)")
    # per layer at the end
    out.append("")
    out.append("== Per layer at the last checkpoint (RankMe / alpha) ==")
    s = res.spectra
    for t, g in s.groupby("trajectory", sort=False):
        last = g[g.step == g.step.max()]
        w = last.pivot_table(index="layer", columns="metric", values="value")
        names = layer_names(len(w))
        out.append(f"{t} (N = {res.inputs.get(t, {}).get('n_seqs', '?')}): " +
                   "; ".join(f"{n} {r.rankme:.1f}/{r.alpha:.2f}" for n, r in zip(names, w.itertuples())))
        if len(res.phases):
            other = res.phases[(res.phases.trajectory == t)]
            counts = other.groupby("phase").layer.apply(lambda x: ",".join(names[int(v)] for v in sorted(set(x))))
            out.append("  layers with each phase: " + ("; ".join(f"{p}: {counts.get(p, 'none')}" for p in T.PHASES)))
    # token convergence
    if len(res.convergence):
        summ = convergence_summary(res.convergence, threshold)
        out.append("")
        out.append(f"== Token convergence (cosine to the final checkpoint; deficit = mean of 1 - cos over the "
                   f"checkpoints before the last; converged = first step from which cos >= {threshold}) ==")
        for (t, p), g in summ.groupby(["trajectory", "prefix"], sort=False):
            out.append(f"{t}, {'word alone' if not p else 'after prefix ' + repr(p)}:")
            n = int(g.layer.max()) + 1
            names = layer_names(n)
            for b, h in g.groupby("bucket"):
                h = h.sort_values("layer")
                out.append(f"  {b} tok (n={int(h.n_words.iloc[0])}): deficit " +
                           " ".join(f"{names[int(l)]}={d:.3f}" for l, d in zip(h.layer, h.deficit)) +
                           " | converged at " + " ".join(f"{names[int(l)]}={int(cs)}" for l, cs in zip(h.layer, h.converged_step)))
        tr = convergence_trends(summ)
        out.append("Trends (Spearman, mean over buckets / layers with >= 5 words; > 0 = later convergence):")
        for r in tr.itertuples():
            out.append(f"  {r.trajectory}, {'alone' if not r.prefix else 'prefix'}: with layer {r.rho_layer:+.2f}, "
                       f"with token count {r.rho_bucket:+.2f} (buckets {r.buckets})")
        # first-position effect: one-token words alone vs after a prefix
        if "" in set(summ.prefix) and len(set(summ.prefix)) > 1 and 1 in set(summ.bucket):
            out.append("First-position effect (1-token words, mean deficit over layers 1..final): " + "; ".join(
                f"{t}: alone {g[(g.prefix == '') & (g.bucket == 1) & (g.layer > 0)].deficit.mean():.3f} vs prefix "
                f"{g[(g.prefix != '') & (g.bucket == 1) & (g.layer > 0)].deficit.mean():.3f}"
                for t, g in summ.groupby("trajectory", sort=False)))
    # perturbation
    if len(res.perturbation):
        pert = res.perturbation
        out.append("")
        out.append("== Context perturbation (P1: same word in its other contexts; P2: same sentence, last word swapped "
                   "for one ending in the same token; raw states, and centred = minus the mean state of the spectra sequences) ==")
        for t, g in pert.groupby("trajectory", sort=False):
            L = int(g.layer.max())
            mid = max(1, L // 2)
            s0, s1 = int(g.step.min()), int(g.step.max())
            out.append(f"{t}: P1 / P2 / P1-P2 at layer {mid} and at the final layer, step {s1} (step {s0} in brackets):")
            for b, h in g.groupby("bucket"):
                def at(kind, step, layer, col="P1_minus_P2"):
                    return h[(h.states == kind) & (h.step == step) & (h.layer == layer)][col].item()
                last_raw = h[(h.states == "raw") & (h.step == s1) & (h.layer >= 1)]
                last_c = h[(h.states == "centred") & (h.step == s1) & (h.layer >= 1)]
                n = int(h.n_words.iloc[0])
                out.append(
                    f"  {b} tok (n={n}): raw {at('raw', s1, mid, 'P1'):.3f} / {at('raw', s1, mid, 'P2'):.3f} / "
                    f"{at('raw', s1, mid):+.3f} ({at('raw', s0, mid):+.3f}), final {at('raw', s1, L):+.3f} "
                    f"({at('raw', s0, L):+.3f}); centred {at('centred', s1, mid, 'P1'):.3f} / "
                    f"{at('centred', s1, mid, 'P2'):.3f} / {at('centred', s1, mid):+.3f} ({at('centred', s0, mid):+.3f}), "
                    f"final {at('centred', s1, L):+.3f} ({at('centred', s0, L):+.3f}); largest P1-P2 over layers 1..final: "
                    f"raw {last_raw.P1_minus_P2.max():+.3f}, centred {last_c.P1_minus_P2.max():+.3f}")
    sb = short_buckets(res)
    out.append("")
    for a, bs in sb.items():
        if bs:
            rep = res.buckets[(res.buckets.analysis == a) & res.buckets.bucket.isin(bs)].drop_duplicates("bucket")
            out.append(f"{a}: the corpus cannot fill bucket(s) {bs} (" + ", ".join(
                f"{int(r.bucket)} tok: {int(r.n_words)} of {int(r.wanted)} words" for r in rep.itertuples()) + ")")
        else:
            out.append(f"{a}: every bucket filled")
    return "\n".join(out)

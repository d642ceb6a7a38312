"""Notebook 06's findings as Markdown built from the run's tables: one short paragraph per claim of the
Tracing paper (phases of RankMe / alpha-ReQ) and of Token Representation Evolution (convergence, P1 > P2),
the paper's claim beside ours and a verdict the numbers decide; and the procedure behind each family."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..findings import Finding, to_markdown
from ..metrics import trajectory as T
from ..plots.trajectory import final_layer, spectral_curves
from .nb06_training_trajectory_phases import Results, convergence_summary, convergence_trends, short_buckets


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



TRACING = "Tracing the Representation Geometry of LMs"
TRE = "Token Representation Evolution"


def share_verdict(hits: int, n: int) -> str:
    """The verdict of a claim tested on n runs, seen in `hits` of them: all agrees, none disagrees."""
    return "not testable here" if n == 0 else "agrees" if hits == n else "disagrees" if hits == 0 else "partly"


def _runs(names) -> str:
    names = list(names)
    return ", ".join(names) if names else "none"


def _phase_at_final(res: Results, t: str) -> pd.DataFrame:
    ph = res.phases
    if not len(ph.columns) or not len(ph):
        return pd.DataFrame(columns=["phase", "start_step", "end_step"])
    return ph[(ph.trajectory == t) & (ph.layer == final_layer(res, t))]


def _spans(ph: pd.DataFrame, phase: str) -> str:
    r = ph[ph.phase == phase]
    return ", ".join(f"steps {a:g}-{b:g}" for a, b in zip(r.start_step, r.end_step))


def phase_findings(res: Results) -> list[Finding]:
    """The Tracing paper's three phases at the final-normed layer: per run, where our rule marks each, with
    the RankMe fall (first checkpoint -> minimum) and the curves' ends."""
    curves = spectral_curves(res)
    falls, marked = [], {p: {} for p in T.PHASES}
    for t, c in curves.groupby("trajectory", sort=False):
        c = c.sort_values("step")
        r = c.rankme.to_numpy()
        if not np.isfinite(r).any():
            continue
        i = int(np.nanargmin(r))
        n = res.inputs.get(t, {}).get("n_seqs", "?")
        w = res.warmup.get(t)
        falls.append(f"{t} {r[0]:.1f} -> {r[i]:.1f} at step {c.step.iloc[i]:g} (N = {n}, "
                     + ("no warmup known)" if w is None else f"warmup {w:g} steps)"))
        ph = _phase_at_final(res, t)
        for p in T.PHASES:
            if (ph.phase == p).any():
                marked[p][t] = _spans(ph, p)
    n = len(falls)
    if n == 0:
        return [Finding("Spectral phases", "RankMe is undefined at every checkpoint: no phase can be read.",
                        verdict="not testable here")]
    full = [t for t in marked[T.WARMUP] if t in marked[T.ENTROPY] and t in marked[T.COMPRESSION]]

    def where(p):
        m = marked[p]
        return f"marked in {len(m)} of {n} runs" + (": " + "; ".join(f"{t} {s}" for t, s in m.items()) if m else "")
    return [
        Finding("Warmup collapse", f"RankMe (first checkpoint -> minimum): {'; '.join(falls)}. Our rule's "
                f"collapse is {where(T.WARMUP)}.",
                paper=f"({TRACING}) RankMe collapses during the learning-rate warmup.",
                verdict=share_verdict(len(marked[T.WARMUP]), n)),
        Finding("Entropy-seeking phase", f"{where(T.ENTROPY)}.",
                paper="after the collapse RankMe rises while alpha-ReQ falls.",
                verdict=share_verdict(len(marked[T.ENTROPY]), n)),
        Finding("Compression-seeking phase", f"{where(T.COMPRESSION)}; the full sequence collapse -> "
                f"entropy-seeking -> compression-seeking in: {_runs(full)}.",
                paper="then RankMe falls while alpha-ReQ rises.",
                verdict=share_verdict(len(marked[T.COMPRESSION]), n)),
    ]


def layer_finding(res: Results) -> Finding:
    """RankMe and alpha over the blocks (1..final) at each run's last checkpoint (our addition)."""
    parts = []
    for t, g in res.spectra.groupby("trajectory", sort=False):
        last = g[(g.step == g.step.max()) & (g.layer > 0)]
        w = last.pivot_table(index="layer", columns="metric", values="value")
        if "rankme" not in w or "alpha" not in w:
            continue
        parts.append(f"{t} RankMe {w.rankme.iloc[0]:.1f} (block 1) -> {w.rankme.iloc[-1]:.1f} (final), alpha "
                     f"{w.alpha.min():.2f}-{w.alpha.max():.2f}")
    return Finding("Per layer at the last checkpoint", "; ".join(parts) + " (every layer: the heatmaps above).",
                   verdict="our addition")


def convergence_findings(res: Results, threshold: float = 0.9) -> list[Finding]:
    """Token Representation Evolution's two convergence claims (Spearman trends of the deficit) and the
    first-position effect of one-token words (our addition)."""
    if not len(res.convergence):
        return []
    summ = convergence_summary(res.convergence, threshold)
    tr = convergence_trends(summ)
    lab = lambda r: f"{r.trajectory} {'alone' if not r.prefix else 'after the prefix'}"
    layer = [f"{lab(r)} {r.rho_layer:+.2f}" for r in tr.itertuples()]
    bucket = [f"{lab(r)} {r.rho_bucket:+.2f}" for r in tr.itertuples()]
    out = [
        Finding("Later layers converge later", "Spearman of the convergence deficit (mean 1 - cosine to the "
                f"final checkpoint) with the layer, > 0 = later: {'; '.join(layer)}.",
                paper=f"({TRE}) a word's state converges to its final form later in later layers.",
                verdict=share_verdict(int((tr.rho_layer > 0).sum()), int(tr.rho_layer.notna().sum()))),
        Finding("Multi-token words converge later", f"Spearman of the deficit with the word's token count: "
                f"{'; '.join(bucket)}.", paper="words of more tokens converge later.",
                verdict=share_verdict(int((tr.rho_bucket > 0).sum()), int(tr.rho_bucket.notna().sum()))),
    ]
    if "" in set(summ.prefix) and len(set(summ.prefix)) > 1 and 1 in set(summ.bucket):
        pairs = []
        for t, g in summ.groupby("trajectory", sort=False):
            one = g[(g.bucket == 1) & (g.layer > 0)]
            a, b = one[one.prefix == ""].deficit.mean(), one[one.prefix != ""].deficit.mean()
            if np.isfinite(a) and np.isfinite(b):
                pairs.append((t, a, b))
        if not pairs:
            return out
        later = sum(a > b for _, a, b in pairs)
        out.append(Finding("First-position effect", "one-token words fed alone (position 0 sees only itself) "
                           f"converge later than after the prefix in {later} of {len(pairs)} runs (mean deficit "
                           "over layers 1..final, alone vs prefix: " + "; ".join(f"{t} {a:.3f} vs {b:.3f}"
                                                                               for t, a, b in pairs) + ").",
                           verdict="our addition"))
    return out


def perturbation_finding(res: Results) -> list[Finding]:
    """P1 > P2 (Token Representation Evolution) at each run's last checkpoint, over layers 1..final."""
    pert = res.perturbation
    if not len(pert):
        return []
    parts, hits, n = [], 0, 0
    for t, g in pert.groupby("trajectory", sort=False):
        last = g[(g.step == g.step.max()) & (g.layer >= 1)]
        raw, cen = last[last.states == "raw"].P1_minus_P2, last[last.states == "centred"].P1_minus_P2
        n += 1
        hits += bool(raw.max() > 0)
        parts.append(f"{t} raw {raw.min():+.3f} to {raw.max():+.3f}, centred {cen.min():+.3f} to {cen.max():+.3f}")
    return [Finding("P1 > P2", "P1 - P2 over layers 1..final and buckets at the last checkpoint: "
                    + "; ".join(parts) + ".",
                    paper="a multi-token word's last-token state depends on the word (P1: the same word in other "
                          "contexts) more than on its last token (P2: the last word swapped), P1 > P2.",
                    verdict=share_verdict(hits, n))]


def findings(res: Results, threshold: float = 0.9) -> list[Finding | str]:
    """Every finding of notebook 06 from the run's tables, in the notebook's order, with the buckets the
    corpus cannot fill as a closing caveat."""
    out: list[Finding | str] = [*phase_findings(res), layer_finding(res), *convergence_findings(res, threshold),
                                *perturbation_finding(res)]
    for a, bs in short_buckets(res).items():
        if bs:
            rep = res.buckets[(res.buckets.analysis == a) & res.buckets.bucket.isin(bs)].drop_duplicates("bucket")
            out.append(f"*Caveat ({a}):* the corpus cannot fill bucket(s) {bs} (" + ", ".join(
                f"{int(r.bucket)}-token words: {int(r.n_words)} of {int(r.wanted)}" for r in rep.itertuples()) + ").")
    return out


def findings_markdown(res: Results, threshold: float = 0.9) -> str:
    """The findings as Markdown (the notebook shows it with ``findings.show``)."""
    return to_markdown(findings(res, threshold))

"""The pipeline of notebook 06 (training-trajectory phases): for every checkpoint of every trajectory
(a toy run of notebook 01, or a hub model with a list of revisions), the last-token states of three
prompt sets through the activation cache, and from them

1. spectral phases (the Tracing paper): per layer, the eigenspectrum (PCA of at most `max_components`
   = 2048 components, as the paper's) of the last-token states of the spectra sequences of a corpus
   split, RankMe and alpha-ReQ (with its r2), and the phases that our rule `trajectory.mark_phases`
   finds on the final-normed layer's curves;
2. token convergence (Token Representation Evolution): per layer, the cosine between a word's
   last-token state at each checkpoint and at the final one, averaged per bucket of words by token
   count, for each word fed alone and after fixed short prefixes (words: the paper's seeded sample of
   the bare words by default, nb06_inputs.word_selection);
3. multi-token context perturbation: P1 (same word, other contexts) and P2 (same sentence, last word
   swapped for one that ends in the same token) per layer per bucket at each checkpoint (the paper's
   first-sentence procedure by default, our leave-one-out as `perturbation="leave_one_out"`).

Trajectories with `spectra=False` (P.word_models at P.word_revisions) are read for 2 and 3 only.

    trajs = trajectories(P)                  # what will be read: toy runs and / or hub model revisions
    res = run(P, trajs)                      # everything, through the activation cache (resumable),
                                             # every table saved (result_tables)
    res.spectra / res.phases / res.convergence / res.perturbation ...   # tidy tables

What is read lives in nb06_inputs (trajectories, prompt sets), what is measured at a checkpoint and the
tables of one trajectory in nb06_measures, the figures in tg_utils.plots.trajectory, the findings (Markdown) in
nb06_findings.

Layers are state indices (tg_utils.extract): 0 = embedding output, 1..L = block outputs, L + 1 = the
final-normed output (for post-norm toy models the final norm is the identity, so L + 1 equals L).

Sequences for the spectra (nb06_inputs.spectra_sequences; RankMe depends on their number N, reported
beside every RankMe): by default the Tracing paper's (`tg_utils.data.sequences.document_sequences`):
every document of the split (a non-empty line: a paragraph, as the rows of its WikiText loader) on its
own, its first <= `seq_len` tokens, those of <= `min_doc_tokens` tokens dropped, every qualifying one
used (`max_docs`: a seeded cap); with `spectra_sequences="windows"` our variant
(`sequence_windows`): the split's articles joined by EOS and `n_seqs` windows of `seq_len` tokens at
evenly spaced starts (they can straddle articles and overlap; the overlap is reported). The token after
each sequence (where the document goes on) is kept as its target: the mean NLL of that token from the
final-normed last-token state (`next_token_nll` metric, through tg_utils.models.unembed) is a validation
loss measured on exactly the states of the spectrum, at every checkpoint.

Cost (default profile, one CPU thread): nearly all of the time is the forward passes, ~95k tokens per
checkpoint (722 documents, 44k tokens; ~4.7k sampled words alone and after the prefix, ~40k; the context,
swapped and first-context variant prompts ~15k) x 50 checkpoints, of which the matrix products of the
blocks take most. Each checkpoint is
loaded once and all three prompt sets are read from it; only last-token states are kept
(positions="last"); extraction passes compute_loss=False, so the forward stops after the final norm (no
lm_head over the vocabulary, no full-sequence loss); prompts are sorted by length before they go to the
cache so that batches carry little padding, and each set runs in batches of `batch_tokens` padded tokens
(`batch_prompts`): 16 windows of 128 tokens, but a few hundred of the 3-9-token word prompts per forward
(the per-forward overhead of a batch of a few prompts costs more than their tokens).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data import words as W
from ..data.corpus import load_corpus
from ..metrics.stats import spearman
from ..tables import save_table
from .nb06_inputs import (Checkpoint, Inputs, Trajectory, build_inputs, bucket_report, checkpoint_table,
                          hub_trajectory, read_context_candidates, read_words, revision_step, toy_trajectory,
                          trajectories)
from .nb06_measures import (SPECTRAL_METRICS, CheckpointResult, convergence_rows, eig_rows, fit_rows,
                            frame, last_states, layer_spectra, load_checkpoint, measure_checkpoint,
                            perturbation_rows, phase_tables, rule_kwargs, spectra_rows, training_log)

__all__ = ["NB", "LONG_TABLES", "SPECTRAL_METRICS", "Checkpoint", "CheckpointResult", "Inputs", "Results",
           "Trajectory", "build_inputs", "bucket_report", "checkpoint_table", "convergence_rows",
           "convergence_summary", "convergence_trends", "describe_run", "eig_rows", "fit_rows", "frame",
           "hub_trajectory", "last_states", "layer_spectra", "load_checkpoint", "measure_checkpoint",
           "perturbation_rows", "phase_tables", "read_context_candidates", "read_words", "result_tables",
           "revision_step", "rule_kwargs", "run", "run_trajectories", "save_tables", "short_buckets",
           "spectra_rows", "toy_trajectory", "training_log", "trajectories"]

NB = "06_training_trajectory_phases"
LONG_TABLES = ("spectra_long",)          # saved in the long form (tables.check_long)


# ============================================================================ every trajectory -> tables

@dataclass(frozen=True)
class Results:
    """Every table notebook 06 draws (tidy; `spectra` in the long form plus trajectory and step)."""
    checkpoints: pd.DataFrame
    spectra: pd.DataFrame
    eigs: pd.DataFrame
    fits: pd.DataFrame
    phases: pd.DataFrame
    intervals: pd.DataFrame
    logs: pd.DataFrame
    buckets: pd.DataFrame
    convergence: pd.DataFrame
    perturbation: pd.DataFrame
    inputs: dict = field(default_factory=dict)    # trajectory -> summary of its inputs
    warmup: dict = field(default_factory=dict)    # trajectory -> warmup_until
    rule: dict = field(default_factory=dict)      # the phase-rule parameters (rule_kwargs)


def run_trajectories(P, trajs: Sequence[Trajectory] | None = None, corpus=None, progress: bool = True) -> Results:
    """Measure every checkpoint of every trajectory (see the module docstring) and build the tables.
    Inputs are built once per tokenizer; models are loaded one checkpoint at a time."""
    trajs = list(trajectories(P) if trajs is None else trajs)
    corpus = corpus or load_corpus(P.corpus, P.corpus_path)
    word_list = read_words(P, corpus)
    cand = read_context_candidates(P, corpus) if P.context_buckets else None
    by_tok: dict[str, Inputs] = {}
    acc = {k: [] for k in ("checkpoints", "spectra", "eigs", "fits", "phases", "intervals", "logs", "buckets",
                           "convergence", "perturbation")}
    info, warm = {}, {}
    bar = tqdm(total=sum(len(t.checkpoints) for t in trajs), desc="checkpoints", unit="ckpt", disable=not progress)
    for traj in trajs:
        results, inputs = [], None
        for ck in traj.checkpoints:
            bar.set_postfix_str(ck.label)
            t0 = time.perf_counter()
            lm = load_checkpoint(ck, P)
            if inputs is None:
                key = (W.tokenizer_hash(lm.tokenizer), traj.spectra)
                if key not in by_tok:
                    by_tok[key] = build_inputs(P, lm, corpus, word_list, cand, spectra=traj.spectra)
                inputs = by_tok[key]
            r = measure_checkpoint(lm, inputs, P, ck.step)
            r = replace(r, seconds=time.perf_counter() - t0)         # load included
            results.append(r)
            acc["checkpoints"].append({"trajectory": traj.name, "step": ck.step, "spec": ck.label,
                                       "seconds": round(r.seconds, 3)})
            del lm
            bar.update(1)
        if traj.spectra:
            spectra = spectra_rows(traj, results)
            ph, iv = phase_tables(traj, spectra, P)
            acc["spectra"].append(spectra)
            acc["eigs"].append(eig_rows(traj, results))
            acc["fits"].append(fit_rows(traj, results))
            acc["phases"].append(ph)
            acc["intervals"].append(iv)
        acc["logs"].append(training_log(traj))
        acc["buckets"].append(bucket_report(inputs, traj.name, P))
        acc["convergence"].append(convergence_rows(traj, inputs, results))
        acc["perturbation"].append(perturbation_rows(traj, inputs, results))
        info[traj.name] = {"sequences": inputs.seqs.procedure, "n_seqs": len(inputs.seqs.ids),
                           "n_available": inputs.seqs.n_available, "seq_len": P.seq_len,
                           "mean_seq_tokens": round(float(np.mean([len(x) for x in inputs.seqs.ids])), 1)
                           if len(inputs.seqs.ids) else 0.0,
                           "stream_tokens": inputs.seqs.stream_tokens, "window_overlap": inputs.seqs.overlap,
                           "n_words": len(inputs.word_buckets),
                           "n_contexts": 0 if inputs.contexts is None else len(inputs.contexts.table),
                           "n_swaps": 0 if inputs.contexts is None else len(inputs.contexts.swaps),
                           "n_layers": results[0].word_states[P.word_prefixes[0]].shape[1]}
        warm[traj.name] = traj.warmup_until
    bar.close()

    def cat(k):
        parts = [d for d in acc[k] if len(d)]
        if not parts:                                 # keep the columns of an empty table (e.g. no phase)
            return next((d for d in acc[k] if len(d.columns)), pd.DataFrame())
        return pd.concat(parts, ignore_index=True)
    return Results(pd.DataFrame(acc["checkpoints"]), *(cat(k) for k in ("spectra", "eigs", "fits", "phases",
                   "intervals", "logs", "buckets", "convergence", "perturbation")), inputs=info, warmup=warm,
                   rule=rule_kwargs(P))


def describe_run(res: Results) -> str:
    """One line: checkpoints read, their total time, and the inputs of every trajectory."""
    return f"{len(res.checkpoints)} checkpoints in {res.checkpoints.seconds.sum():.1f} s; inputs: {res.inputs}"


# ============================================================================ summaries

def convergence_summary(conv: pd.DataFrame, threshold: float = 0.9) -> pd.DataFrame:
    """Per (trajectory, prefix, layer, bucket): `deficit` = mean over the checkpoints before the final of
    1 - mean_cos (0 = the state never changes; larger = converges later), `converged_step` = the first
    checkpoint step from which mean_cos stays >= threshold (the final step if only there), n_words."""
    rows = []
    for key, g in conv.groupby(["trajectory", "prefix", "layer", "bucket"], sort=False):
        g = g.sort_values("step")
        c = g.mean_cos.to_numpy()
        ok = c >= threshold
        tail = np.flatnonzero(~ok)
        first = 0 if len(tail) == 0 else tail[-1] + 1
        rows.append(dict(zip(("trajectory", "prefix", "layer", "bucket"), key),
                         deficit=float(np.mean(1 - c[:-1])) if len(c) > 1 else float("nan"),
                         converged_step=g.step.iloc[min(first, len(c) - 1)], n_words=int(g.n_words.iloc[-1])))
    return pd.DataFrame(rows)


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values, NaN when none (np.nanmean would warn: a stderr box in JupyterLab)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def convergence_trends(summary: pd.DataFrame, min_words: int = 5) -> pd.DataFrame:
    """The two claims of Token Representation Evolution, per (trajectory, prefix): Spearman correlation
    of the deficit with the layer (within each bucket, averaged over buckets: > 0 = later layers converge
    later) and with the bucket (within each layer, averaged over layers: > 0 = longer words converge
    later), over buckets with >= min_words words; the embedding layer (0) is left out of the layer trend
    (an input embedding, not a contextual state)."""
    rows = []
    s = summary[summary.n_words >= min_words]
    for (t, p), g in s.groupby(["trajectory", "prefix"], sort=False):
        gl = g[g.layer > 0]
        by_layer = [spearman(h.layer, h.deficit) for _, h in gl.groupby("bucket")]
        by_bucket = [spearman(h.bucket, h.deficit) for _, h in gl.groupby("layer")]
        rows.append({"trajectory": t, "prefix": p, "rho_layer": _finite_mean(by_layer),
                     "rho_bucket": _finite_mean(by_bucket),
                     "buckets": ",".join(str(b) for b in sorted(g.bucket.unique()))})
    return pd.DataFrame(rows)


def short_buckets(res: Results) -> dict[str, list[int]]:
    """Per analysis, the buckets the corpus cannot fill (fewer words than asked) in any trajectory."""
    b = res.buckets
    return {a: sorted({int(x) for x in g.loc[~g.enough.astype(bool), "bucket"]}) for a, g in b.groupby("analysis")}


# ============================================================================ saved tables

def result_tables(res: Results, P) -> dict[str, pd.DataFrame]:
    """Every table notebook 06 saves, by name (LONG_TABLES in the long form): the Results tables and the
    convergence summary at P.convergence_threshold."""
    return {"spectra_long": res.spectra, "eigenspectra": res.eigs, "power_law_fits": res.fits,
            "phases": res.phases, "phase_intervals": res.intervals, "training_logs": res.logs,
            "buckets": res.buckets, "token_convergence": res.convergence,
            "context_perturbation": res.perturbation, "checkpoint_timing": res.checkpoints,
            "inputs": pd.DataFrame([{"trajectory": t, **v} for t, v in res.inputs.items()]),
            "convergence_summary": convergence_summary(res.convergence, P.convergence_threshold)}


def save_tables(res: Results, P) -> list:
    """Save every result table under P.out_dir (tables.save_table); returns the paths."""
    return [save_table(t, NB, name, P.out_dir, long=name in LONG_TABLES) for name, t in result_tables(res, P).items()]


def run(P, trajs: Sequence[Trajectory] | None = None, corpus=None, progress: bool = True) -> Results:
    """The notebook's pipeline: seed torch and numpy with P.seed, measure every trajectory
    (run_trajectories) and save every table (save_tables)."""
    torch.manual_seed(P.seed)
    np.random.seed(P.seed)
    res = run_trajectories(P, trajs, corpus, progress)
    save_tables(res, P)
    return res

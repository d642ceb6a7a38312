"""The pipeline of notebook 06 (training-trajectory phases): for every checkpoint of every trajectory
(a toy run of notebook 01, or a hub model with a list of revisions), the last-token states of three
prompt sets through the activation cache, and from them

1. spectral phases (the Tracing paper): per layer, the eigenspectrum of the last-token states of
   `n_seqs` windows of `seq_len` tokens of a corpus split, RankMe and alpha-ReQ (with its r2), and the
   phases that `trajectory.mark_phases` finds on the final-normed layer's curves;
2. token convergence (Token Representation Evolution): per layer, the cosine between a word's
   last-token state at each checkpoint and at the final one, averaged per bucket of words by token
   count, for each word fed alone and after fixed short prefixes;
3. multi-token context perturbation: P1 (same word, other contexts) and P2 (same sentence, last word
   swapped for one that ends in the same token) per layer per bucket at each checkpoint.

    trajs = trajectories(P)                  # what will be read: toy runs and / or hub model revisions
    res = run_trajectories(P, trajs)         # everything, through the activation cache (resumable)
    res.spectra / res.phases / res.convergence / res.perturbation ...   # tidy tables

Layers are state indices (tg_utils.extract): 0 = embedding output, 1..L = block outputs, L + 1 = the
final-normed output (for post-norm toy models the final norm is the identity, so L + 1 equals L).

Sequences for the spectra (`sequence_windows`): the split's articles are encoded and joined by EOS (the
stream the toy models are evaluated on) and `n_seqs` windows of `seq_len` tokens are taken at evenly
spaced starts over the whole stream; when the stream holds fewer than `n_seqs` disjoint windows they
overlap (the overlap is reported). The token after each window is kept as its target: the mean NLL of
that token from the final-normed last-token state (`next_token_nll` metric) is a validation loss
measured on exactly the states of the spectrum, at every checkpoint (the training log's validation
loss exists only every eval_every steps).

Cost (default profile, one CPU thread): nearly all of the time is the forward passes, ~85k tokens per
checkpoint (512 windows x 128 tokens = 65.5k, the ~880 word prompts ~3.7k, the ~820 context and swapped
prompts ~16k) x 50 checkpoints, of which the matrix products of the blocks take most. Each checkpoint is
loaded once and all three prompt sets are read from it; only last-token states are kept
(positions="last"); extraction passes compute_loss=False, so the forward stops after the final norm (no
lm_head over the vocabulary, no full-sequence loss); prompts are sorted by length before they go to the
cache so that batches carry little padding, and each set runs in batches of `batch_tokens` padded tokens
(`batch_prompts`): 16 windows of 128 tokens, but a few hundred of the 3-9-token word prompts per forward
(the per-forward overhead of a batch of a few prompts costs more than their tokens).
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import metrics as M
from . import words as W
from .metrics import trajectory as T

NB = "06_training_trajectory_phases"
SPECTRAL_METRICS = ("rankme", "rankme_singular", "alpha", "alpha_r2", "alpha_r2_100")


# ============================================================================ what is read

@dataclass
class Checkpoint:
    """One checkpoint: `spec` and `revision` as load_model takes them; `step` its training step."""
    step: int
    spec: str
    revision: str | None

    @property
    def label(self) -> str:
        return self.spec if self.revision is None else f"{self.spec}@{self.revision}"


@dataclass
class Trajectory:
    """The checkpoints of one training run, ascending by step.

    name: the run (toy) or hub id; model: the `model` column of the long tables ("toy:<run>" or the
    hub id); warmup_until: the learning-rate warmup length (steps) handed to mark_phases; run_dir: the
    toy run's folder (training log), None for hub models."""
    name: str
    model: str
    checkpoints: list[Checkpoint]
    warmup_until: float | None = None
    run_dir: Path | None = None

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    def revision_label(self, step: int) -> str:
        """The `revision` column of the long tables: "step<N>" (toy and Pythia-style revisions)."""
        for c in self.checkpoints:
            if c.step == step:
                return c.revision if c.revision is not None else f"step{step}"
        raise KeyError(step)


def revision_step(revision: str) -> int:
    """The training step a hub revision names: "step1000" -> 1000 (Pythia's, OLMo-style "stepN-...")."""
    m = re.match(r"^step(\d+)", revision)
    if m is None:
        raise ValueError(f"revision {revision!r} does not name a step; use revisions like 'step1000'")
    return int(m.group(1))


def toy_trajectory(run: str, out_dir="outputs") -> Trajectory:
    """Every trajectory checkpoint of a toy run (steps 0, 1, 2, 4, ..., last) as specs toy:<run>@<step>,
    with the run's warmup length from its config.json."""
    import json

    from .toy_runs import run_dir as _run_dir
    from .train import HOW_TO_TRAIN, list_checkpoints
    rd = _run_dir(out_dir, run)
    steps = list_checkpoints(rd)
    if len(steps) < 2:
        raise FileNotFoundError(f"toy run {run!r} has {len(steps)} checkpoint(s) in {rd}; a trajectory needs "
                                f"at least two; {HOW_TO_TRAIN}")
    warmup = None
    cfg = rd / "config.json"
    if cfg.exists():
        warmup = json.loads(cfg.read_text())["train_config"].get("warmup_steps")
    return Trajectory(run, f"toy:{run}", [Checkpoint(s, f"toy:{run}@{s}", None) for s in steps],
                      warmup_until=warmup, run_dir=rd)


def hub_trajectory(model: str, revisions: Sequence[str], warmup_until: float | None = None) -> Trajectory:
    """A hub model at a list of revisions (e.g. Pythia's "step0" ... "step143000"), sorted by step."""
    pts = sorted(((revision_step(r), r) for r in revisions), key=lambda x: x[0])
    steps = [s for s, _ in pts]
    if len(set(steps)) != len(steps):
        raise ValueError(f"revisions of {model} name the same step twice: {list(revisions)}")
    if len(pts) < 2:
        raise ValueError(f"a trajectory of {model} needs at least two revisions, got {list(revisions)}")
    return Trajectory(model, model, [Checkpoint(s, model, r) for s, r in pts], warmup_until=warmup_until)


def trajectories(P) -> list[Trajectory]:
    """The trajectories of the parameters: every toy run in P.toy_runs, then every hub model in P.models
    at every revision in P.revisions (warmup P.model_warmup_steps)."""
    out = [toy_trajectory(r, P.out_dir) for r in P.toy_runs]
    out += [hub_trajectory(m, P.revisions, P.model_warmup_steps) for m in P.models]
    return out


def checkpoint_table(trajs: Sequence[Trajectory]) -> pd.DataFrame:
    """One row per checkpoint: trajectory, step, spec (as a notebook names it), revision, warmup_until."""
    return pd.DataFrame([{"trajectory": t.name, "step": c.step, "spec": c.label, "revision": c.revision or "",
                          "warmup_until": t.warmup_until} for t in trajs for c in t.checkpoints])


# ============================================================================ inputs

@dataclass
class SequenceSet:
    """Windows of a token stream: ids (n, seq_len [+1 with BOS]), the token after each (targets),
    their starts in the stream, and the fraction of tokens shared with the next window (overlap)."""
    ids: list[list[int]]
    targets: np.ndarray
    starts: np.ndarray
    overlap: float
    stream_tokens: int


def sequence_windows(stream, seq_len: int, n_seqs: int, bos_id: int | None = None) -> SequenceSet:
    """`n_seqs` windows of `seq_len` tokens at evenly spaced starts over the stream (first window at 0,
    last ending one token before the end, so every window has a next token), each with that next
    token as target; BOS in front if `bos_id`. The windows overlap when the stream holds fewer than
    n_seqs disjoint ones (SequenceSet.overlap > 0). Deterministic."""
    s = np.asarray(stream).ravel()
    if seq_len < 1 or n_seqs < 1:
        raise ValueError(f"seq_len and n_seqs must be positive, got {seq_len}, {n_seqs}")
    last_start = len(s) - seq_len - 1
    if last_start < 0:
        raise ValueError(f"a stream of {len(s)} tokens is too short for windows of {seq_len} tokens")
    if n_seqs - 1 > last_start:
        raise ValueError(f"a stream of {len(s)} tokens has only {last_start + 1} distinct windows of "
                         f"{seq_len} tokens; lower n_seqs ({n_seqs}) or seq_len")
    starts = np.floor(np.linspace(0, last_start, n_seqs)).astype(np.int64) if n_seqs > 1 else np.zeros(1, np.int64)
    head = [] if bos_id is None else [int(bos_id)]
    ids = [head + s[a:a + seq_len].astype(np.int64).tolist() for a in starts]
    stride = np.diff(starts).min() if n_seqs > 1 else seq_len
    return SequenceSet(ids, s[starts + seq_len].astype(np.int64), starts, max(0.0, 1 - stride / seq_len), len(s))


@dataclass
class Inputs:
    """The prompt sets of one tokenizer: spectra windows, word prompts per prefix, contexts."""
    tokenizer_hash: str
    seqs: SequenceSet
    word_buckets: dict[str, int]
    words: dict[str, W.WordPrompts]          # prefix ("" = the word alone) -> prompts
    contexts: W.ContextSet | None


def read_words(P, corpus) -> list[str]:
    """The frequent-word list: P.words_path, or (None) the frequent words of the corpus' train split."""
    if P.words_path:
        return W.read_word_list(P.words_path)
    return W.frequent_words(corpus.texts("train"), n=None, min_count=3)


def read_context_candidates(P, corpus) -> dict:
    """Context candidates: P.contexts_path, or (None) built from every split of the corpus."""
    if P.contexts_path:
        return W.load_contexts(P.contexts_path)
    return W.context_candidates([t for s in corpus.splits for t in corpus.texts(s)],
                                min_contexts=P.min_contexts, seed=P.seed)


def build_inputs(P, lm, corpus, word_list: Sequence[str], candidates: dict | None) -> Inputs:
    """The three prompt sets under `lm`'s tokenizer (BOS in front where the model adds one)."""
    from .train import encode_texts
    tok, desc = lm.tokenizer, lm.desc
    bos = desc.bos_token_id if desc.adds_bos else None
    stream = encode_texts(tok, corpus.texts(P.spectra_split))
    seqs = sequence_windows(stream, P.seq_len, P.n_seqs, bos)
    if desc.context and len(seqs.ids[0]) > desc.context:
        raise ValueError(f"{lm.spec}: windows of {len(seqs.ids[0])} positions exceed its context of "
                         f"{desc.context}; lower seq_len")
    buckets = W.select_by_bucket(word_list, tok, P.word_buckets, P.words_per_bucket)
    words = {p: W.word_prompts(list(buckets), tok, prefix=p or None, add_bos=desc.adds_bos)
             for p in P.word_prefixes}
    cs = None
    if candidates is not None and P.context_buckets:
        cs = W.build_contexts(candidates, tok, buckets=P.context_buckets, min_contexts=P.min_contexts,
                              min_words=P.min_context_words, max_words=P.context_words_per_bucket,
                              add_bos=desc.adds_bos, seed=P.seed, warn=False)
        if len(cs.table) == 0:
            cs = None
    return Inputs(W.tokenizer_hash(tok), seqs, buckets, words, cs)


def bucket_report(inputs: Inputs, trajectory: str, P) -> pd.DataFrame:
    """Per bucket: words used for token convergence (of words_per_bucket asked) and words / contexts of
    the perturbation set (of min_context_words needed); `enough` False where the corpus cannot fill it."""
    conv = pd.Series(inputs.word_buckets, dtype=int).value_counts()
    rows = [{"trajectory": trajectory, "analysis": "convergence", "bucket": b, "n_words": int(conv.get(b, 0)),
             "n_contexts": 0, "wanted": P.words_per_bucket, "enough": int(conv.get(b, 0)) >= P.words_per_bucket,
             "examples": " ".join([w for w, k in inputs.word_buckets.items() if k == b][:6])}
            for b in P.word_buckets]
    if inputs.contexts is not None:
        rep, tab = inputs.contexts.report, inputs.contexts.table
        for r in rep.itertuples():
            ws = list(dict.fromkeys(tab.loc[tab.bucket == r.bucket, "word"]))
            rows.append({"trajectory": trajectory, "analysis": "perturbation", "bucket": int(r.bucket),
                         "n_words": int(r.n_words), "n_contexts": int(r.n_contexts), "wanted": P.min_context_words,
                         "enough": bool(r.enough), "examples": " ".join(ws[:6])})
    return pd.DataFrame(rows)


# ============================================================================ per-checkpoint measures

def batch_prompts(prompts: Sequence[Sequence[int]], batch_tokens: int, chunk_size: int = 256) -> int:
    """Prompts per forward pass for a prompt set: as many of its longest prompt as fit in `batch_tokens`
    padded tokens (at least 1, at most a cache chunk)."""
    longest = max((len(p) for p in prompts), default=1)
    return int(max(1, min(chunk_size, batch_tokens // max(1, longest))))


def last_states(lm, prompts: Sequence[Sequence[int]], out_dir="outputs", batch_tokens: int = 2048,
                chunk_size: int = 256) -> np.ndarray:
    """Last-token states of every state index, (n_prompts, n_states, d) float32, through the activation
    cache (prompts sorted by length for the batches, `batch_prompts` per forward pass, returned in the
    given order; no loss computed, so the forward stops after the final norm)."""
    from .cache import cached_states
    order = np.argsort([len(p) for p in prompts], kind="stable")
    st = cached_states(lm, [list(prompts[i]) for i in order], layers=None, positions="last", out_dir=out_dir,
                       batch_size=batch_prompts(prompts, batch_tokens, chunk_size), chunk_size=chunk_size,
                       progress=False, compute_loss=False)
    x = st.stacked().float().numpy()
    out = np.empty_like(x)
    out[order] = x
    return out


def layer_spectra(states) -> dict[str, np.ndarray]:
    """Per-layer spectral metrics of last-token states (N, L, d): eigs (L, min(N, d)) (covariance
    eigenvalues normalised to sum 1, descending), rankme and rankme_singular, alpha, alpha_r2,
    alpha_r2_100 and the fit's log-intercept, each (L,). A layer whose spectrum is undefined (zero
    variance, fewer than 13 positive eigenvalues) gets NaN."""
    X = np.asarray(states, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"states must be (n_prompts, n_layers, d), got {X.shape}")
    clouds = np.ascontiguousarray(X.transpose(1, 0, 2))                    # (L, N, d)
    L, n = clouds.shape[0], min(X.shape[0], X.shape[2])
    eigs = np.full((L, n), np.nan)
    out = {k: np.full(L, np.nan) for k in (*SPECTRAL_METRICS, "intercept")}
    for l in range(L):
        try:
            eigs[l] = M.eigenspectrum(clouds[l])
        except ValueError:
            continue
        out["rankme"][l] = M.rankme(eigs[l])
        out["rankme_singular"][l] = M.rankme(eigs[l], variant="singular")
        try:
            with np.errstate(invalid="ignore", divide="ignore"):     # an empty r2 window gives NaN
                a = M.alpha_req(eigs[l])
        except ValueError:
            continue
        out["alpha"][l], out["alpha_r2"][l], out["alpha_r2_100"][l] = a.alpha, a.r2, a.r2_100
        out["intercept"][l] = M.power_law_intercept(eigs[l], a.alpha)
    out["eigs"] = eigs
    return out


def next_token_nll(h, targets, lm) -> np.ndarray:
    """NLL (nats) of `targets` (N,) under the logits of final-normed states h (N, d) through `lm`'s
    unembedding (its bias and logit soft-cap included). None for models without an unembedding."""
    import torch

    from .extract import next_token_nll as _nll
    d = lm.desc
    if d.W_U is None:
        return None
    hh = torch.as_tensor(np.asarray(h), dtype=d.W_U.dtype, device=d.W_U.device)
    return _nll(hh, torch.as_tensor(np.asarray(targets), device=d.W_U.device), d.W_U, d.b_U,
                d.logit_softcap).cpu().double().numpy()


@dataclass
class CheckpointResult:
    step: int
    spectra: dict[str, np.ndarray]
    nll: float
    word_states: dict[str, np.ndarray]           # prefix -> (n_words, L, d)
    p1: np.ndarray | None                        # (n_words, L), raw states
    p2: np.ndarray | None
    seconds: float
    p1_centred: np.ndarray | None = None         # (n_words, L), states minus the windows' mean state
    p2_centred: np.ndarray | None = None


def measure_checkpoint(lm, inputs: Inputs, P, step: int) -> CheckpointResult:
    """Everything notebook 06 reads from one loaded checkpoint."""
    t0 = time.perf_counter()
    S = last_states(lm, inputs.seqs.ids, P.out_dir, P.batch_tokens)
    spec = layer_spectra(S)
    nll = next_token_nll(S[:, -1], inputs.seqs.targets, lm)
    words = {p: last_states(lm, wp.ids, P.out_dir, P.batch_tokens) for p, wp in inputs.words.items()}
    p1 = p2 = c1 = c2 = None
    cs = inputs.contexts
    if cs is not None:
        base, mask = cs.stack(last_states(lm, cs.prompts(), P.out_dir, P.batch_tokens))
        swap, _ = cs.stack(last_states(lm, cs.swap_prompts(), P.out_dir, P.batch_tokens))
        raw = T.perturbation_scores(base, None, swap, base_mask=mask)
        mu = S.mean(0)                                   # (L, d): the mean last-token state of the windows
        centred = T.perturbation_scores(base - mu, None, swap - mu, base_mask=mask)
        p1, p2, c1, c2 = raw.p1, raw.p2, centred.p1, centred.p2
    return CheckpointResult(step, spec, float(np.mean(nll)) if nll is not None else float("nan"), words, p1, p2,
                            time.perf_counter() - t0, c1, c2)


# ============================================================================ one trajectory -> tables

def _load(traj: Trajectory, ck: Checkpoint, P):
    from .models import load_model
    if traj.run_dir is not None:
        return load_model(ck.spec, dtype=P.model_dtype, device=P.device, out_dir=P.out_dir)
    return load_model(ck.spec, revision=ck.revision, dtype=P.model_dtype, device=P.device)


def spectra_rows(traj: Trajectory, results: Sequence[CheckpointResult]) -> pd.DataFrame:
    """Long table (tables.LONG_COLUMNS + trajectory, step) of the spectral metrics per checkpoint and
    layer; prompt_id -1 (a metric of the whole set of windows), shuffle_index 0; next_token_nll at the
    final-normed layer."""
    rows = []
    for r in results:
        L = len(r.spectra["rankme"])
        for m in SPECTRAL_METRICS:
            rows.append(pd.DataFrame({"layer": np.arange(L), "metric": m, "value": r.spectra[m], "step": r.step}))
        rows.append(pd.DataFrame({"layer": [L - 1], "metric": "next_token_nll", "value": [r.nll], "step": r.step}))
    df = pd.concat(rows, ignore_index=True)
    df.insert(0, "model", traj.model)
    df.insert(1, "revision", [traj.revision_label(s) for s in df.step])
    df.insert(2, "prompt_id", -1)
    df.insert(3, "shuffle_index", 0)
    df.insert(0, "trajectory", traj.name)
    return df[["model", "revision", "prompt_id", "shuffle_index", "layer", "metric", "value", "trajectory", "step"]]


def eig_rows(traj: Trajectory, results: Sequence[CheckpointResult]) -> pd.DataFrame:
    """Tidy eigenspectra: trajectory, step, layer, rank (1-based), eigenvalue (normalised, sum 1)."""
    parts = []
    for r in results:
        e = r.spectra["eigs"]
        L, n = e.shape
        parts.append(pd.DataFrame({"trajectory": traj.name, "step": r.step, "layer": np.repeat(np.arange(L), n),
                                   "rank": np.tile(np.arange(1, n + 1), L), "eigenvalue": e.ravel()}))
    return pd.concat(parts, ignore_index=True)


def fit_rows(traj: Trajectory, results: Sequence[CheckpointResult]) -> pd.DataFrame:
    """The power-law fit of every spectrum: trajectory, step, layer, alpha, intercept, r2."""
    return pd.DataFrame([{"trajectory": traj.name, "step": r.step, "layer": l, "alpha": r.spectra["alpha"][l],
                          "intercept": r.spectra["intercept"][l], "alpha_r2": r.spectra["alpha_r2"][l]}
                         for r in results for l in range(len(r.spectra["alpha"]))])


def frame(result) -> pd.DataFrame:
    """A tg_utils.metrics.trajectory result as a table: mark_phases' Phases one row each (the
    PHASE_COLUMNS, also when there are none), else one column per field of the result (the label
    columns of PhaseIntervals as objects: None stays None)."""
    if isinstance(result, tuple):
        return pd.DataFrame([asdict(p) for p in result], columns=T.PHASE_COLUMNS)
    cols = [f.name for f in fields(result)]
    df = pd.DataFrame({k: getattr(result, k) for k in cols if not k.endswith("label")})
    for k in cols:
        if k.endswith("label"):
            df[k] = pd.Series(list(getattr(result, k)), dtype=object)
    return df


def rule_kwargs(P) -> dict:
    """The phase-rule parameters of P (trajectory.mark_phases keywords, warmup_until aside)."""
    return dict(smooth=P.phase_smooth, min_rankme_slope=P.min_rankme_slope, min_alpha_slope=P.min_alpha_slope,
                min_len=P.phase_min_len)


def phase_tables(traj: Trajectory, spectra: pd.DataFrame, P) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(phases, intervals) of every layer of one trajectory by trajectory.mark_phases (rule parameters
    from P; warmup_until = the trajectory's warmup). Layers whose curves are undefined are skipped."""
    kw = dict(rule_kwargs(P), warmup_until=traj.warmup_until)
    ph, iv = [], []
    wide = spectra.pivot_table(index=["layer", "step"], columns="metric", values="value").reset_index()
    for layer, g in wide.groupby("layer"):
        g = g.sort_values("step")
        if not (np.isfinite(g.rankme).all() and np.isfinite(g.alpha).all() and (g.rankme > 0).all()):
            continue
        ph.append(frame(T.mark_phases(g.step, g.rankme, g.alpha, **kw)).assign(trajectory=traj.name, layer=layer))
        iv.append(frame(T.phase_intervals(g.step, g.rankme, g.alpha, **kw)).assign(trajectory=traj.name, layer=layer))
    cols_p = ["trajectory", "layer", *T.PHASE_COLUMNS]
    phases = pd.concat(ph, ignore_index=True)[cols_p] if ph else pd.DataFrame(columns=cols_p)
    intervals = pd.concat(iv, ignore_index=True) if iv else pd.DataFrame()
    if len(intervals):
        intervals = intervals[["trajectory", "layer"] + [c for c in intervals.columns if c not in ("trajectory", "layer")]]
    return phases, intervals


def convergence_rows(traj: Trajectory, inputs: Inputs, results: Sequence[CheckpointResult]) -> pd.DataFrame:
    """trajectory.convergence_by_bucket of every word-prompt prefix, with trajectory and prefix columns
    ("" = the word alone)."""
    steps = [r.step for r in results]
    parts = []
    for p, wp in inputs.words.items():
        final = results[-1].word_states[p]
        cos = np.stack([M.token_convergence(r.word_states[p], final) for r in results], -1)   # (W, L, T)
        df = frame(T.convergence_by_bucket(cos, wp.n_tokens, steps=steps))
        parts.append(df.assign(trajectory=traj.name, prefix=p))
    df = pd.concat(parts, ignore_index=True)
    return df[["trajectory", "prefix"] + [c for c in df.columns if c not in ("trajectory", "prefix")]]


def perturbation_rows(traj: Trajectory, inputs: Inputs, results: Sequence[CheckpointResult]) -> pd.DataFrame:
    """trajectory.perturbation_by_bucket at every checkpoint, with trajectory, step and `states` columns:
    "raw" (cosines of the states, the definition) and "centred" (of the states minus the mean last-token
    state of the spectrum windows at that layer and checkpoint: a common direction that every state
    shares makes every raw cosine close to 1 and hides the differences)."""
    if inputs.contexts is None:
        return pd.DataFrame()
    b = inputs.contexts.word_buckets()
    parts = []
    for r in results:
        for name, (a1, a2) in (("raw", (r.p1, r.p2)), ("centred", (r.p1_centred, r.p2_centred))):
            if a1 is not None:
                parts.append(frame(T.perturbation_by_bucket(T.PerturbationScores(a1, a2), b))
                             .assign(trajectory=traj.name, step=r.step, states=name))
    df = pd.concat(parts, ignore_index=True)
    return df[["trajectory", "step", "states"] + [c for c in df.columns if c not in ("trajectory", "step", "states")]]


def training_log(traj: Trajectory) -> pd.DataFrame:
    """The toy run's training log (tg_utils.train.read_log) with a trajectory column; empty for hub models."""
    from .train import read_log
    if traj.run_dir is None:
        return pd.DataFrame()
    return read_log(traj.run_dir).assign(trajectory=traj.name)


@dataclass
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
    from tqdm.auto import tqdm

    from .corpus import load_corpus
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
            lm = _load(traj, ck, P)
            if inputs is None:
                key = W.tokenizer_hash(lm.tokenizer)
                if key not in by_tok:
                    by_tok[key] = build_inputs(P, lm, corpus, word_list, cand)
                inputs = by_tok[key]
            r = measure_checkpoint(lm, inputs, P, ck.step)
            r.seconds = time.perf_counter() - t0
            results.append(r)
            acc["checkpoints"].append({"trajectory": traj.name, "step": ck.step, "spec": ck.label,
                                       "seconds": round(r.seconds, 3)})
            del lm
            bar.update(1)
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
        info[traj.name] = {"n_seqs": len(inputs.seqs.ids), "seq_len": P.seq_len,
                           "stream_tokens": inputs.seqs.stream_tokens, "window_overlap": inputs.seqs.overlap,
                           "n_words": len(inputs.word_buckets),
                           "n_contexts": 0 if inputs.contexts is None else len(inputs.contexts.table),
                           "n_layers": len(results[0].spectra["rankme"])}
        warm[traj.name] = traj.warmup_until
    bar.close()

    def cat(k):
        parts = [d for d in acc[k] if len(d)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return Results(pd.DataFrame(acc["checkpoints"]), *(cat(k) for k in ("spectra", "eigs", "fits", "phases",
                   "intervals", "logs", "buckets", "convergence", "perturbation")), inputs=info, warmup=warm,
                   rule=rule_kwargs(P))


# ============================================================================ summaries

def final_layer(res: Results, trajectory: str) -> int:
    """The final-normed state index of a trajectory (the last layer of its spectra)."""
    return int(res.spectra.loc[res.spectra.trajectory == trajectory, "layer"].max())


def spectral_curves(res: Results, layer: str | int = "final") -> pd.DataFrame:
    """Wide per-checkpoint curves of one layer ("final" = each trajectory's final-normed layer):
    trajectory, step, rankme, rankme_singular, alpha, alpha_r2, alpha_r2_100, next_token_nll."""
    s = res.spectra
    if layer == "final":
        last = s.groupby("trajectory")["layer"].transform("max")
        s = s[s.layer == last]
    else:
        s = s[s.layer == int(layer)]
    w = s.pivot_table(index=["trajectory", "step"], columns="metric", values="value", sort=False).reset_index()
    w.columns.name = None
    return w


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


def _spearman(x, y) -> float:
    x, y = pd.Series(np.asarray(x, float)), pd.Series(np.asarray(y, float))
    ok = x.notna() & y.notna()
    if ok.sum() < 3 or x[ok].nunique() < 2 or y[ok].nunique() < 2:
        return float("nan")
    return float(x[ok].rank().corr(y[ok].rank()))


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
        by_layer = [_spearman(h.layer, h.deficit) for _, h in gl.groupby("bucket")]
        by_bucket = [_spearman(h.bucket, h.deficit) for _, h in gl.groupby("layer")]
        rows.append({"trajectory": t, "prefix": p, "rho_layer": float(np.nanmean(by_layer)) if by_layer else np.nan,
                     "rho_bucket": float(np.nanmean(by_bucket)) if by_bucket else np.nan,
                     "buckets": ",".join(str(b) for b in sorted(g.bucket.unique()))})
    return pd.DataFrame(rows)


# ============================================================================ figures
# Each returns (fig, tidy DataFrame of exactly the numbers drawn).

PHASE_COLORS = {T.WARMUP: "tab:red", T.ENTROPY: "tab:green", T.COMPRESSION: "tab:blue"}


def _x(step):
    return np.asarray(step, dtype=float) + 1.0


def _grid(nrow: int, ncol: int, w: float, h: float, top: float = 0.5, sharex=False, sharey=False,
          left: float = 0.9, wspace: float = 0.12, hspace: float = 0.18):
    """A figure of nrow x ncol axes of w x h inches with fixed margins (top, left in inches): no
    tight_layout, which costs more than drawing on figures of many axes."""
    import matplotlib.pyplot as plt
    W, H = w * ncol + left + 0.2, h * nrow + top + 0.55
    fig, axes = plt.subplots(nrow, ncol, figsize=(W, H), squeeze=False, sharex=sharex, sharey=sharey)
    fig.subplots_adjust(left=left / W, right=1 - 0.2 / W, bottom=0.55 / H, top=1 - top / H,
                        wspace=wspace, hspace=hspace)
    return fig, axes


def _log(ax, axis: str = "x"):
    """Log scale without minor ticks (their labels dominate the drawing time of many small axes)."""
    from matplotlib.ticker import NullLocator
    for a in axis:
        getattr(ax, f"set_{a}scale")("log")
        getattr(ax, f"{a}axis").set_minor_locator(NullLocator())


def show(fig, png=None):
    """Show a saved figure in the notebook from its PNG (no second rendering) and close it; without a
    PNG, plt.show()."""
    import matplotlib.pyplot as plt
    if png is None:
        plt.show()
        return
    from IPython.display import Image, display
    plt.close(fig)
    display(Image(filename=str(png)))


def _shade(ax, iv: pd.DataFrame):
    for r in iv.itertuples():
        if isinstance(r.label, str):
            ax.axvspan(_x(r.start_step), _x(r.end_step), color=PHASE_COLORS[r.label], alpha=0.12, lw=0)


def _layer_names(n_states: int) -> list[str]:
    return ["emb"] + [str(i) for i in range(1, n_states - 1)] + ["final"]


def plot_spectral_trajectories(res: Results):
    """One row per trajectory: RankMe, alpha-ReQ (markers sized by fit r2) and the losses against 1 + step
    (log axis), final-normed layer; phases shaded (red: warmup collapse, green: entropy-seeking, blue:
    compression-seeking); dotted line: end of the LR warmup."""
    from matplotlib.patches import Patch
    curves = spectral_curves(res)
    names = list(dict.fromkeys(curves.trajectory))
    fig, axes = _grid(len(names), 3, 4.3, 2.5, top=0.8, sharex=True, left=1.1, wspace=0.3, hspace=0.15)
    tidy = []
    for i, t in enumerate(names):
        c = curves[curves.trajectory == t].sort_values("step")
        L = final_layer(res, t)
        iv = res.intervals[(res.intervals.trajectory == t) & (res.intervals.layer == L)] if len(res.intervals) else res.intervals
        a0, a1, a2 = axes[i]
        a0.plot(_x(c.step), c.rankme, "o-", color="k")
        a1.plot(_x(c.step), c.alpha, "-", color="k", lw=1)
        a1.scatter(_x(c.step), c.alpha, s=12 + 40 * np.clip(c.alpha_r2.fillna(0), 0, 1), color="k", zorder=3)
        tidy += [{"trajectory": t, "step": s, "series": m, "value": v} for m in ("rankme", "alpha", "alpha_r2")
                 for s, v in zip(c.step, c[m])]
        if "next_token_nll" in c and c.next_token_nll.notna().any():
            a2.plot(_x(c.step), c.next_token_nll, "x-", color="tab:purple", label="last-token NLL (spectrum windows)")
            tidy += [{"trajectory": t, "step": s, "series": "next_token_nll", "value": v}
                     for s, v in zip(c.step, c.next_token_nll)]
        if len(res.logs) and t in set(res.logs.trajectory):
            lg = res.logs[res.logs.trajectory == t]
            tr = lg[lg.step > 0]
            sm = tr.train_loss.rolling(5, min_periods=1, center=True).mean()
            a2.plot(_x(tr.step), sm, color="tab:gray", lw=1, label="train loss (running mean of 5 steps)")
            ev = lg.dropna(subset=["val_loss"])
            a2.plot(_x(ev.step), ev.val_loss, "s", color="tab:orange", label="validation loss (training log)")
            tidy += [{"trajectory": t, "step": s, "series": "train_loss_smoothed", "value": v} for s, v in zip(tr.step, sm)]
            tidy += [{"trajectory": t, "step": s, "series": "val_loss", "value": v} for s, v in zip(ev.step, ev.val_loss)]
        _log(a0, "y")
        for ax in (a0, a1, a2):
            _shade(ax, iv)
            if res.warmup.get(t):
                ax.axvline(_x(res.warmup[t]), color="gray", ls=":", lw=1)
            _log(ax)
            if i == len(names) - 1:
                ax.set_xlabel("1 + step")
        a0.set_ylabel(f"{t}\nRankMe (log)")
        a1.set_ylabel("alpha-ReQ")
        a2.set_ylabel("loss (nats)")
        if i == 0:
            a0.set_title("RankMe (final-normed last-token states)")
            a1.set_title("alpha-ReQ (marker size = fit r2)")
            a2.set_title("loss")
            a2.legend(fontsize=7)
    handles = [Patch(color=c, alpha=0.3, label=p) for p, c in PHASE_COLORS.items()]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 1.0))
    return fig, pd.DataFrame(tidy)


def plot_spectral_overlay(res: Results):
    """RankMe and alpha-ReQ of the final-normed layer against 1 + step, all trajectories in one panel each."""
    curves = spectral_curves(res)
    fig, axes = _grid(1, 2, 5.2, 3.6, wspace=0.25)
    axes = axes[0]
    for t, c in curves.groupby("trajectory", sort=False):
        c = c.sort_values("step")
        axes[0].plot(_x(c.step), c.rankme, "o-", ms=3, label=t)
        axes[1].plot(_x(c.step), c.alpha, "o-", ms=3, label=t)
    axes[0].set(xlabel="1 + step", ylabel="RankMe (log)", title="RankMe, final-normed layer")
    axes[1].set(xlabel="1 + step", ylabel="alpha-ReQ", title="alpha-ReQ, final-normed layer")
    for ax in axes:
        _log(ax)
    _log(axes[0], "y")
    axes[0].legend(fontsize=7)
    return fig, curves[["trajectory", "step", "rankme", "alpha", "alpha_r2"]].reset_index(drop=True)


def plot_layer_heatmaps(res: Results, metrics: Sequence[str] = ("rankme", "alpha")):
    """Layer x checkpoint heat maps of each metric, one row per trajectory (columns: checkpoints in
    order, labelled by step; rows: state index, emb = embedding, final = final-normed)."""
    s = res.spectra[res.spectra.metric.isin(metrics)]
    names = list(dict.fromkeys(s.trajectory))
    fig, axes = _grid(len(names), len(metrics), 5.0, 2.1, top=0.4, left=0.7, wspace=0.15, hspace=0.35)
    for i, t in enumerate(names):
        for j, m in enumerate(metrics):
            g = s[(s.trajectory == t) & (s.metric == m)]
            w = g.pivot_table(index="layer", columns="step", values="value").sort_index()
            ax = axes[i, j]
            im = ax.imshow(w.to_numpy(), aspect="auto", origin="lower", cmap="viridis")
            ax.set_xticks(range(w.shape[1]), [str(c) for c in w.columns], fontsize=7, rotation=90)
            ax.set_yticks(range(w.shape[0]), _layer_names(w.shape[0]), fontsize=7)
            ax.set_title(f"{t}: {m}", fontsize=9)
            if i == len(names) - 1:
                ax.set_xlabel("checkpoint step")
            fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return fig, s[["trajectory", "layer", "step", "metric", "value"]].reset_index(drop=True)


def shown_steps(steps: Sequence[int], k: int) -> list[int]:
    """k checkpoints spread over the trajectory's (log-spaced) checkpoints: the first, the last and
    evenly spaced indices between."""
    steps = list(steps)
    if k >= len(steps):
        return steps
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, k)).astype(int))
    return [steps[i] for i in idx]


def plot_eigenspectra(res: Results, k: int = 4):
    """Eigenspectra (normalised covariance eigenvalues vs rank, log-log) of k checkpoints per trajectory,
    final-normed layer, with the fitted alpha-ReQ power law (dashed, over its fit ranks 12..100)."""
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(res.eigs.trajectory))
    ncol = min(3, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = _grid(nrow, ncol, 4.4, 3.3, top=0.35, left=0.8, wspace=0.25, hspace=0.35)
    tidy = []
    lo, hi = M.ALPHA_FIT_RANKS
    for i, t in enumerate(names):
        ax = axes.flat[i]
        L = final_layer(res, t)
        e = res.eigs[(res.eigs.trajectory == t) & (res.eigs.layer == L)]
        f = res.fits[(res.fits.trajectory == t) & (res.fits.layer == L)].set_index("step")
        cmap = plt.get_cmap("viridis")
        chosen = shown_steps(sorted(e.step.unique()), k)
        for j, st in enumerate(chosen):
            g = e[(e.step == st) & (e.eigenvalue > 0)].sort_values("rank")
            col = cmap(j / max(1, len(chosen) - 1))
            a, b, r2 = f.loc[st, "alpha"], f.loc[st, "intercept"], f.loc[st, "alpha_r2"]
            ax.loglog(g["rank"], g.eigenvalue, color=col, lw=1.3, label=f"step {st}: alpha={a:.2f}, r2={r2:.2f}")
            tidy += [{"trajectory": t, "step": st, "rank": r, "series": "eigenvalue", "value": v}
                     for r, v in zip(g["rank"], g.eigenvalue)]
            if np.isfinite(a):
                rr = np.arange(lo, min(hi, int(g["rank"].max())) + 1)
                fit = np.exp(b) * rr ** (-a)
                ax.loglog(rr, fit, "--", color=col, lw=1)
                tidy += [{"trajectory": t, "step": st, "rank": r, "series": "power_law_fit", "value": v}
                         for r, v in zip(rr, fit)]
        _log(ax, "xy")
        ax.set(title=t, xlabel="rank", ylabel="eigenvalue (normalised)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return fig, pd.DataFrame(tidy)


def _bucket_colors(buckets):
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("plasma")
    bs = sorted(buckets)
    return {b: cmap(i / max(1, len(bs) - 1) * 0.85) for i, b in enumerate(bs)}


def plot_convergence(conv: pd.DataFrame, value: str = "mean_cos", min_words: int = 1):
    """Rows: trajectories; columns: layers. Per bucket (colour; n_words in the legend), `value`
    ("mean_cos": cosine to the final checkpoint; "mean_abs_delta": mean |change| of a word's cosine since
    the previous checkpoint) against 1 + step; solid: the word alone, dashed / dotted: after a prefix."""
    conv = conv[conv.n_words >= min_words]
    if value == "mean_abs_delta":
        conv = conv[conv.step > conv.groupby("trajectory").step.transform("min")]
    names = list(dict.fromkeys(conv.trajectory))
    layers = sorted(conv.layer.unique())
    prefixes = list(dict.fromkeys(conv.prefix))
    styles = dict(zip(prefixes, ["-", "--", ":", "-."]))
    colors = _bucket_colors(conv.bucket.unique())
    lnames = _layer_names(len(layers))
    fig, axes = _grid(len(names), len(layers), 1.9, 1.8, top=0.75, sharex=True, sharey=True, left=0.9,
                      wspace=0.08, hspace=0.12)
    for i, t in enumerate(names):
        for j, l in enumerate(layers):
            ax = axes[i, j]
            g = conv[(conv.trajectory == t) & (conv.layer == l)]
            for (p, b), h in g.groupby(["prefix", "bucket"], sort=True):
                h = h.sort_values("step")
                ax.plot(_x(h.step), h[value], styles[p], color=colors[b], lw=1.1,
                        label=f"{b} tok (n={int(h.n_words.iloc[0])})" if (i, j) == (0, 0) and p == prefixes[0] else None)
            _log(ax)
            if i == 0:
                ax.set_title(f"layer {lnames[j]}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{t}\n{'cos to final' if value == 'mean_cos' else 'mean |delta cos|'}", fontsize=8)
            if i == len(names) - 1:
                ax.set_xlabel("1 + step", fontsize=8)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    from matplotlib.lines import Line2D
    handles += [Line2D([], [], color="k", ls=styles[p]) for p in prefixes]
    labels += [f"prefix: {p!r}" if p else "word alone" for p in prefixes]
    fig.legend(handles, labels, loc="upper center", ncol=min(8, len(labels)), fontsize=7)
    return fig, conv[["trajectory", "prefix", "layer", "bucket", "step", value, "n_words"]].reset_index(drop=True)


def plot_convergence_summary(summary: pd.DataFrame, min_words: int = 1):
    """Convergence deficit (mean over the checkpoints before the last of 1 - cos to final) against
    layer, one panel per trajectory, one line per bucket; solid: word alone, dashed: after a prefix."""
    s = summary[summary.n_words >= min_words]
    names = list(dict.fromkeys(s.trajectory))
    prefixes = list(dict.fromkeys(s.prefix))
    styles = dict(zip(prefixes, ["-", "--", ":", "-."]))
    colors = _bucket_colors(s.bucket.unique())
    ncol = min(3, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = _grid(nrow, ncol, 4.2, 3.0, top=0.35, sharey=True, left=0.8, wspace=0.1, hspace=0.35)
    for i, t in enumerate(names):
        ax = axes.flat[i]
        g = s[s.trajectory == t]
        for (p, b), h in g.groupby(["prefix", "bucket"], sort=True):
            h = h.sort_values("layer")
            ax.plot(h.layer, h.deficit, styles[p], marker="o", ms=3, color=colors[b],
                    label=(f"{b} tok" + ("" if not p else ", prefix")))
        n = int(g.layer.max()) + 1
        ax.set_xticks(range(n), _layer_names(n), fontsize=7)
        ax.set(title=t, xlabel="layer", ylabel="convergence deficit (mean 1 - cos to final)")
        if i == 0:
            ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return fig, s.reset_index(drop=True)


def plot_perturbation_final(pert: pd.DataFrame, short: Sequence[int] = ()):
    """At each trajectory's final checkpoint, against layer, one line per bucket (n_words in the legend;
    dotted: a bucket the corpus cannot fill to min_context_words): P1, P2 and P1 - P2 of the raw states,
    and P1 - P2 of the centred states (minus the windows' mean state)."""
    last = pert[pert.step == pert.groupby("trajectory").step.transform("max")]
    names = list(dict.fromkeys(last.trajectory))
    colors = _bucket_colors(last.bucket.unique())
    panels = [("raw", "P1", "P1: same word, other contexts"), ("raw", "P2", "P2: last word swapped (same last token)"),
              ("raw", "P1_minus_P2", "P1 - P2"), ("centred", "P1_minus_P2", "P1 - P2, centred states")]
    fig, axes = _grid(len(names), len(panels), 3.4, 2.1, top=0.35, sharex=True, left=1.0, wspace=0.3, hspace=0.15)
    for i, t in enumerate(names):
        for j, (kind, col, title) in enumerate(panels):
            ax = axes[i, j]
            g = last[(last.trajectory == t) & (last.states == kind)]
            for b, h in g.groupby("bucket"):
                h = h.sort_values("layer")
                ax.plot(h.layer, h[col], ":" if b in short else "-", marker="o", ms=3, color=colors[b],
                        label=f"{b} tok (n={int(h.n_words.iloc[0])})")
            n = int(last.layer.max()) + 1
            ax.set_xticks(range(n), _layer_names(n), fontsize=7)
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(axis="y", useOffset=False)
            if col == "P1_minus_P2":
                ax.axhline(0, color="gray", lw=0.8)
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{t}\nmean cosine", fontsize=8)
                if i == 0:
                    ax.legend(fontsize=6)
    return fig, last[["trajectory", "step", "states", "layer", "bucket", "P1", "P2", "P1_minus_P2", "diff_std",
                      "n_words"]].reset_index(drop=True)


def plot_perturbation_trajectory(pert: pd.DataFrame, short: Sequence[int] = ()):
    """P1 - P2 against 1 + step, rows: trajectories, columns: layers, one colour per bucket; solid: raw
    states, dashed: centred states."""
    from matplotlib.lines import Line2D
    names = list(dict.fromkeys(pert.trajectory))
    layers = sorted(pert.layer.unique())
    lnames = _layer_names(len(layers))
    colors = _bucket_colors(pert.bucket.unique())
    styles = {"raw": "-", "centred": "--"}
    fig, axes = _grid(len(names), len(layers), 1.9, 1.8, top=0.6, sharex=True, sharey=True, left=0.9,
                      wspace=0.08, hspace=0.12)
    for i, t in enumerate(names):
        for j, l in enumerate(layers):
            ax = axes[i, j]
            g = pert[(pert.trajectory == t) & (pert.layer == l)]
            for (kind, b), h in g.groupby(["states", "bucket"]):
                h = h.sort_values("step")
                ax.plot(_x(h.step), h.P1_minus_P2, ":" if b in short else styles[kind], lw=1.1, color=colors[b],
                        label=f"{b} tok (n={int(h.n_words.iloc[0])})" if (i, j) == (0, 0) and kind == "raw" else None)
            ax.axhline(0, color="gray", lw=0.6)
            _log(ax)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(f"layer {lnames[j]}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{t}\nP1 - P2", fontsize=8)
            if i == len(names) - 1:
                ax.set_xlabel("1 + step", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles += [Line2D([], [], color="k", ls=styles[k]) for k in styles]
    labels += ["raw states", "centred states"]
    fig.legend(handles, labels, loc="upper center", ncol=min(8, len(labels)), fontsize=7)
    return fig, pert[["trajectory", "step", "states", "layer", "bucket", "P1", "P2", "P1_minus_P2",
                      "n_words"]].reset_index(drop=True)


# ============================================================================ findings

def short_buckets(res: Results) -> dict[str, list[int]]:
    """Per analysis, the buckets the corpus cannot fill (fewer words than asked) in any trajectory."""
    b = res.buckets
    return {a: sorted({int(x) for x in g.loc[~g.enough.astype(bool), "bucket"]}) for a, g in b.groupby("analysis")}


def _fmt_curve(steps, values, fmt="{:.3g}") -> str:
    return ", ".join(f"{s}: {fmt.format(v)}" for s, v in zip(steps, values))


def findings(res: Results, threshold: float = 0.9) -> str:
    """The measured results in numbers: RankMe / alpha trajectories and phases (final-normed layer), the
    per-layer picture at the end, token convergence per bucket and its trends, P1 - P2, and the buckets
    the corpus cannot fill."""
    out = []
    curves = spectral_curves(res)
    out.append("== Spectral trajectories (final-normed last-token states) ==")
    for t, c in curves.groupby("trajectory", sort=False):
        c = c.sort_values("step")
        i_min, i_max = int(np.nanargmin(c.rankme.to_numpy())), int(np.nanargmax(c.rankme.to_numpy()))
        info = res.inputs.get(t, {})
        out.append(f"{t} ({info.get('n_seqs', '?')} windows of {info.get('seq_len', '?')} tokens; LR warmup "
                   f"{res.warmup.get(t)} steps):")
        out.append(f"  RankMe  {_fmt_curve(c.step, c.rankme, '{:.1f}')}")
        out.append(f"          min {c.rankme.iloc[i_min]:.1f} at step {c.step.iloc[i_min]}, max {c.rankme.iloc[i_max]:.1f} "
                   f"at step {c.step.iloc[i_max]}")
        out.append(f"  alpha   {_fmt_curve(c.step, c.alpha, '{:.3f}')}")
        out.append(f"  fit r2  {_fmt_curve(c.step, c.alpha_r2, '{:.2f}')}")
        if "next_token_nll" in c:
            out.append(f"  last-token NLL {_fmt_curve(c.step, c.next_token_nll, '{:.2f}')}")
        L = final_layer(res, t)
        ph = res.phases[(res.phases.trajectory == t) & (res.phases.layer == L)] if len(res.phases) else res.phases
        if len(ph) or len(res.phases):
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
        names = _layer_names(len(w))
        out.append(f"{t}: " + "; ".join(f"{n} {r.rankme:.1f}/{r.alpha:.2f}" for n, r in zip(names, w.itertuples())))
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
            names = _layer_names(n)
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
                   "for one ending in the same token; raw states, and centred = minus the windows' mean state) ==")
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

"""Memorization beside notebook 06's phases (issue 24): for every checkpoint of every toy run, the model's
log-likelihood of question-like probes (a prefix of k tokens, a continuation of m) beside the ∞-gram
log-probability of the same continuation under the run's training corpus (tg_utils.metrics.ngram).

The Tracing paper's memorization_scripts/ do this for Pythia on TriviaQA: compute_llm_likelihood.py:44-71
takes the log-probability of each answer token given "Question: ... Answer:" and sums them (its
`logprob_result = np.sum(llm_logprobs)`), per checkpoint; compute_infgrams.py:35-50 asks the infini-gram
API (index of the Pile) for P∞ of each answer token given everything before it and sums the logs, tokens
of probability 0 left out (lines 72-80). The original repository has no analysis script; the reading
(distributional memorization) is the Spearman correlation of the two over the probes, per checkpoint.
We compute the same two numbers on probes written from the toy corpus:

  seen          spans inside a window that a training batch held (the batches are replayed from the run's
                data seed, toy/train.py random_batch, and the replay checked against the data-generator
                state stored in the last checkpoint); first_seen_step = the first step that held it
  train_unseen  spans of the training split that no batch touched (same text distribution, in the
                n-gram index, never a gradient)
  held_out      spans of the validation split (in neither)

Spans holding the end-of-text token are not drawn. The index is the run's training split encoded as
notebook 01 encodes it (toy/runs.py:86: articles joined by EOS). Hub trajectories (the paper profile's
Pythia) are skipped: the Pile's index is reached only through the public infini-gram API, with no network
on the run machine (`infinigram_api_hook` names what would be needed).

Cost (one CPU thread, measured): the default toy corpus' training split is 647k tokens under the 8192-token
tokenizer: encoding 1.1-1.8 s, suffix array 1.1-2.3 s (10 MB kept, 45 MB peak during the build; once per
tokenizer), 1000 counts of 16-grams 0.5 s; the ∞-gram of 600 probes (16 + 8 tokens) 1.0 s; the model's
log-likelihoods ~1.7 s per checkpoint (load included), ~17 s per 160-step run of 10 checkpoints, so ~1.5
min for the five default runs. Smoke profile (1.04M tokens under its 1024-token tokenizer, 36 probes): the
two memorization cells add 5 s to notebook 06's 34 s.

    memo = run_memorization(P, trajs)        # tables: probes, memorization (tidy, one row per probe and
                                             # checkpoint), memorization_summary, memorization_cost
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data import words as W
from ..data.corpus import load_corpus
from ..metrics.ngram import SuffixIndex, continuation_logprob_original
from ..metrics.stats import spearman
from ..tables import save_table
from ..toy.checkpoints import step_path
from ..toy.train import encode_texts
from .nb06_inputs import Trajectory
from .nb06_measures import load_checkpoint

__all__ = ["KINDS", "Memorization", "describe_memorization", "Probes", "infinigram_api_hook", "model_logprobs", "ngram_scores",
           "run_memorization", "summarize", "training_windows", "write_probes"]

NB = "06_training_trajectory_phases"
KINDS = ("seen", "train_unseen", "held_out")
DATA_SEED_OFFSET = 1_000_003          # toy/train.py train_run: torch.Generator().manual_seed(seed + 1_000_003)
SCORE_COLUMNS = ["trajectory", "step", "probe_id", "kind", "seen_by_step", "model_logp", "ngram_logp",
                 "ngram_suffix_len", "ngram_suffix_mean", "ngram_zero_tokens"]


@dataclass(frozen=True)
class Probes:
    """table: probe_id, kind, split, start (in the split's token stream), first_seen_step and
    times_seen (seen only; else -1 and 0), text; ids: (n, k + m) token ids; k: prefix length."""
    table: pd.DataFrame
    ids: np.ndarray
    k: int


@dataclass(frozen=True)
class Memorization:
    probes: pd.DataFrame
    scores: pd.DataFrame
    summary: pd.DataFrame
    cost: pd.DataFrame
    skipped: tuple = ()


def infinigram_api_hook(*_, **__):
    """Pythia at paper scale: the ∞-gram probabilities of TriviaQA answers come from the public
    infini-gram index of the Pile (api.infini-gram.io, query_type "infgram_prob", as
    compute_infgrams.py:37-50); this project runs offline, so it is not implemented."""
    raise NotImplementedError("the Pile's infini-gram index is reached only through its public API (network); "
                              "notebook 06 measures memorization on the toy runs only")


def training_windows(run_dir, n_train: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(starts, steps, context) of every training window of a toy run (window = context + 1 tokens of the
    training stream from start), replayed from the run's data seed as toy/train.py draws them (one
    random_batch per micro-batch); refused if the replay does not reach the data-generator state stored
    in the run's last checkpoint."""
    cfg = json.loads((run_dir / "config.json").read_text())
    tc, ctx = cfg["train_config"], int(cfg["model_config"]["context"])
    gen = torch.Generator().manual_seed(int(tc["seed"]) + DATA_SEED_OFFSET)
    starts, steps = [], []
    for step in range(int(tc["max_steps"])):
        for _ in range(int(tc.get("grad_accum", 1))):
            starts.append(torch.randint(n_train - ctx, (int(tc["batch_size"]),), generator=gen).numpy())
            steps.append(np.full(int(tc["batch_size"]), step + 1, np.int64))     # seen by the update to step+1
    last = step_path(run_dir, int(tc["max_steps"]))
    if last.exists():
        stored = torch.load(last, map_location="cpu", weights_only=True).get("data_rng_state")
        if stored is not None and not torch.equal(stored, gen.get_state()):
            raise ValueError(f"{run_dir}: replaying the training batches does not reach the data-generator state "
                             "of the last checkpoint (the run was trained differently); retrain it with notebook 01")
    return np.concatenate(starts).astype(np.int64), np.concatenate(steps), ctx


def _no_eos(stream, a, L, eos):
    if eos is None:
        return np.ones(len(a), bool)
    bad = np.r_[0, np.cumsum(stream == eos)]
    return bad[a + L] - bad[a] == 0


def write_probes(train, val, windows, k: int, m: int, n: int, seed: int, eos: int | None = None,
                 decode=None) -> Probes:
    """n probes of each kind (fewer where the stream cannot give them), seeded: seen (a random window,
    a random offset inside it), train_unseen (no token inside any window), held_out (the validation
    stream). The spans of one kind are distinct starts."""
    starts, steps, ctx = windows
    L = k + m
    if L > ctx + 1:
        raise ValueError(f"probes of {L} tokens (memo_prefix_tokens + memo_continuation_tokens) do not fit the "
                         f"training windows of {ctx + 1} tokens; lower them")
    rng = np.random.default_rng(seed)
    train, val = np.asarray(train, np.int64), np.asarray(val, np.int64)
    cov = np.zeros(len(train) + 1, np.int64)
    np.add.at(cov, starts, 1)
    np.add.at(cov, np.minimum(starts + ctx + 1, len(train)), -1)
    touched = np.r_[0, np.cumsum(np.cumsum(cov)[:-1] > 0)]
    w = rng.integers(0, len(starts), 20 * n)
    cands = {"seen": starts[w] + rng.integers(0, ctx + 2 - L, 20 * n),
             "train_unseen": rng.integers(0, len(train) - L + 1, 40 * n),
             "held_out": rng.integers(0, max(len(val) - L + 1, 1), 20 * n)}
    rows, ids = [], []
    for kind in KINDS:
        stream = val if kind == "held_out" else train
        a = cands[kind]
        ok = _no_eos(stream, a, L, eos) & (a + L <= len(stream))
        if kind == "train_unseen":
            ok &= touched[np.minimum(a + L, len(train))] - touched[a] == 0
        a = pd.unique(a[ok])[:n]
        for s in a:
            hold = (starts <= s) & (s + L <= starts + ctx + 1) if kind == "seen" else np.zeros(0, bool)
            span = stream[s:s + L]
            rows.append({"probe_id": len(rows), "kind": kind, "split": "validation" if kind == "held_out" else "train",
                         "start": int(s), "first_seen_step": int(steps[hold].min()) if hold.any() else -1,
                         "times_seen": int(hold.sum()),
                         "text": "" if decode is None else f"{decode(span[:k].tolist())} | {decode(span[k:].tolist())}"})
            ids.append(span)
    return Probes(pd.DataFrame(rows), np.asarray(ids, np.int64).reshape(len(ids), L), k)


def ngram_scores(index: SuffixIndex, probes: Probes) -> pd.DataFrame:
    """Per probe: ngram_logp (the continuation's ∞-gram log-probability, zero-probability tokens left out
    as compute_infgrams.py:72-80; NaN if every token is 0), ngram_suffix_len (the suffix length used for
    the continuation's first token: k = the whole prefix occurs), ngram_suffix_mean (over its tokens),
    ngram_zero_tokens."""
    rows = []
    for pid, x in zip(probes.table.probe_id, probes.ids):
        lp, lens = index.continuation_logprob(x[:probes.k].tolist(), x[probes.k:].tolist())
        rows.append({"probe_id": int(pid), "ngram_logp": continuation_logprob_original(lp),
                     "ngram_suffix_len": int(lens[0]), "ngram_suffix_mean": float(lens.mean()),
                     "ngram_zero_tokens": int(np.sum(~np.isfinite(lp)))})
    return pd.DataFrame(rows)


@torch.no_grad()
def model_logprobs(model, ids: np.ndarray, k: int, batch_tokens: int = 2048, device="cpu") -> np.ndarray:
    """Sum over the continuation (positions k..) of log P_model(token | all before it), per row
    (compute_llm_likelihood.py:44-71 and its sum); float64."""
    n, L = ids.shape
    out = np.zeros(n)
    bs = max(1, batch_tokens // L)
    for i in range(0, n, bs):
        x = torch.as_tensor(ids[i:i + bs], device=device)
        o = model(x)
        lg = getattr(o, "logits", o)[:, k - 1:-1].double()                     # (b, m, V): the continuation's
        tok = lg.gather(-1, x[:, k:, None]).squeeze(-1) - torch.logsumexp(lg, -1)
        out[i:i + bs] = tok.sum(-1).cpu().numpy()
    return out


def _se(a, b) -> float:
    """Standard error of mean(a) - mean(b) for independent samples (Welch); NaN with < 2 in either."""
    if b is None or len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))


def summarize(scores: pd.DataFrame, m: int) -> pd.DataFrame:
    """Per (trajectory, step, group): n_probes, model_logp_token and ngram_logp_token (means of the sums
    over the continuation, divided by m), spearman (model vs ∞-gram log-probability over the probes:
    distributional memorization), gap_held_out and gap_train_unseen (the group's model_logp_token minus
    that of held_out / train_unseen) with their standard errors (_se: Welch). Groups: "seen" = the seen probes that a batch had held by that step
    (seen_by_step), "not_yet_seen" = the seen probes whose batch comes later (a control: same selection,
    no gradient yet), train_unseen, held_out, and "all" (every probe)."""
    rows = []
    for (t, s), g in scores.groupby(["trajectory", "step"], sort=False):
        ref = {kd: h.model_logp.to_numpy() / m for kd, h in g.groupby("kind")}
        means = {kd: v.mean() for kd, v in ref.items()}
        seen = g.kind == "seen"
        groups = [("seen", g[seen & g.seen_by_step]), ("not_yet_seen", g[seen & ~g.seen_by_step]),
                  ("train_unseen", g[g.kind == "train_unseen"]), ("held_out", g[g.kind == "held_out"]), ("all", g)]
        for kind, h in groups:
            if not len(h):
                continue
            v = h.model_logp.to_numpy() / m
            mean = v.mean()
            rows.append({"trajectory": t, "step": int(s), "kind": kind, "n_probes": len(h),
                         "model_logp_token": mean, "ngram_logp_token": h.ngram_logp.mean() / m,
                         "spearman": spearman(h.model_logp, h.ngram_logp),
                         "gap_held_out": mean - means.get("held_out", np.nan),
                         "gap_held_out_se": _se(v, ref.get("held_out")),
                         "gap_train_unseen": mean - means.get("train_unseen", np.nan),
                         "gap_train_unseen_se": _se(v, ref.get("train_unseen"))})
    return pd.DataFrame(rows)


def run_memorization(P, trajs: Sequence[Trajectory], corpus=None, progress: bool = True,
                     save: bool = True) -> Memorization:
    """Probes, ∞-gram scores (one index per tokenizer) and the model's log-likelihood of every probe at
    every checkpoint of every toy trajectory; hub trajectories skipped (listed in `skipped`). Saves the
    tables probes, memorization, memorization_summary and memorization_cost under P.out_dir."""
    toy = [t for t in trajs if t.run_dir is not None]
    skipped = tuple(t.name for t in trajs if t.run_dir is None)
    corpus = corpus or load_corpus(P.corpus, P.corpus_path)
    k, m = P.memo_prefix_tokens, P.memo_continuation_tokens
    indexes, probes_all, scores, cost = {}, [], [], []
    bar = tqdm(total=sum(len(t.checkpoints) for t in toy), desc="memorization", unit="ckpt", disable=not progress)
    for traj in toy:
        lm = load_checkpoint(traj.checkpoints[0], P)
        tok = lm.tokenizer
        key = W.tokenizer_hash(tok)
        fresh = key not in indexes
        if fresh:
            t0 = time.perf_counter()
            train = encode_texts(tok, corpus.texts("train"))
            val = encode_texts(tok, corpus.texts("validation"))
            t1 = time.perf_counter()
            index = SuffixIndex.build(train)
            indexes[key] = (index, val, t1 - t0, time.perf_counter() - t1)
        index, val, enc_s, build_s = indexes[key]
        pr = write_probes(index.tokens, val, training_windows(traj.run_dir, len(index.tokens)), k, m,
                          P.memo_probes, P.seed, tok.eos_token_id, tok.decode)
        t0 = time.perf_counter()
        ng = ngram_scores(index, pr)
        ngram_s = time.perf_counter() - t0
        base = pr.table.merge(ng, on="probe_id")
        probes_all.append(base.assign(trajectory=traj.name))
        t0 = time.perf_counter()
        for i, ck in enumerate(traj.checkpoints):
            bar.set_postfix_str(ck.label)
            lm = lm if i == 0 else load_checkpoint(ck, P)
            lp = model_logprobs(lm.model, pr.ids, k, P.batch_tokens, P.device)
            seen_by = (base.kind == "seen") & (base.first_seen_step <= ck.step)
            scores.append(base.assign(trajectory=traj.name, step=ck.step, model_logp=lp,
                                      seen_by_step=seen_by)[SCORE_COLUMNS])
            bar.update(1)
        cost.append({"trajectory": traj.name, "index_built": fresh, "train_tokens": len(index.tokens),
                     "encode_s": enc_s, "index_build_s": build_s, "index_mb": index.nbytes / 2 ** 20, "n_probes": len(pr.ids),
                     "ngram_s": ngram_s, "model_s": time.perf_counter() - t0})
    bar.close()
    scores = pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(columns=SCORE_COLUMNS)
    memo = Memorization(pd.concat(probes_all, ignore_index=True) if probes_all else pd.DataFrame(), scores,
                        summarize(scores, m) if len(scores) else pd.DataFrame(), pd.DataFrame(cost), skipped)
    if save:
        for name, t in (("memorization_probes", memo.probes), ("memorization", memo.scores),
                        ("memorization_summary", memo.summary), ("memorization_cost", memo.cost)):
            save_table(t, NB, name, P.out_dir)
    return memo


def _phase_at(phases: pd.DataFrame, step: int) -> str:
    for r in phases.itertuples():
        if r.start_step <= step <= r.end_step:
            return r.phase
    return "no phase"


def describe_memorization(memo: Memorization, res=None) -> str:
    """Per toy run, from the summary: the seen - train_unseen and seen - held_out gaps (nats per
    continuation token, ± standard error) at the last checkpoint, where the first peaks (with the phase of
    the final-normed layer there when `res`, notebook 06's Results, is given), the same gap of the
    not-yet-seen probes at the first checkpoint (how much the probe selection alone gives), and the Spearman
    correlation of model and ∞-gram log-probabilities over all probes and over the held-out ones; then the
    index cost and the skipped trajectories."""
    lines = []
    s = memo.summary
    for t, g in s.groupby("trajectory", sort=False):
        seen, allp, held = (g[g.kind == k].sort_values("step") for k in ("seen", "all", "held_out"))
        later = g[g.kind == "not_yet_seen"].sort_values("step")
        if not len(seen):
            continue
        pk = seen.loc[seen.gap_train_unseen.idxmax()]
        last, base = seen.iloc[-1], later.iloc[0] if len(later) else None
        where = ""
        if res is not None and len(getattr(res, "phases", [])):
            ph = res.phases[res.phases.trajectory == t]
            ph = ph[ph.layer == ph.layer.max()]
            where = f", {_phase_at(ph, int(pk.step))}"
        lines.append(
            f"{t}: seen - train_unseen {last.gap_train_unseen:+.3f} ± {last.gap_train_unseen_se:.3f} nats/token at step "
            f"{int(last.step)} (n seen = {int(last.n_probes)}; peak {pk.gap_train_unseen:+.3f} ± "
            f"{pk.gap_train_unseen_se:.3f} at step {int(pk.step)}{where}); the selection baseline, not-yet-seen - "
            f"train_unseen at step {int(base.step) if base is not None else -1}: "
            f"{base.gap_train_unseen if base is not None else float('nan'):+.3f} ± "
            f"{base.gap_train_unseen_se if base is not None else float('nan'):.3f}; seen - held_out "
            f"{last.gap_held_out:+.3f} ± {last.gap_held_out_se:.3f}; Spearman(model, ∞-gram) all "
            f"{allp.spearman.iloc[0]:+.2f} -> {allp.spearman.iloc[-1]:+.2f}, held-out {held.spearman.iloc[0]:+.2f} -> "
            f"{held.spearman.iloc[-1]:+.2f} (n = {int(allp.n_probes.iloc[-1])})")
    for r in memo.cost[memo.cost.index_built.astype(bool)].itertuples() if len(memo.cost) else ():
        lines.append(f"{r.trajectory}: index of {r.train_tokens} training tokens built in {r.index_build_s:.1f} s "
                     f"({r.index_mb:.0f} MB; encoding {r.encode_s:.1f} s), ∞-gram of {r.n_probes} probes "
                     f"{r.ngram_s:.1f} s, model log-likelihoods {r.model_s:.1f} s")
    if memo.skipped:
        lines.append(f"skipped (hub models: the infini-gram API is not reachable offline): {', '.join(memo.skipped)}")
    return "\n".join(lines)

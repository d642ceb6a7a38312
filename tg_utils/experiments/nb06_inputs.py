"""What notebook 06 reads: the trajectories (every checkpoint of a toy run of notebook 01, or a hub model
at a list of revisions) and the three prompt sets built once per tokenizer (spectrum windows, word
prompts per prefix, multi-token contexts)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..data import contexts as C
from ..data import words as W
from ..data.sequences import SequenceSet, document_sequences, sequence_windows, split_documents
from ..models.spec import ModelSpec
from ..toy.checkpoints import HOW_TO_TRAIN
from ..toy.train import encode_texts


# ============================================================================ what is read

@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: `spec` as load_model takes it (a toy step or a hub id with its revision); `step`
    its training step."""
    step: int
    spec: ModelSpec

    @property
    def revision(self) -> str | None:
        """The hub revision (None for toy checkpoints)."""
        return self.spec.revision

    @property
    def label(self) -> str:
        """The spec as a notebook names it: toy:<run>@<step> or <hub id>@<revision>."""
        return str(self.spec)


@dataclass(frozen=True)
class Trajectory:
    """The checkpoints of one training run, ascending by step.

    name: the run (toy) or hub id; model: the `model` column of the long tables ("toy:<run>" or the
    hub id); warmup_until: the learning-rate warmup length (steps) handed to mark_phases; run_dir: the
    toy run's folder (training log), None for hub models; spectra: False for a trajectory read for the
    word analyses only (the paper profile's Pythia-1b at Token Representation Evolution's revisions)."""
    name: str
    model: str
    checkpoints: list[Checkpoint]
    warmup_until: float | None = None
    run_dir: Path | None = None
    spectra: bool = True

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
    run_spec = ModelSpec.parse(f"toy:{run}")
    rd = run_spec.run_dir(out_dir)
    steps = run_spec.steps(out_dir)
    if len(steps) < 2:
        raise FileNotFoundError(f"toy run {run!r} has {len(steps)} checkpoint(s) in {rd}; a trajectory needs "
                                f"at least two; {HOW_TO_TRAIN}")
    warmup = None
    cfg = rd / "config.json"
    if cfg.exists():
        warmup = json.loads(cfg.read_text())["train_config"].get("warmup_steps")
    return Trajectory(run, run_spec.base, [Checkpoint(s, ModelSpec.parse(f"{run_spec.base}@{s}")) for s in steps],
                      warmup_until=warmup, run_dir=rd)


def hub_trajectory(model: str, revisions: Sequence[str], warmup_until: float | None = None,
                   spectra: bool = True, name: str | None = None) -> Trajectory:
    """A hub model at a list of revisions (e.g. Pythia's "step0" ... "step143000"), sorted by step;
    spectra=False: read for the word analyses only (named `name`, default the hub id)."""
    pts = sorted(((revision_step(r), r) for r in revisions), key=lambda x: x[0])
    steps = [s for s, _ in pts]
    if len(set(steps)) != len(steps):
        raise ValueError(f"revisions of {model} name the same step twice: {list(revisions)}")
    if len(pts) < 2:
        raise ValueError(f"a trajectory of {model} needs at least two revisions, got {list(revisions)}")
    return Trajectory(name or model, model, [Checkpoint(s, ModelSpec.parse(model, r)) for s, r in pts],
                      warmup_until=warmup_until, spectra=spectra)


def trajectories(P) -> list[Trajectory]:
    """The trajectories of the parameters: every toy run in P.toy_runs, then every hub model in P.models
    at every revision in P.revisions (warmup P.model_warmup_steps), then every hub model in
    P.word_models at every revision in P.word_revisions, for the word analyses only (named
    "<id> (words)" when the same id is also in P.models)."""
    out = [toy_trajectory(r, P.out_dir) for r in P.toy_runs]
    out += [hub_trajectory(m, P.revisions, P.model_warmup_steps) for m in P.models]
    out += [hub_trajectory(m, P.word_revisions, spectra=False, name=f"{m} (words)" if m in P.models else m)
            for m in getattr(P, "word_models", [])]
    return out


def checkpoint_table(trajs: Sequence[Trajectory]) -> pd.DataFrame:
    """One row per checkpoint: trajectory, step, spec (as a notebook names it), revision, warmup_until."""
    return pd.DataFrame([{"trajectory": t.name, "step": c.step, "spec": c.label, "revision": c.revision or "",
                          "warmup_until": t.warmup_until} for t in trajs for c in t.checkpoints])


# ============================================================================ prompt sets

@dataclass(frozen=True)
class Inputs:
    """The prompt sets of one tokenizer: spectra sequences (documents or windows), word prompts per
    prefix, contexts; bucket_counts: words per bucket before the min_bucket_words cut (sampling)."""
    tokenizer_hash: str
    seqs: SequenceSet
    word_buckets: dict[str, int]
    words: dict[str, W.WordPrompts]          # prefix ("" = the word alone) -> prompts
    contexts: C.ContextSet | None
    bucket_counts: dict[int, int] | None = None


def read_words(P, corpus) -> list[str]:
    """The frequent-word list: P.words_path, or (None) the frequent words of the corpus' train split."""
    if P.words_path:
        return W.read_word_list(P.words_path)
    return W.frequent_words(corpus.texts("train"), n=None, min_count=3)


def read_context_candidates(P, corpus) -> dict:
    """Context candidates: P.contexts_path, or (None) built from every split of the corpus."""
    if P.contexts_path:
        return C.load_contexts(P.contexts_path)
    return C.context_candidates([t for s in corpus.splits for t in corpus.texts(s)],
                                min_contexts=P.min_contexts, seed=P.seed)


def spectra_sequences(P, tok, corpus, bos: int | None) -> SequenceSet:
    """The spectra's sequences under a tokenizer: P.spectra_sequences "documents" (the Tracing paper:
    every non-empty line of the split on its own, its first <= seq_len tokens, those of <= min_doc_tokens
    tokens dropped, at most max_docs of them, seeded) or "windows" (ours: n_seqs windows of seq_len
    tokens over the split's articles joined by EOS)."""
    if P.spectra_sequences == "windows":
        return sequence_windows(encode_texts(tok, corpus.texts(P.spectra_split)), P.seq_len, P.n_seqs, bos)
    docs = W.word_token_ids(split_documents(corpus.texts(P.spectra_split)), tok, prefix="")   # no special tokens
    return document_sequences(docs, P.seq_len, P.min_doc_tokens, bos, P.max_docs, P.seed)


def word_selection(P, tok, word_list: Sequence[str]) -> tuple[dict[str, int], dict[int, int]]:
    """({word: bucket}, {bucket: words before the min_bucket_words cut}) under a tokenizer. P.word_sampling
    "sample" (Token Representation Evolution: a seeded sample of n_sampled_words words of the list,
    bucketed by token count, buckets of < min_bucket_words words dropped; token_convergence_analysis.py:
    44-52, 216) or "top" (ours: the first words_per_bucket words of each bucket); P.word_form "bare"
    (the paper's `tok(word)`, line 78) or "spaced" (" word") for the bucketing."""
    form = "" if P.word_form == "bare" else " "
    if P.word_sampling == "top":
        sel = W.select_by_bucket(word_list, tok, P.word_buckets, P.words_per_bucket, prefix=form)
        return sel, dict(pd.Series(sel, dtype=int).value_counts().sort_index())
    sel = W.select_by_bucket(W.sample_words(word_list, P.n_sampled_words, P.seed), tok, P.word_buckets, None,
                             prefix=form)
    counts = dict(pd.Series(sel, dtype=int).value_counts().sort_index())
    return W.buckets_with_min_words(sel, P.min_bucket_words), counts


def build_inputs(P, lm, corpus, word_list: Sequence[str], candidates: dict | None, spectra: bool = True) -> Inputs:
    """The three prompt sets under `lm`'s tokenizer (BOS in front where the model adds one); spectra=False:
    no spectra sequences (an empty set)."""
    tok, desc = lm.tokenizer, lm.desc
    bos = desc.bos_token_id if desc.adds_bos else None
    seqs = spectra_sequences(P, tok, corpus, bos) if spectra else SequenceSet([], np.zeros(0, np.int64),
                                                                               np.zeros(0, np.int64), 0.0, 0, "none")
    longest = max((len(x) for x in seqs.ids), default=0)
    if desc.context and longest > desc.context:
        raise ValueError(f"{lm.spec}: sequences of {longest} positions exceed its context of "
                         f"{desc.context}; lower seq_len")
    buckets, counts = word_selection(P, tok, word_list)
    form = "" if P.word_form == "bare" else " "
    words = {p: W.word_prompts(list(buckets), tok, prefix=p or None, word_prefix=" " if p else form,
                               add_bos=desc.adds_bos) for p in P.word_prefixes}
    cs = None
    if candidates is not None and P.context_buckets:
        cs = C.build_contexts(candidates, tok, buckets=P.context_buckets, min_contexts=P.min_contexts,
                              min_words=P.min_context_words, max_words=P.context_words_per_bucket,
                              add_bos=desc.adds_bos, seed=P.seed, warn=False,
                              n_swaps=P.n_swaps if P.perturbation == "first_base" else 1)
        if len(cs.table) == 0:
            cs = None
    return Inputs(W.tokenizer_hash(tok), seqs, buckets, words, cs, counts)


def bucket_report(inputs: Inputs, trajectory: str, P) -> pd.DataFrame:
    """Per bucket: words for token convergence (word_sampling "top": of words_per_bucket asked; "sample":
    the sample's words in the bucket, of the min_bucket_words a bucket needs to be kept) and words /
    contexts of the perturbation set (of min_context_words needed); `enough` False where it falls short."""
    conv = pd.Series(inputs.bucket_counts if inputs.bucket_counts is not None else
                     pd.Series(inputs.word_buckets, dtype=int).value_counts().to_dict())
    wanted = P.min_bucket_words if getattr(P, "word_sampling", "top") == "sample" else P.words_per_bucket
    rows = [{"trajectory": trajectory, "analysis": "convergence", "bucket": b, "n_words": int(conv.get(b, 0)),
             "n_contexts": 0, "wanted": wanted, "enough": int(conv.get(b, 0)) >= wanted,
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

"""What notebook 06 reads: the trajectories (every checkpoint of a toy run of notebook 01, or a hub model
at a list of revisions) and the three prompt sets built once per tokenizer (spectrum windows, word
prompts per prefix, multi-token contexts)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..data import contexts as C
from ..data import words as W
from ..data.sequences import SequenceSet, sequence_windows
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


def hub_trajectory(model: str, revisions: Sequence[str], warmup_until: float | None = None) -> Trajectory:
    """A hub model at a list of revisions (e.g. Pythia's "step0" ... "step143000"), sorted by step."""
    pts = sorted(((revision_step(r), r) for r in revisions), key=lambda x: x[0])
    steps = [s for s, _ in pts]
    if len(set(steps)) != len(steps):
        raise ValueError(f"revisions of {model} name the same step twice: {list(revisions)}")
    if len(pts) < 2:
        raise ValueError(f"a trajectory of {model} needs at least two revisions, got {list(revisions)}")
    return Trajectory(model, model, [Checkpoint(s, ModelSpec.parse(model, r)) for s, r in pts],
                      warmup_until=warmup_until)


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


# ============================================================================ prompt sets

@dataclass(frozen=True)
class Inputs:
    """The prompt sets of one tokenizer: spectra windows, word prompts per prefix, contexts."""
    tokenizer_hash: str
    seqs: SequenceSet
    word_buckets: dict[str, int]
    words: dict[str, W.WordPrompts]          # prefix ("" = the word alone) -> prompts
    contexts: C.ContextSet | None


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


def build_inputs(P, lm, corpus, word_list: Sequence[str], candidates: dict | None) -> Inputs:
    """The three prompt sets under `lm`'s tokenizer (BOS in front where the model adds one)."""
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
        cs = C.build_contexts(candidates, tok, buckets=P.context_buckets, min_contexts=P.min_contexts,
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

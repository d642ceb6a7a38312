"""The toy-model runs of notebook 01, built from its parameters: one tokenizer for all runs, the
four presets trained on the same data with the same budget and seed, plus LLaMA-PostLN without
warmup; the runs named in seed_runs again with each further seed of `seeds`. Later notebooks reach a
run as the model spec `toy:<run>[@<step>]` (the first seed's folder <run>; another seed k's run is
`toy:<run>-seed<k>`); its files are in `run_dir(out_dir, folder)` (tg_utils.toy.checkpoints)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.corpus import Corpus, load_corpus
from ..paths import OutputDirs
from .checkpoints import run_dir
from .model import ToyConfig, preset
from .tokenizer import load_tokenizer, train_bpe_tokenizer
from .train import TrainConfig, encode_texts, train_run

NO_WARMUP = "llama-postln-nowarmup"   # LLaMA-PostLN trained with warmup_steps = 0


@dataclass(frozen=True)
class ToyData:
    """The data of the runs: the corpus, the shared tokenizer and the token stream of each split."""
    corpus: Corpus
    tokenizer: object
    ids: dict[str, np.ndarray]        # split -> token stream (articles joined by eos)


def run_names(P) -> list[str]:
    """The runs of the parameters: the presets, then the no-warmup run if asked for."""
    return list(P.presets) + ([NO_WARMUP] if P.no_warmup_run else [])


@dataclass(frozen=True)
class RunJob:
    """One training run: the run (preset or NO_WARMUP), its seed, and its folder under <out>/checkpoints/
    (<run> for the first seed, whose files later notebooks read; <run>-seed<k> for another seed k)."""
    run: str
    seed: int
    folder: str


def seed_folder(run: str, seed: int, first_seed: int) -> str:
    """The run folder of `run` trained with `seed`: <run> for the first seed, else <run>-seed<seed>."""
    return run if seed == first_seed else f"{run}-seed{seed}"


def run_jobs(P) -> list[RunJob]:
    """Every run of the parameters with the first seed (in run_names order), then the runs of seed_runs
    with each further seed (seed by seed)."""
    first = P.seeds[0]
    jobs = [RunJob(r, first, r) for r in run_names(P)]
    jobs += [RunJob(r, s, seed_folder(r, s, first)) for s in P.seeds[1:] for r in run_names(P) if r in P.seed_runs]
    return jobs


def model_config(P, run: str, vocab_size: int) -> ToyConfig:
    """The model of a run: its preset (llama-postln for the no-warmup run) at the parameters' sizes."""
    name = "llama-postln" if run == NO_WARMUP else run
    return preset(name, n_layer=P.n_layer, d_model=P.d_model, n_head=P.n_head, d_ff=P.d_ff,
                  context=P.context, vocab_size=vocab_size, dropout=P.dropout, tie_embeddings=P.tie_embeddings)


def train_config(P, run: str, seed: int | None = None) -> TrainConfig:
    """The training of a run: the shared budget, its own peak lr (lr_by_run), no warmup for NO_WARMUP;
    `seed` (default P.seed) seeds the model's initialisation and the data order."""
    return TrainConfig(max_steps=P.max_steps, batch_size=P.batch_size, grad_accum=P.grad_accum,
                       lr=P.lr_by_run.get(run, P.lr),
                       warmup_steps=0 if run == NO_WARMUP else P.warmup_steps, weight_decay=P.weight_decay,
                       grad_clip=P.grad_clip, eval_every=P.eval_every, eval_tokens=P.eval_tokens,
                       seed=P.seed if seed is None else seed, save_every=P.save_every,
                       trajectory_optimizer=False)   # resume uses last.pt; keeps checkpoints 3x smaller


def prepare_data(P) -> ToyData:
    """The corpus, the shared BPE tokenizer (trained once on the train split and cached under
    <out>/checkpoints/, keyed by corpus and vocabulary size) and the token streams."""
    corpus = load_corpus(P.corpus, P.corpus_path)
    train_texts = corpus.texts("train")
    key = hashlib.sha1("\0".join(train_texts).encode()).hexdigest()[:10]
    path = OutputDirs.at(P.out_dir).checkpoints / f"tokenizer-{key}-v{P.vocab_size}.json"
    tok = load_tokenizer(path) if path.exists() else train_bpe_tokenizer(train_texts, P.vocab_size, path)
    ids = {s: encode_texts(tok, corpus.texts(s)) for s in ("train", "validation", "test")}
    return ToyData(corpus, tok, ids)


def train_all(P, data: ToyData, progress: bool = True) -> pd.DataFrame:
    """Train (or resume, or skip if finished) every run of run_jobs on P.device (bfloat16 autocast when
    P.model_dtype is bfloat16); returns the tidy logs of all runs (columns run and seed added)."""
    logs = []
    vocab = len(data.tokenizer)
    amp = None if P.model_dtype == "float32" else P.model_dtype
    for job in run_jobs(P):
        log = train_run(run_dir(P.out_dir, job.folder), model_config(P, job.run, vocab),
                        train_config(P, job.run, job.seed), data.ids["train"], data.ids["validation"],
                        data.ids["test"], tokenizer=data.tokenizer, progress=progress, desc=job.folder,
                        device=P.device, amp_dtype=amp)
        logs.append(log.assign(run=job.run, seed=job.seed))
    return pd.concat(logs, ignore_index=True)

"""The toy-model runs of notebook 01, built from its parameters: one tokenizer for all runs, the
four presets trained on the same data with the same budget and seed, plus LLaMA-PostLN without
warmup. Later notebooks reach a run as the model spec `toy:<run>[@<step>]`."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .corpus import Corpus, load_corpus
from .paths import OutputDirs
from .tokenizer import load_tokenizer, train_bpe_tokenizer
from .toy_model import ToyConfig, preset
from .train import TrainConfig, encode_texts, read_summary, train_run

NO_WARMUP = "llama-postln-nowarmup"   # LLaMA-PostLN trained with warmup_steps = 0


@dataclass
class ToyData:
    corpus: Corpus
    tokenizer: object
    ids: dict[str, np.ndarray]        # split -> token stream (articles joined by eos)


def run_names(P) -> list[str]:
    return list(P.presets) + ([NO_WARMUP] if P.no_warmup_run else [])


def model_config(P, run: str, vocab_size: int) -> ToyConfig:
    name = "llama-postln" if run == NO_WARMUP else run
    return preset(name, n_layer=P.n_layer, d_model=P.d_model, n_head=P.n_head, d_ff=P.d_ff,
                  context=P.context, vocab_size=vocab_size, dropout=P.dropout)


def train_config(P, run: str) -> TrainConfig:
    return TrainConfig(max_steps=P.max_steps, batch_size=P.batch_size, grad_accum=P.grad_accum,
                       lr=P.lr_by_run.get(run, P.lr),
                       warmup_steps=0 if run == NO_WARMUP else P.warmup_steps, weight_decay=P.weight_decay,
                       grad_clip=P.grad_clip, eval_every=P.eval_every, eval_tokens=P.eval_tokens,
                       seed=P.seed, save_every=P.save_every,
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


def run_dir(out_dir, run: str) -> Path:
    return OutputDirs.at(out_dir).checkpoints / run


def train_all(P, data: ToyData, progress: bool = True) -> pd.DataFrame:
    """Train (or resume, or skip if finished) every run; returns the tidy logs of all runs."""
    logs = []
    vocab = len(data.tokenizer)
    for run in run_names(P):
        log = train_run(run_dir(P.out_dir, run), model_config(P, run, vocab), train_config(P, run),
                        data.ids["train"], data.ids["validation"], data.ids["test"],
                        tokenizer=data.tokenizer, progress=progress, desc=run)
        logs.append(log.assign(run=run))
    return pd.concat(logs, ignore_index=True)


def summary_table(P) -> pd.DataFrame:
    """Final validation / test perplexity of every run with the unigram baseline beside it."""
    rows = []
    for run in run_names(P):
        s = read_summary(run_dir(P.out_dir, run))
        rows.append({"run": run, "params": s["n_params"], "params_non_embedding": s["n_params_non_embedding"],
                     "steps": s["step"], "tokens_seen": s["tokens_seen"], "train_time_s": round(s["elapsed_s"], 1),
                     "val_ppl": s["val_ppl"], "test_ppl": s["test_ppl"],
                     "unigram_val_ppl": s["unigram_val_ppl"], "unigram_test_ppl": s["unigram_test_ppl"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- figures (each returns fig, tidy data)

def plot_training_curves(logs: pd.DataFrame, smooth: int = 20):
    """Training loss (running mean over `smooth` steps) and validation loss / perplexity per run."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    rows = []
    for run, g in logs.groupby("run", sort=False):
        tr = g[g.step > 0]
        sm = tr.train_loss.rolling(smooth, min_periods=1).mean()
        axes[0].plot(tr.step, sm, label=run)
        ev = g.dropna(subset=["val_loss"])
        axes[1].plot(ev.step, ev.val_loss, marker=".", label=run)
        axes[2].plot(ev.step, ev.val_ppl, marker=".", label=run)
        rows += [{"run": run, "step": s, "metric": "train_loss_smoothed", "value": v} for s, v in zip(tr.step, sm)]
        rows += [{"run": run, "step": s, "metric": m, "value": v}
                 for m in ("val_loss", "val_ppl") for s, v in zip(ev.step, ev[m])]
    axes[0].set(title=f"training loss (mean of {smooth} steps)", xlabel="step", ylabel="cross-entropy (nats)")
    axes[1].set(title="validation loss", xlabel="step", ylabel="cross-entropy (nats)")
    axes[2].set(title="validation perplexity", xlabel="step", ylabel="perplexity", yscale="log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig, pd.DataFrame(rows)


def plot_lr_schedule(logs: pd.DataFrame):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    data = logs[logs.step > 0][["run", "step", "lr"]]
    for run, g in data.groupby("run", sort=False):
        ax.plot(g.step, g.lr, label=run)
    ax.set(title="learning-rate schedule", xlabel="step", ylabel="learning rate")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, data.reset_index(drop=True)

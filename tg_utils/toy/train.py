"""Training the toy transformers: data windows, AdamW with warmup + cosine decay, the training loop
(exact resume), perplexity. The files a run writes (checkpoints that notebook 06 reads as a training
trajectory, the log, the summary) are described and handled in tg_utils.toy.checkpoints.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoints import (CheckpointError, checkpoint_steps, is_finished, latest_resumable, make_checkpoint,
                          open_run, read_log, save_checkpoint, step_path, write_log, write_run_files,
                          write_summary)
from .model import ToyConfig, ToyTransformer, dataclass_from_dict


@dataclass
class TrainConfig:
    max_steps: int = 600
    batch_size: int = 16            # sequences per micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 3e-3                # peak learning rate
    warmup_steps: int = 60          # linear warmup; 0 = no warmup
    min_lr_ratio: float = 0.1       # cosine decay to min_lr_ratio * lr at max_steps
    weight_decay: float = 0.1       # AdamW, matrices only (not norms, biases, embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0          # max global grad norm; 0 = no clipping
    eval_every: int = 50            # validation every this many steps (and at 0 and the last step)
    eval_tokens: int | None = None  # validation tokens used for the periodic evals (None = all)
    eval_batch_size: int = 32
    seed: int = 0                   # model init and data order
    save_every: int = 50            # rolling resume checkpoint interval (last.pt)
    trajectory_optimizer: bool = True  # keep optimizer state in step_*.pt (resumable; ~3x larger files)

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps], got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return dataclass_from_dict(cls, d)


# ----------------------------------------------------------------------------------------- schedule

def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update number step+1 (step = updates done so far, 0-based).
    Warmup: lr * (step+1) / warmup_steps for step < warmup_steps. Then cosine from lr down to
    min_lr_ratio * lr, reached at step = max_steps: progress p = (step - warmup) / (max_steps - warmup),
    lr_min + (lr - lr_min) * (1 + cos(pi p)) / 2."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    lr_min = cfg.min_lr_ratio * cfg.lr
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    p = min(1.0, (step - cfg.warmup_steps) / span)
    return lr_min + (cfg.lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))


# ----------------------------------------------------------------------------------------- precision

def autocast(device, amp_dtype: str | None):
    """The forward passes' precision context: None (float32, no autocast: the CPU runs as they always were)
    or "bfloat16" (torch.autocast on the device's type; the weights, gradients and optimizer stay float32)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    if amp_dtype != "bfloat16":
        raise ValueError(f"amp_dtype must be None or 'bfloat16', got {amp_dtype!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------- data

def encode_texts(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """One token stream: every text followed by eos (articles joined by <|endoftext|>), int32."""
    eos = tokenizer.eos_token_id
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out = []
    for ids in enc:
        out.extend(ids)
        out.append(eos)
    return np.asarray(out, dtype=np.int32)


def _as_long(ids) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    if t.ndim != 1:
        raise ValueError(f"a token stream must be 1-D, got shape {tuple(t.shape)}")
    return t


def random_batch(ids: torch.Tensor, batch_size: int, context: int, generator: torch.Generator):
    """(x, y), each (batch_size, context): random windows of context+1 tokens, y = x shifted by one."""
    n_starts = len(ids) - context
    if n_starts < 1:
        raise ValueError(f"token stream of {len(ids)} tokens is too short for context {context}")
    starts = torch.randint(n_starts, (batch_size,), generator=generator)
    win = ids[starts[:, None] + torch.arange(context + 1)]           # (B, context+1)
    return win[:, :-1], win[:, 1:]


def eval_windows(n_tokens: int, context: int) -> list[tuple[int, int]]:
    """Fixed non-overlapping windows [start, end) over a stream: every token but the first is a target
    exactly once; the last window may be shorter."""
    return [(s, min(s + context + 1, n_tokens)) for s in range(0, n_tokens - 1, context)]


@torch.no_grad()
def evaluate_perplexity(model, ids, context: int, batch_size: int = 32, max_tokens: int | None = None,
                        device=None, amp_dtype: str | None = None) -> dict:
    """Token-weighted mean cross-entropy of next-token prediction over `ids` (first max_tokens tokens),
    in fixed non-overlapping windows of `context` targets. Returns {"loss", "ppl" = exp(loss), "tokens"}.
    The model is put in eval mode and restored afterwards. amp_dtype: see ``autocast``."""
    ids = _as_long(ids)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("evaluate_perplexity needs at least 2 tokens")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    wins = eval_windows(len(ids), context)
    full = [w for w in wins if w[1] - w[0] == context + 1]
    tail = [w for w in wins if w[1] - w[0] != context + 1]
    try:
        groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in tail]
        for group in groups:
            win = torch.stack([ids[s:e] for s, e in group]).to(device)  # (b, L+1)
            with autocast(device, amp_dtype):
                logits = model(win[:, :-1])                              # (b, L, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), win[:, 1:].flatten(), reduction="sum")
            total += loss.item()
            count += win[:, 1:].numel()
    finally:
        model.train(was_training)
    mean = total / count
    return {"loss": mean, "ppl": math.exp(mean), "tokens": count}


def unigram_perplexity(train_ids, eval_ids, vocab_size: int) -> float:
    """Perplexity of an add-one smoothed unigram model fitted on train_ids, on the targets of eval_ids
    (eval_ids[1:], the tokens evaluate_perplexity scores)."""
    train = np.asarray(train_ids, dtype=np.int64)
    target = np.asarray(eval_ids, dtype=np.int64)[1:]
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[target].mean()))


# ----------------------------------------------------------------------------------------- optimizer

def weight_decay_groups(model) -> tuple[list[str], list[str]]:
    """(decayed, not decayed) parameter names: matrices decay; norms, biases and the embedding (and an lm_head
    tied to it) do not."""
    embed = model.embed.weight
    decay, no_decay = [], []
    for name, p in model.named_parameters():   # a tied lm_head.weight appears once, as embed.weight
        if p.ndim >= 2 and p is not embed:
            decay.append(name)
        else:
            no_decay.append(name)
    return decay, no_decay


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = weight_decay_groups(model)
    params = dict(model.named_parameters())
    groups = [{"params": [params[n] for n in decay], "weight_decay": cfg.weight_decay},
              {"params": [params[n] for n in no_decay], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, foreach=True)


# ----------------------------------------------------------------------------------------- training

def train_run(run_dir, model_cfg: ToyConfig, train_cfg: TrainConfig, train_ids, val_ids, test_ids=None,
              tokenizer=None, progress: bool = True, stop_at: int | None = None, device="cpu",
              desc: str | None = None, amp_dtype: str | None = None) -> pd.DataFrame:
    """Train one toy model in run_dir and return its log (DataFrame, LOG_COLUMNS).

    train_ids / val_ids / test_ids: 1-D token streams (encode_texts). tokenizer: saved as run_dir/tokenizer.json
    (the checkpoints' tokenizer reference). Resumes from the latest good resumable checkpoint and continues
    exactly as an uninterrupted run would (same data order, RNG, optimizer state); a finished run
    (summary.json present) returns its log at once. stop_at: stop after that many updates (saving last.pt),
    e.g. to split a run over sessions. A run_dir holding a different config is an error.
    device: where the model trains ("cpu", "cuda", ...; checkpoints are written from CPU copies, so a run
    resumes on another device). amp_dtype: None (float32) or "bfloat16" (``autocast``); a bfloat16 run
    records it in config.json, so it never resumes a float32 run or the other way round."""
    run_dir = Path(run_dir)
    config = {"model_config": model_cfg.to_dict(), "train_config": train_cfg.to_dict()}
    if amp_dtype is not None:
        config["autocast"] = amp_dtype
    tokenizer = open_run(run_dir, config, tokenizer)
    if is_finished(run_dir, train_cfg.max_steps):
        return read_log(run_dir)
    tok_ref = write_run_files(run_dir, config, tokenizer)

    train_ids, val_ids = _as_long(train_ids), _as_long(val_ids)
    test_ids = _as_long(test_ids) if test_ids is not None else None
    for name, ids in (("train", train_ids), ("validation", val_ids), ("test", test_ids)):
        if ids is not None and len(ids) and int(ids.max()) >= model_cfg.vocab_size:
            raise ValueError(f"{name} token id {int(ids.max())} >= vocab_size {model_cfg.vocab_size}")

    ctx, tc = model_cfg.context, train_cfg
    torch.manual_seed(tc.seed)
    model = ToyTransformer(model_cfg).to(device)
    opt = make_optimizer(model, tc)
    gen = torch.Generator().manual_seed(tc.seed + 1_000_003)
    rows: list[dict] = []
    step, tokens_seen, elapsed = 0, 0, 0.0

    resume = latest_resumable(run_dir)
    if resume is not None:
        if resume["model_config"] != config["model_config"] or resume["train_config"] != config["train_config"]:
            raise CheckpointError(f"the checkpoints in {run_dir} were made with a different configuration")
        model.load_state_dict(resume["model_state"])
        opt.load_state_dict(resume["optimizer_state"])
        gen.set_state(resume["data_rng_state"])
        torch.set_rng_state(resume["torch_rng_state"])
        step, tokens_seen, elapsed = resume["step"], resume["tokens_seen"], resume["elapsed_s"]
        rows = [dict(r) for r in resume["log"]]
        del resume

    traj = set(checkpoint_steps(tc.max_steps))

    def evaluate_val() -> dict:
        return evaluate_perplexity(model, val_ids, ctx, tc.eval_batch_size, tc.eval_tokens, device, amp_dtype)

    def make_ckpt(with_optimizer: bool) -> dict:
        return make_checkpoint(step, config, model, opt if with_optimizer else None, gen, tok_ref,
                               tokens_seen, elapsed, rows)

    def save_traj():
        save_checkpoint(step_path(run_dir, step), make_ckpt(tc.trajectory_optimizer))

    if step == 0 and not rows:
        ev = evaluate_val()
        rows.append(dict(step=0, lr=float("nan"), train_loss=float("nan"), grad_norm=float("nan"),
                         val_loss=ev["loss"], val_ppl=ev["ppl"], test_loss=float("nan"),
                         test_ppl=float("nan"), tokens_seen=0, elapsed_s=0.0))
        save_traj()
        write_log(run_dir, rows)

    end = tc.max_steps if stop_at is None else min(stop_at, tc.max_steps)
    bar = None
    if progress:
        bar = tqdm(total=tc.max_steps, initial=step, desc=desc or run_dir.name, unit="step", leave=True)
    model.train()
    try:
        while step < end:
            t0 = time.perf_counter()
            lr = lr_at(step, tc)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum = 0.0
            for _ in range(tc.grad_accum):
                x, y = random_batch(train_ids, tc.batch_size, ctx, gen)
                x, y = x.to(device), y.to(device)
                with autocast(device, amp_dtype):
                    logits = model(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                (loss / tc.grad_accum).backward()
                loss_sum += loss.item()
            if tc.grad_clip > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip).item()
            else:
                gnorm = torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])).item()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tc.batch_size * tc.grad_accum * ctx
            train_loss = loss_sum / tc.grad_accum
            if not math.isfinite(train_loss):
                warnings.warn(f"{run_dir.name}: non-finite training loss at step {step}")
            row = dict(step=step, lr=lr, train_loss=train_loss, grad_norm=gnorm, val_loss=float("nan"),
                       val_ppl=float("nan"), test_loss=float("nan"), test_ppl=float("nan"),
                       tokens_seen=tokens_seen, elapsed_s=float("nan"))
            if step % tc.eval_every == 0 or step == tc.max_steps:
                ev = evaluate_val()
                row.update(val_loss=ev["loss"], val_ppl=ev["ppl"])
            if step == tc.max_steps and test_ids is not None:
                ev = evaluate_perplexity(model, test_ids, ctx, tc.eval_batch_size, None, device, amp_dtype)
                row.update(test_loss=ev["loss"], test_ppl=ev["ppl"])
            elapsed += time.perf_counter() - t0
            row["elapsed_s"] = elapsed
            rows.append(row)
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{train_loss:.3f}", "lr": f"{lr:.2e}"}
                if math.isfinite(row["val_ppl"]):
                    post["val_ppl"] = f"{row['val_ppl']:.1f}"
                bar.set_postfix(post, refresh=False)
            if step in traj:
                save_traj()
            if step % tc.save_every == 0 or step == end:
                if step < tc.max_steps:
                    save_checkpoint(run_dir / "last.pt", make_ckpt(True))
                write_log(run_dir, rows)
            elif not math.isnan(row["val_loss"]):
                write_log(run_dir, rows)
    finally:
        if bar is not None:
            bar.close()

    df = write_log(run_dir, rows)
    if step == tc.max_steps:
        summary = {"step": step, "tokens_seen": tokens_seen, "elapsed_s": elapsed,
                   "n_params": model.n_params(), "n_params_non_embedding": model.n_params(True)}
        final = rows[-1]
        if tc.eval_tokens is None or tc.eval_tokens >= len(val_ids):
            val = {"loss": final["val_loss"], "ppl": final["val_ppl"], "tokens": len(val_ids) - 1}
        else:
            val = evaluate_perplexity(model, val_ids, ctx, tc.eval_batch_size, None, device, amp_dtype)
        summary.update(val_loss=val["loss"], val_ppl=val["ppl"], val_tokens=val["tokens"],
                       unigram_val_ppl=unigram_perplexity(train_ids, val_ids, model_cfg.vocab_size))
        if test_ids is not None:
            summary.update(test_loss=final["test_loss"], test_ppl=final["test_ppl"],
                           test_tokens=len(test_ids) - 1,
                           unigram_test_ppl=unigram_perplexity(train_ids, test_ids, model_cfg.vocab_size))
        summary.update(config)
        write_summary(run_dir, summary)
        (run_dir / "last.pt").unlink(missing_ok=True)
    return df

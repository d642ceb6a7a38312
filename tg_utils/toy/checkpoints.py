"""The files of a toy run: checkpoint format, saving, listing and loading checkpoints, the training log
and summary, and the run directory. Everything here reads or writes files; the training is in
tg_utils.toy.train.

Run directory layout (one run = one preset + one train config), `run_dir(out_dir, run)`:
    run_dir/config.json          model and train config (human-readable copy)
    run_dir/tokenizer.json       the tokenizer the run was trained with (the checkpoints' tokenizer reference)
    run_dir/step_000000.pt       trajectory checkpoints at checkpoint_steps(max_steps): 0, 1, 2, 4, ..., last;
    run_dir/step_000001.pt ...   step s = the weights after s optimizer updates (step 0 = random init)
    run_dir/last.pt              rolling resume checkpoint (every save_every steps; removed when the run ends)
    run_dir/train_log.csv        tidy log, one row per step s = updates done (row 0 = the init, eval only):
                                 lr and train_loss of update s, grad_norm before clipping, val_loss/val_ppl
                                 every eval_every steps (on eval_tokens validation tokens), test_loss/test_ppl
                                 on the last row (full test split), tokens_seen, elapsed_s (compute time)
    run_dir/summary.json         written last: final full-split validation/test perplexity, unigram baselines
Every file is written atomically (temp file, then rename). A checkpoint is a torch.save'd dict, readable
with torch.load(weights_only=True): format, step, model_config, model_state, optimizer_state (None in
weights-only trajectory checkpoints), data_rng_state, torch_rng_state, train_config, tokenizer
("tokenizer.json", relative to run_dir, or None), tokens_seen, elapsed_s, log (the rows so far).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pandas as pd
import torch

from ..paths import OutputDirs, atomic_path, write_text_atomic
from .model import ToyConfig, ToyTransformer
from .tokenizer import load_tokenizer, save_tokenizer

CKPT_FORMAT = "tg-toy-checkpoint-v1"
LOG_COLUMNS = ["step", "lr", "train_loss", "grad_norm", "val_loss", "val_ppl", "test_loss", "test_ppl",
               "tokens_seen", "elapsed_s"]
HOW_TO_TRAIN = "train it with notebook 01 (bash run_all.sh --only 01)"
TOKENIZER_REF = "tokenizer.json"       # the run's tokenizer file, relative to run_dir


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not match the run asked for."""


# ----------------------------------------------------------------------------------------- run directory

def run_dir(out_dir, run: str) -> Path:
    """The directory of toy run `run` under an output root: <out_dir>/checkpoints/<run>."""
    return OutputDirs.at(out_dir).checkpoints / run


def checkpoint_steps(max_steps: int) -> list[int]:
    """Trajectory checkpoint steps: 0, 1, 2, 4, 8, ... (powers of two below max_steps) and max_steps."""
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    steps = [0]
    s = 1
    while s < max_steps:
        steps.append(s)
        s *= 2
    if max_steps > 0:
        steps.append(max_steps)
    return steps


def open_run(run_dir: Path, config: dict, tokenizer=None):
    """Create run_dir if needed and check that it holds no run of another configuration (config.json)
    or tokenizer (tokenizer.json). tokenizer: None, a tokenizer, or the path of a tokenizer.json.
    Returns the tokenizer (loaded when given as a path)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old != config:
            raise CheckpointError(
                f"{run_dir} holds a run with a different configuration ({cfg_path}); use another run_dir "
                f"or delete this one")
    tok_path = run_dir / TOKENIZER_REF
    if tokenizer is not None:
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        if tok_path.exists() and (json.loads(tok_path.read_text())["model"]
                                  != json.loads(tokenizer.backend_tokenizer.to_str())["model"]):
            raise CheckpointError(f"{run_dir} was trained with a different tokenizer ({tok_path}); use another "
                                  f"run_dir or delete this one")
    return tokenizer


def is_finished(run_dir: Path, max_steps: int) -> bool:
    """The run wrote its summary and the checkpoint of its last step."""
    return (run_dir / "summary.json").exists() and max_steps in list_checkpoints(run_dir)


def write_run_files(run_dir: Path, config: dict, tokenizer=None) -> str | None:
    """Write config.json (always) and tokenizer.json (once); returns the checkpoints' tokenizer
    reference (TOKENIZER_REF, or None without a tokenizer)."""
    write_text_atomic(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    if tokenizer is None:
        return None
    if not (run_dir / TOKENIZER_REF).exists():
        save_tokenizer(tokenizer, run_dir / TOKENIZER_REF)
    return TOKENIZER_REF


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json, written last: it marks the run as finished."""
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


# ----------------------------------------------------------------------------------------- checkpoints

def step_path(run_dir: Path, step: int) -> Path:
    """The trajectory checkpoint file of `step`."""
    return run_dir / f"step_{step:06d}.pt"


def list_checkpoints(run_dir) -> list[int]:
    """Steps of the trajectory checkpoints (step_*.pt) in run_dir, sorted; [] if none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    steps = []
    for p in run_dir.glob("step_*.pt"):
        try:
            steps.append(int(p.stem.split("_", 1)[1]))
        except ValueError:
            pass
    return sorted(steps)


def make_checkpoint(step: int, config: dict, model, optimizer, data_rng: torch.Generator,
                    tokenizer_ref: str | None, tokens_seen: int, elapsed_s: float, log: list[dict]) -> dict:
    """The checkpoint dict of a run at `step` (optimizer None: weights only); config holds model_config
    and train_config as dicts. The global torch RNG state is read now."""
    return {
        "format": CKPT_FORMAT, "step": step, "model_config": config["model_config"],
        "train_config": config["train_config"],
        "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "data_rng_state": data_rng.get_state(), "torch_rng_state": torch.get_rng_state(),
        "tokenizer": tokenizer_ref, "tokens_seen": tokens_seen, "elapsed_s": elapsed_s, "log": log,
    }


def save_checkpoint(path: Path, ck: dict) -> None:
    """torch.save a checkpoint dict atomically."""
    with atomic_path(path) as tmp:
        torch.save(ck, tmp)


def _read(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {str(e)[:200]}); delete it "
            f"and re-run training ({HOW_TO_TRAIN})") from e
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a toy-model checkpoint (format {CKPT_FORMAT})")
    return ck


def load_checkpoint(run_dir, step: int | None = None, device="cpu"):
    """(model in eval mode, tokenizer or None, meta) of the checkpoint at `step` (default: the latest
    trajectory checkpoint). meta: step, model_config, train_config (dicts), tokens_seen, elapsed_s, path,
    run_dir, log (DataFrame of the training log up to that step)."""
    run_dir = Path(run_dir)
    steps = list_checkpoints(run_dir)
    if not steps:
        raise CheckpointError(f"no checkpoints in {run_dir}; {HOW_TO_TRAIN}")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {run_dir}; available steps: {steps}")
    path = step_path(run_dir, step)
    ck = _read(path)
    with torch.random.fork_rng(devices=[]):       # building the model must not move the caller's RNG
        model = ToyTransformer(ToyConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model_state"])
    model.to(device).eval()
    tokenizer = None
    if ck.get("tokenizer"):
        tokenizer = load_tokenizer(run_dir / ck["tokenizer"])
    meta = {k: ck[k] for k in ("step", "model_config", "train_config", "tokens_seen", "elapsed_s")}
    meta.update(path=path, run_dir=run_dir, log=pd.DataFrame(ck["log"], columns=LOG_COLUMNS))
    return model, tokenizer, meta


def latest_resumable(run_dir: Path) -> dict | None:
    """The resumable checkpoint (with optimizer state) of the highest step, skipping corrupt files."""
    candidates = [run_dir / "last.pt"] if (run_dir / "last.pt").exists() else []
    candidates += [step_path(run_dir, s) for s in reversed(list_checkpoints(run_dir))]
    best = None
    for path in candidates:
        if best is not None and path.name != "last.pt" and int(path.stem.split("_")[1]) <= best["step"]:
            break
        try:
            ck = _read(path)
        except CheckpointError as e:
            warnings.warn(f"skipping {path.name} for resume: {e}")
            continue
        if ck.get("optimizer_state") is None:
            continue
        if best is None or ck["step"] > best["step"]:
            best = ck
    return best


# ----------------------------------------------------------------------------------------- log and summary

def read_log(run_dir) -> pd.DataFrame:
    path = Path(run_dir) / "train_log.csv"
    if not path.exists():
        raise FileNotFoundError(f"no training log at {path}; {HOW_TO_TRAIN}")
    return pd.read_csv(path)


def write_log(run_dir: Path, rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=LOG_COLUMNS)
    with atomic_path(run_dir / "train_log.csv") as tmp:
        df.to_csv(tmp, index=False)
    return df


def read_summary(run_dir) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"run {run_dir} has not finished (no summary.json); {HOW_TO_TRAIN}")
    return json.loads(path.read_text())

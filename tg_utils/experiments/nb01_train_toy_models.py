"""Notebook 01 (toy transformers trained from scratch): its data and runs (tg_utils.toy.runs), the
final-perplexity table, the numbers of its figures, and the findings (best run, warmup verdict)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..toy.checkpoints import read_summary, run_dir
from ..toy.runs import NO_WARMUP, ToyData, prepare_data, run_names, train_all

__all__ = ["NB", "SMOOTH", "WARMUP_MARGIN", "ToyData", "WarmupVerdict", "findings", "loss_curves_data",
           "lr_schedule_data", "prepare_data", "summary_table", "train_all", "warmup_verdict"]

NB = "01_train_toy_models"
SMOOTH = 20               # steps in the running mean of the training loss (loss-curve figure)
WARMUP_MARGIN = 1.05      # post-norm training "needs" warmup if without it val ppl is > 5 % higher


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


# ---------------------------------------------------------------- figure data (tidy, as saved beside each figure)

def loss_curves_data(logs: pd.DataFrame, smooth: int = SMOOTH) -> pd.DataFrame:
    """Per run: the training loss as a running mean over `smooth` steps (train_loss_smoothed), the
    validation loss and perplexity at every evaluation; columns run, step, metric, value."""
    rows = []
    for run, g in logs.groupby("run", sort=False):
        tr = g[g.step > 0]
        sm = tr.train_loss.rolling(smooth, min_periods=1).mean()
        ev = g.dropna(subset=["val_loss"])
        rows += [{"run": run, "step": s, "metric": "train_loss_smoothed", "value": v} for s, v in zip(tr.step, sm)]
        rows += [{"run": run, "step": s, "metric": m, "value": v}
                 for m in ("val_loss", "val_ppl") for s, v in zip(ev.step, ev[m])]
    return pd.DataFrame(rows)


def lr_schedule_data(logs: pd.DataFrame) -> pd.DataFrame:
    """The learning rate of every update of every run; columns run, step, lr."""
    return logs[logs.step > 0][["run", "step", "lr"]].reset_index(drop=True)


# ---------------------------------------------------------------- findings

@dataclass(frozen=True)
class WarmupVerdict:
    """Validation perplexity of LLaMA-PostLN with and without warmup."""
    with_warmup: float
    without_warmup: float

    @property
    def needs_warmup(self) -> bool:
        return self.without_warmup > WARMUP_MARGIN * self.with_warmup


def warmup_verdict(summary: pd.DataFrame, P) -> WarmupVerdict | None:
    """The warmup comparison of the summary table, or None when the parameters train no such pair."""
    if not (P.no_warmup_run and "llama-postln" in P.presets):
        return None
    w = summary.set_index("run").loc[["llama-postln", NO_WARMUP], "val_ppl"]
    return WarmupVerdict(float(w.iloc[0]), float(w.iloc[1]))


def findings(summary: pd.DataFrame, P) -> str:
    """The findings as measured: the best run by test perplexity, every run's perplexities, and
    whether post-norm training needs warmup here."""
    best = summary.loc[summary.test_ppl.idxmin()]
    lines = [f"Best test perplexity: {best.run} at {best.test_ppl:.1f} "
             f"(unigram baseline {best.unigram_test_ppl:.1f})."]
    for r in summary.itertuples():
        lines.append(f"  {r.run:24s} val {r.val_ppl:8.1f}  test {r.test_ppl:8.1f}  "
                     f"(unigram {r.unigram_val_ppl:.0f} / {r.unigram_test_ppl:.0f}), {r.train_time_s:.0f} s")
    v = warmup_verdict(summary, P)
    if v is not None:
        verdict = "needs" if v.needs_warmup else "does not clearly need"
        lines.append(f"LLaMA-PostLN with warmup: val ppl {v.with_warmup:.1f}; without: {v.without_warmup:.1f} -> "
                     f"here post-norm training {verdict} warmup.")
    return "\n".join(lines)

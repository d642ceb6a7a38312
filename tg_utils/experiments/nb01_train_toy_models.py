"""Notebook 01 (toy transformers trained from scratch): its data and runs (tg_utils.toy.runs), the
final-perplexity table of every seed and its spread over seeds, the numbers of its figures, and the findings
(best run, differences beyond the seed spread, warmup verdict)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..findings import Finding
from ..toy.checkpoints import read_summary, run_dir
from ..toy.runs import NO_WARMUP, ToyData, prepare_data, run_jobs, train_all

__all__ = ["NB", "SMOOTH", "WARMUP_MARGIN", "XIONG", "ToyData", "WarmupVerdict", "differences", "findings",
           "loss_curves_data", "lr_schedule_data", "prepare_data", "seed_spread", "summary_table", "train_all",
           "warmup_verdict"]

NB = "01_train_toy_models"
SMOOTH = 20               # steps in the running mean of the training loss (loss-curve figure)
WARMUP_MARGIN = 1.05      # post-norm training "needs" warmup if without it val ppl is > 5 % higher


def summary_table(P) -> pd.DataFrame:
    """Final validation / test perplexity of every run and seed with the unigram baseline beside it."""
    rows = []
    for job in run_jobs(P):
        s = read_summary(run_dir(P.out_dir, job.folder))
        rows.append({"run": job.run, "seed": job.seed, "params": s["n_params"],
                     "params_non_embedding": s["n_params_non_embedding"],
                     "steps": s["step"], "tokens_seen": s["tokens_seen"], "train_time_s": round(s["elapsed_s"], 1),
                     "val_ppl": s["val_ppl"], "test_ppl": s["test_ppl"],
                     "unigram_val_ppl": s["unigram_val_ppl"], "unigram_test_ppl": s["unigram_test_ppl"]})
    return pd.DataFrame(rows)


def seed_spread(summary: pd.DataFrame, first_seed: int = 0) -> pd.DataFrame:
    """Per run (in the summary's order): the number of seeds, the first seed's value, and the mean, min, max
    and sample standard deviation (ddof 1; NaN for one seed) over seeds of val_ppl and test_ppl. The
    spread this project states is the min-max range (with 3 seeds a standard deviation is itself uncertain)."""
    rows = []
    for run, g in summary.groupby("run", sort=False):
        row = {"run": run, "n_seeds": len(g), "seeds": " ".join(str(s) for s in g.seed)}
        for m in ("val_ppl", "test_ppl"):
            first = g.loc[g.seed == first_seed, m]
            row.update({f"{m}_seed{first_seed}": float(first.iloc[0]) if len(first) else float("nan"),
                        f"{m}_mean": g[m].mean(), f"{m}_min": g[m].min(), f"{m}_max": g[m].max(),
                        f"{m}_std": g[m].std(ddof=1) if len(g) > 1 else float("nan")})
        rows.append(row)
    return pd.DataFrame(rows)


def differences(spread: pd.DataFrame, metric: str = "val_ppl") -> list[str]:
    """One line per pair of runs trained with >= 2 seeds: which is lower, and whether the difference of the
    means exceeds the seed spread (their min-max ranges do not overlap) or not (then no difference is stated)."""
    multi = spread[spread.n_seeds > 1].set_index("run")
    lines, runs = [], list(multi.index)
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            lo, hi = (a, b) if multi.at[a, f"{metric}_mean"] <= multi.at[b, f"{metric}_mean"] else (b, a)
            rng = {r: f"{multi.at[r, f'{metric}_min']:.1f}-{multi.at[r, f'{metric}_max']:.1f}" for r in (lo, hi)}
            means = f"{multi.at[lo, f'{metric}_mean']:.1f} vs {multi.at[hi, f'{metric}_mean']:.1f}"
            if multi.at[lo, f"{metric}_max"] < multi.at[hi, f"{metric}_min"]:
                lines.append(f"{lo} is lower than {hi} beyond the seed spread: {metric} mean {means} "
                             f"(ranges {rng[lo]} and {rng[hi]} do not overlap).")
            else:
                lines.append(f"{lo} vs {hi}: no difference stated, the seed spread covers it: {metric} mean "
                             f"{means} (ranges {rng[lo]} and {rng[hi]} overlap).")
    return lines


# ---------------------------------------------------------------- figure data (tidy, as saved beside each figure)

def loss_curves_data(logs: pd.DataFrame, smooth: int = SMOOTH) -> pd.DataFrame:
    """Per run: the training loss as a running mean over `smooth` steps (train_loss_smoothed), the
    validation loss and perplexity at every evaluation, each as the mean over the run's seeds (value) with
    their min and max (value_min, value_max) and the number of seeds; columns run, step, metric, value,
    value_min, value_max, n_seeds. Logs without a seed column are one seed."""
    if "seed" not in logs:
        logs = logs.assign(seed=0)
    rows = []
    for (run, seed), g in logs.groupby(["run", "seed"], sort=False):
        tr = g[g.step > 0]
        sm = tr.train_loss.rolling(smooth, min_periods=1).mean()
        ev = g.dropna(subset=["val_loss"])
        rows += [{"run": run, "seed": seed, "step": s, "metric": "train_loss_smoothed", "value": v}
                 for s, v in zip(tr.step, sm)]
        rows += [{"run": run, "seed": seed, "step": s, "metric": m, "value": v}
                 for m in ("val_loss", "val_ppl") for s, v in zip(ev.step, ev[m])]
    per_seed = pd.DataFrame(rows, columns=["run", "seed", "step", "metric", "value"])
    out = (per_seed.groupby(["run", "metric", "step"], sort=False).value
           .agg(value="mean", value_min="min", value_max="max", n_seeds="count").reset_index())
    order = {m: i for i, m in enumerate(("train_loss_smoothed", "val_loss", "val_ppl"))}
    runs = {r: i for i, r in enumerate(per_seed.run.unique())}
    out = out.sort_values(["run", "metric", "step"], key=lambda c: c.map(runs) if c.name == "run" else
                          (c.map(order) if c.name == "metric" else c), kind="stable")
    return out[["run", "step", "metric", "value", "value_min", "value_max", "n_seeds"]].reset_index(drop=True)


def lr_schedule_data(logs: pd.DataFrame) -> pd.DataFrame:
    """The learning rate of every update of every run (the first seed's: the schedule does not depend on
    the seed); columns run, step, lr."""
    first = logs[logs.seed == logs.seed.iloc[0]] if "seed" in logs else logs
    return first[first.step > 0][["run", "step", "lr"]].reset_index(drop=True)


# ---------------------------------------------------------------- findings

@dataclass(frozen=True)
class WarmupVerdict:
    """Validation perplexity of LLaMA-PostLN with and without warmup."""
    with_warmup: float
    without_warmup: float

    @property
    def needs_warmup(self) -> bool:
        return self.without_warmup > WARMUP_MARGIN * self.with_warmup


def _first_seed(summary: pd.DataFrame, P) -> pd.DataFrame:
    return summary[summary.seed == P.seeds[0]] if "seed" in summary else summary


def warmup_verdict(summary: pd.DataFrame, P) -> WarmupVerdict | None:
    """The warmup comparison of the summary table (the first seed's runs), or None when the parameters
    train no such pair."""
    if not (P.no_warmup_run and "llama-postln" in P.presets):
        return None
    w = _first_seed(summary, P).set_index("run").loc[["llama-postln", NO_WARMUP], "val_ppl"]
    return WarmupVerdict(float(w.iloc[0]), float(w.iloc[1]))


XIONG = "Xiong et al. 2020, On Layer Normalization in the Transformer Architecture"


def findings(summary: pd.DataFrame, P) -> list[Finding | str]:
    """The findings as measured, one paragraph each: the best run by mean test perplexity over its seeds
    beside the unigram baseline, the differences between multi-seed runs (stated only beyond the seed
    spread), the largest seed spread, whether post-norm training needs warmup here (first seed, its margin
    beside that spread) and the learning rates the runs used (parameters)."""
    if "seed" not in summary:
        summary = summary.assign(seed=P.seeds[0])
    spread = seed_spread(summary, P.seeds[0])
    best = spread.loc[spread.test_ppl_mean.idxmin()]
    uni = summary.groupby("run", sort=False).unigram_test_ppl.first()
    below = int((spread.set_index("run").test_ppl_mean < uni).sum())
    seeds = f"mean of {best.n_seeds} seeds" if best.n_seeds > 1 else f"seed {best.seeds}"
    out: list[Finding | str] = [Finding(
        "Best test perplexity",
        f"{best.run} at {best.test_ppl_mean:.1f} ({seeds}) against a unigram baseline of {uni[best.run]:.1f}; "
        f"{below} of {len(spread)} runs end below their unigram baseline (table above: mean, min and max over seeds).")]
    out += [Finding("Runs trained with several seeds", line) for line in differences(spread)]
    multi = spread[spread.n_seeds > 1]
    rel = float(((multi.val_ppl_max - multi.val_ppl_min) / multi.val_ppl_mean).max()) if len(multi) else None
    if rel is not None:
        out.append(Finding("Seed spread", f"The largest (max - min) / mean of the validation perplexity over "
                           f"seeds is {100 * rel:.1f} %; a single-seed difference smaller than that is not stated."))
    v = warmup_verdict(summary, P)
    if v is not None:
        within = rel is not None and v.needs_warmup and v.without_warmup <= (1 + rel) * v.with_warmup
        verdict = "partly" if within else ("agrees" if v.needs_warmup else "disagrees")
        said = ("needs warmup, but the gap is within the seed spread" if within else
                "needs warmup" if v.needs_warmup else
                f"does not clearly need warmup (a gap under {100 * (WARMUP_MARGIN - 1):.0f} % is not counted)")
        out.append(Finding("Post-norm training needs learning-rate warmup",
                           f"LLaMA-PostLN reaches a validation perplexity of {v.with_warmup:.1f} with warmup and "
                           f"{v.without_warmup:.1f} without (seed {P.seeds[0]}): here post-norm training {said}.",
                           paper=f"post-norm transformers need warmup to train well ({XIONG}).", verdict=verdict))
    rates = ", ".join(f"{r} {P.lr_by_run[r]:g}" for r in spread.run if r in P.lr_by_run)
    if rates:
        out.append(f"Learning rates: {rates}; every other run {P.lr:g} (`lr_by_run`, `lr`). Post-norm runs are "
                   "compared at their own best rate of the sweep (`benchmarks/lr_sweep.py`), not at a shared one.")
    out.append(f"Later notebooks read seed {P.seeds[0]}'s checkpoints (folders `<run>`; seed k: `toy:<run>-seed<k>`).")
    return out

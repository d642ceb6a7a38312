"""The spread over seeds of the toy numbers the README cites, from runs already trained by notebook 01.

    .venv/bin/python benchmarks/seed_spread.py --out outputs [--runs llama-preln standard-preln] [--seeds 0 1 2]
                                               [--no-spectra] [--n-seqs 512] [--seq-len 128]

Prints (1) the final validation / test perplexity of every run and seed with the mean and min-max over seeds
(tg_utils.experiments.nb01_train_toy_models.seed_spread), and (2) notebook 06's RankMe and alpha-ReQ of the
final-normed last-token states at initialisation, at the end of the warmup and at the last step (its default
parameters: 512 validation windows of 128 tokens; --n-seqs fewer to be quick), per seed with min-max. The runs
of seed k are the folders <run>-seed<k> beside <run> under <out>/checkpoints (notebook 01 with `seeds`);
notebooks 03-05's cosine and chi_1 are not measured here.
"""
from __future__ import annotations

import argparse
import dataclasses

import pandas as pd

from tg_utils.experiments import nb01_train_toy_models as nb01
from tg_utils.experiments.nb06_inputs import toy_trajectory
from tg_utils.experiments.nb06_training_trajectory_phases import run_trajectories
from tg_utils.params.notebooks import TrajectoryParams
from tg_utils.toy.checkpoints import read_summary, run_dir
from tg_utils.toy.runs import seed_folder


def perplexities(out: str, runs: list[str], seeds: list[int]) -> pd.DataFrame:
    rows = []
    for run in runs:
        for seed in seeds:
            s = read_summary(run_dir(out, seed_folder(run, seed, seeds[0])))
            rows.append({"run": run, "seed": seed, "val_ppl": s["val_ppl"], "test_ppl": s["test_ppl"],
                         "unigram_val_ppl": s["unigram_val_ppl"], "unigram_test_ppl": s["unigram_test_ppl"]})
    return pd.DataFrame(rows)


def spectra(out: str, runs: list[str], seeds: list[int], n_seqs: int, seq_len: int) -> pd.DataFrame:
    """RankMe and alpha of the final-normed layer at steps 0, warmup end and last, per run and seed."""
    folders = {(r, s): seed_folder(r, s, seeds[0]) for r in runs for s in seeds}
    P = TrajectoryParams(out_dir=out, toy_runs=list(folders.values()), n_seqs=n_seqs, seq_len=seq_len, word_buckets=[1],
                         words_per_bucket=5, context_buckets=[])     # words and contexts do not enter the spectra
    trajs = []
    for f in folders.values():
        t = toy_trajectory(f, out)
        keep = {0, t.warmup_until or 0, t.checkpoints[-1].step}
        trajs.append(dataclasses.replace(t, checkpoints=[c for c in t.checkpoints if c.step in keep]))
    sp = run_trajectories(P, trajs).spectra
    sp = sp[sp.metric.isin(["rankme", "alpha"])]
    sp = sp[sp.layer == sp.groupby("trajectory").layer.transform("max")]        # the final-normed state
    back = {f: rs for rs, f in folders.items()}
    sp = sp.assign(run=[back[t][0] for t in sp.trajectory], seed=[back[t][1] for t in sp.trajectory])
    return sp[["run", "seed", "metric", "step", "value"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs")
    ap.add_argument("--runs", nargs="+", default=["llama-preln", "standard-preln"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-spectra", action="store_true", help="only the perplexities")
    ap.add_argument("--n-seqs", type=int, default=TrajectoryParams.n_seqs)
    ap.add_argument("--seq-len", type=int, default=TrajectoryParams.seq_len)
    args = ap.parse_args()
    pd.set_option("display.width", 200)
    ppl = perplexities(args.out, args.runs, args.seeds)
    print("final perplexity per seed\n", ppl[["run", "seed", "val_ppl", "test_ppl"]].round(1).to_string(index=False))
    sp = nb01.seed_spread(ppl, args.seeds[0])
    cols = ["run", "n_seeds"] + [f"{m}_{k}" for m in ("val_ppl", "test_ppl") for k in ("mean", "min", "max", "std")]
    print("\nspread over seeds (min-max; std with ddof 1)\n", sp[cols].round(1).to_string(index=False))
    print("\n" + "\n".join(nb01.differences(sp)))
    if args.no_spectra:
        return
    s = spectra(args.out, args.runs, args.seeds, args.n_seqs, args.seq_len)
    wide = s.pivot_table(index=["run", "metric", "step"], columns="seed", values="value")
    wide["min"], wide["max"], wide["mean"] = wide.min(axis=1), wide.max(axis=1), wide.mean(axis=1)
    print(f"\nnotebook 06, final-normed last-token states of {args.n_seqs} windows: RankMe and alpha-ReQ per seed\n",
          wide.round(2).to_string())


if __name__ == "__main__":
    main()

"""Peak learning-rate sweep of the toy presets at the default profile's sizes and budget: how the default
`lr` / `lr_by_run` of notebook 01 were chosen. Trains each (run, lr) pair with everything else as in the
profile (same data, order, seed, steps, warmup) and prints the final validation perplexity beside the
unigram baseline.

    .venv/bin/python benchmarks/lr_sweep.py                                   # the sweep behind the defaults
    .venv/bin/python benchmarks/lr_sweep.py --runs standard-postln --lrs 5e-4 7e-4 --threads 1

Runs go to <out>/lr_sweep/<run>-lr<lr>/ (resumable; a finished pair is read back, not retrained), the table
to <out>/lr_sweep/lr_sweep.csv (run, lr, val_ppl, unigram_val_ppl, ratio, wall_s).
Each pair takes about 1.5 min with two threads on an idle 2-core CPU.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from tg_utils.params.notebooks import TrainToyParams
from tg_utils.paths import OutputDirs
from tg_utils.toy import runs as toy_runs
from tg_utils.toy.checkpoints import read_summary
from tg_utils.toy.train import train_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", default=toy_runs.run_names(TrainToyParams()))
    ap.add_argument("--lrs", nargs="+", type=float, default=[3e-3, 1e-3, 5e-4])
    ap.add_argument("--out", default="outputs")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for lr in args.lrs:
        P = TrainToyParams(out_dir=args.out, lr=lr, lr_by_run={})
        data = toy_runs.prepare_data(P)
        for run in args.runs:
            d = OutputDirs.at(args.out).root / "lr_sweep" / f"{run}-lr{lr:g}"
            t0 = time.perf_counter()
            train_run(d, toy_runs.model_config(P, run, len(data.tokenizer)), toy_runs.train_config(P, run),
                      data.ids["train"], data.ids["validation"], data.ids["test"], desc=f"{run} lr {lr:g}")
            s = read_summary(d)
            rows.append({"run": run, "lr": lr, "val_ppl": round(s["val_ppl"], 1),
                         "unigram_val_ppl": round(s["unigram_val_ppl"], 1),
                         "ratio": round(s["val_ppl"] / s["unigram_val_ppl"], 3),
                         "wall_s": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    path = OutputDirs.at(args.out).root / "lr_sweep" / "lr_sweep.csv"
    table.to_csv(path, index=False)            # the record notebook 01's "Learning rates" points at
    print(table.pivot(index="run", columns="lr", values="val_ppl").to_string())
    print(f"written: {path}")


if __name__ == "__main__":
    main()

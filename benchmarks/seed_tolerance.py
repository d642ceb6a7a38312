"""How far the toy rows of the figure tables move between training seeds: the measured basis of the toy
tolerances of tg_utils.compare (TOY, TOY_DEFAULT).

    .venv/bin/python benchmarks/seed_tolerance.py --out outputs [--figures figures] [--seeds 1 2]
                                                  [--notebooks 03 04 05 06] [--work /tmp/seed-tolerance]

Needs a finished default run in --out whose notebook 01 trained the seed runs (`seeds: [0, 1, 2]`,
`seed_runs`: <run>-seed<k> folders under <out>/checkpoints). For every other seed k it re-runs the chosen
notebooks with the default profile, each toy run replaced by its seed-k twin (runs without one are left out;
pretrained models stay, except in notebook 04, which then runs its toy alone), into <work>/seed<k>/figures,
reusing the caches and checkpoints of --out (linked from <work>/seed<k>/out, which keeps the seed runs' own
result tables).
Then, for every figure table, it compares the toy rows with the seed-0 rows of --figures (labels with the
'-seed<k>' suffix taken off) and prints, per table, the largest |seed k - seed 0| over rows and value columns
as a share of the column's largest |seed 0| value (the `scale` term of compare.Tolerance), with the column
and row where it occurs. A table whose toy rows do not change with the seed is listed as 0.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tg_utils import compare
from tg_utils.params.base import load_profile
from tg_utils.runner import run_notebook, select_notebooks
from tg_utils.toy.checkpoints import run_dir


def seed_params(nb: str, base: dict, seed: int, out: Path) -> dict | None:
    """The notebook's parameters with every toy run that has a seed-`seed` twin replaced by it (None when
    the notebook's toys have no twin)."""
    def twin(run: str) -> str | None:
        name = f"{run}-seed{seed}"
        return name if run_dir(str(out), name).is_dir() else None
    p = dict(base)
    if nb.startswith("04"):
        toys = [m for m in p["models"] if m.startswith("toy:")]
        swapped = {m: f"toy:{twin(m[4:])}" for m in toys if twin(m[4:])}
        if not swapped:
            return None
        p["models"] = list(swapped.values())       # the pretrained models do not change with the toys' seed
        p["n_prompts_by_model"] = {swapped[k]: v for k, v in p.get("n_prompts_by_model", {}).items() if k in swapped}
        return p
    runs = [twin(r) for r in p["toy_runs"] if twin(r)]
    if not runs:
        return None
    p["toy_runs"] = runs
    if nb.startswith("06"):
        p["models"], p["word_models"] = [], []
    return p


def seed_out(out: Path, folder: Path) -> Path:
    """An output root for a seed run that shares the caches and checkpoints of `out` (symbolic links) but keeps
    its own result tables and executed notebooks, so the default run's tables under `out` stay seed 0's."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in out.iterdir():
        link = folder / entry.name
        if entry.is_dir() and entry.name not in ("results", "notebooks", "tmp") and not link.exists():
            link.symlink_to(entry, target_is_directory=True)
    return folder


def notebook_defaults(nb: Path) -> dict:
    """The literals of a notebook's `parameters` cell (the default profile's sections are empty)."""
    cells = json.loads(nb.read_text())["cells"]
    src = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    ns: dict = {}
    exec(src, {}, ns)   # literals only (tests/test_notebooks.py checks the parameters cell)
    return ns


def spread(table: str, ref: pd.DataFrame, run: pd.DataFrame, seed: int) -> tuple[float, str]:
    """Largest |run - ref| / (largest |ref| of the column) over the toy rows both tables hold."""
    run = run.copy()
    for c in run.columns:
        if not pd.api.types.is_numeric_dtype(run[c]) and not pd.api.types.is_bool_dtype(run[c]):
            run[c] = run[c].astype(str).str.replace(f"-seed{seed}", "", regex=False)
    keys, values = compare.split_columns(table, ref)
    if not values or not set(keys + values) <= set(run.columns):
        return float("nan"), "not comparable (the seed run's table lacks columns: e.g. a pair of runs without twins)"
    a, b = compare._with_occurrence(ref, keys), compare._with_occurrence(run, keys)
    m = a.merge(b, on=keys + ["#"], how="inner", suffixes=("", " run"))
    m = m[compare.toy_rows(table, m, keys)]
    worst, where = 0.0, ""
    for c in values:
        if not pd.api.types.is_float_dtype(ref[c]):
            continue
        x, y = m[c].to_numpy(float), m[f"{c} run"].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        scale = np.abs(ref[c][np.isfinite(ref[c])]).max() if np.isfinite(ref[c]).any() else 0.0
        if not ok.any() or scale == 0:
            continue
        d = np.abs(x - y)[ok] / scale
        i = int(np.argmax(d))
        if d[i] > worst:
            row = m[ok].iloc[i]
            worst, where = float(d[i]), f"{c} at {compare._row(row, keys)}"
    return worst, where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs")
    ap.add_argument("--figures", default="figures")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--notebooks", nargs="+", default=["03", "04", "05", "06"])
    ap.add_argument("--work", default="/tmp/seed-tolerance")
    ap.add_argument("--kernel", default="token-geometry")
    ap.add_argument("--no-run", action="store_true", help="only compare figures already under --work")
    args = ap.parse_args()
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    sections = load_profile("default")
    rows = []
    for seed in args.seeds:
        figs = work / f"seed{seed}" / "figures"
        for nb in select_notebooks(args.notebooks):
            params = seed_params(nb.stem, {**notebook_defaults(nb), **sections.get(nb.stem, {})}, seed, out)
            if params is None:
                print(f"[seed {seed}] {nb.stem}: no toy run with a seed-{seed} twin; skipped")
                continue
            if not args.no_run:
                params.update(profile="default", out_dir=str(seed_out(out, work / f"seed{seed}" / "out")),
                              figures_dir=str(figs))
                executed = work / f"seed{seed}" / "notebooks" / nb.name
                executed.parent.mkdir(parents=True, exist_ok=True)
                tmp = work / "tmp"
                tmp.mkdir(parents=True, exist_ok=True)
                rc, secs, _, tail = run_notebook(nb, params, executed, args.kernel, False, tmp)
                print(f"[seed {seed}] {nb.stem}: rc {rc} in {secs:.0f} s", flush=True)
                if rc:
                    print(tail, file=sys.stderr)
                    return 1
            for table, path in compare.csv_tables(figs, [nb.stem + "/"]).items():
                ref_path = Path(args.figures) / table
                if not ref_path.exists():
                    continue
                s, where = spread(table, compare.read(ref_path), compare.read(path), seed)
                rows.append({"table": table, "seed": seed, "spread": s, "where": where})
    df = pd.DataFrame(rows)
    if df.empty:
        print("no tables compared")
        return 1
    worst = df.sort_values("spread", ascending=False, na_position="last").drop_duplicates("table")
    pd.set_option("display.width", 250, "display.max_colwidth", 120, "display.max_rows", 500)
    print("\nlargest seed-to-seed change of a toy value, as a share of its column's largest |seed 0| value:")
    print(worst[["table", "spread", "seed", "where"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compare a run's figure tables with the committed ones: CSVs paired by relative path, rows matched by
their key columns, numbers compared with a tolerance per kind of number (pretrained models tight, toy
models by their spread across machines and seeds, timing columns ignored); one line per table beyond.

    python -m tg_utils.compare figures/ <out>/figures [--only 03 04] [--no-fail] [--verbose]

Exit status 0 when every table is within tolerance, 1 when a table differs beyond it or is missing or
extra (with --no-fail always 0), 2 on bad arguments. run_all.sh prints the summary after a default run.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .tables import SIGNIFICANT_DIGITS
from .toy.model import PRESETS


@dataclass(frozen=True)
class Tolerance:
    """|run - committed| <= rel * |committed| + scale * (largest |committed| of the column among rows of
    the same kind) + one unit in the CSV's last written digit (tables.SIGNIFICANT_DIGITS)."""
    rel: float
    scale: float = 0.0


# Pretrained models (SmolLM2, Gemma-3, MiniLM, hub ids) agree across machines to ~1e-5: 1e-4 keeps 10x.
PRETRAINED = Tolerance(rel=1e-4, scale=1e-4)
# ... except where an optimiser's output is tabulated: notebook 07's UMAP coordinates of SmolLM2 moved by up to
# 1.7 % of an axis' range between two machines (fresh clone, 2026-12-02; Gemma-3's were identical).
PRETRAINED_BY_TABLE = {"07_attention_geometry/phrase_trajectories.csv": Tolerance(rel=0.0, scale=0.025)}
# Toy models drift across machines (training in float32 amplifies summation-order noise), so their rows are
# compared within the spread across training seeds: `scale` below is the largest change of a toy value between
# seed 0 and seeds 1, 2 (LLaMA-PreLN and Standard-PreLN, default profile), as a share of the column's largest
# value, measured by benchmarks/seed_tolerance.py on 2026-12-02 and rounded up with a 1.25x margin. A table with
# scale >= 1 (single token pairs, correlations and p-values of toy models, per-word deltas) is not reproducible
# beyond "within the column's range": its toy rows are compared for structure only. Tables not measured (pairs
# of runs that have one seed) take the measured value of the table they are built like. Keys are
# '<notebook folder>/<table>.csv'; the training curves are relative (val_ppl of one seed moves up to 14.9 %
# between seeds mid-training, train_loss 21 % at single steps; the smoothed curves and the final values less).
_SEED_SPREAD = {   # table -> largest seed-to-seed change / column scale (benchmarks/seed_tolerance.py)
    "03_geometry_metrics/similarity_heatmaps.csv": 1.529,
    "03_geometry_metrics/difference_training_id.csv": 0.263,
    "03_geometry_metrics/difference_arch_id.csv": 0.263,              # not measured: as difference_training_id
    "03_geometry_metrics/cosine_vs_layer_random.csv": 0.202,
    "03_geometry_metrics/difference_training_cos_full.csv": 0.201,
    "03_geometry_metrics/difference_arch_cos_full.csv": 0.201,        # not measured: as difference_training_*
    "03_geometry_metrics/cosine_vs_layer_trained.csv": 0.136,
    "03_geometry_metrics/id_and_overlap.csv": 0.115,
    "03_geometry_metrics/id_scale_curves.csv": 0.110,
    "04_shuffle_experiment/id_loss_correlation.csv": 0.915,
    "04_shuffle_experiment/id_peak_shuffled_vs_structured.csv": 0.500,
    "04_shuffle_experiment/chi1_vs_layer_by_s.csv": 0.273,
    "04_shuffle_experiment/cosine_vs_layer_by_s.csv": 0.108,
    "04_shuffle_experiment/id_vs_layer_by_s.csv": 0.100,
    "04_shuffle_experiment/nn_angle_vs_layer_by_s.csv": 0.088,
    "04_shuffle_experiment/id_scale_curves_by_s.csv": 0.044,
    "04_shuffle_experiment/loss_vs_s.csv": 0.025,
    "05_model_comparison/id_loss_correlation.csv": 0.898,
    "05_model_comparison/profiles_random.csv": 0.055,
    "05_model_comparison/profiles_trained.csv": 0.044,
    "06_training_trajectory_phases/perturbation_final.csv": 0.949,
    "06_training_trajectory_phases/token_convergence_delta.csv": 0.686,
    "06_training_trajectory_phases/perturbation_vs_step.csv": 0.682,
    "06_training_trajectory_phases/token_convergence.csv": 0.339,
    "06_training_trajectory_phases/rankme_alpha_overlay.csv": 0.320,
    "06_training_trajectory_phases/layer_step_heatmaps.csv": 0.315,
    "06_training_trajectory_phases/eigenspectra.csv": 0.280,
    "06_training_trajectory_phases/convergence_deficit_vs_layer.csv": 0.170,
    "06_training_trajectory_phases/rankme_alpha_loss_vs_step.csv": 0.020,
}
SEED_MARGIN = 1.25
# Tables with toy rows not in _SEED_SPREAD (new tables, notebook 07's toys): the median measured spread.
TOY_DEFAULT = Tolerance(rel=0.0, scale=0.25)
TOY = {
    "01_train_toy_models/loss_curves.csv": Tolerance(rel=0.15),
    "01_train_toy_models/lr_schedule.csv": PRETRAINED,        # the schedule is arithmetic, not training
    **{t: Tolerance(rel=0.0, scale=round(SEED_MARGIN * s, 3)) for t, s in _SEED_SPREAD.items()},
}
TOY_NOTEBOOKS = ("01_", "06_")        # every row of these notebooks' tables is a toy model
# toy:<run>, or a run name as a label (a preset, also as <preset>-nowarmup / <preset>-seed<k>)
TOY_NAME = re.compile("^(?:toy:|" + "|".join(re.escape(name) for name in PRESETS) + ")")
# Columns that are results although not floats (which token, which layer, which step: compared exactly
# in pretrained rows, not at all in toy rows, where such an argmax moves with the drift), and float columns
# that identify a row; by default the key is every non-float column, the values every float column.
VALUE_COLUMNS = {
    "04_shuffle_experiment/id_peak_shuffled_vs_structured.csv": ("layer_ref", "layer_cmp", "higher", "shift"),
    "06_training_trajectory_phases/convergence_deficit_vs_layer.csv": ("converged_step",),
    "07_attention_geometry/ellipse_probe.csv": ("token", "token_raw", "token_id"),
    "07_attention_geometry/norm_scorings.csv": ("token", "listed", "labelled"),
}
KEY_FLOATS = {"07_attention_geometry/svd_coverage.csv": ("rank", "level")}
TIMING = re.compile(r"(_s|_sec|_secs|_seconds|_time|_gib)$|^(seconds|secs|finished|elapsed|duration|wall|time|timestamp)$")


@dataclass
class Result:
    table: str
    status: str                       # identical | within | beyond | missing | extra
    line: str = ""                    # what differs, for beyond / missing / extra


def is_timing(col: str) -> bool:
    return bool(TIMING.search(col))


def tolerance(table: str, toy: bool) -> Tolerance:
    return TOY.get(table, TOY_DEFAULT) if toy else PRETRAINED_BY_TABLE.get(table, PRETRAINED)


def last_digit_unit(x: np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """One unit in the last significant digit the CSV writer keeps, for each |x| (0 for 0)."""
    ax = np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = 10.0 ** (np.floor(np.log10(ax)) - (digits - 1))
    return np.where(np.isfinite(unit), unit, 0.0)


def _key_text(s: pd.Series) -> pd.Series:
    """Key values as text that matches across dtypes (3 and 3.0 alike; NaN as '')."""
    def one(v):
        if isinstance(v, (float, np.floating)):
            return "" if math.isnan(v) else (str(int(v)) if v == int(v) else repr(float(v)))
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    return s.map(one).astype(object)


def split_columns(table: str, df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(key columns, value columns) of a table; timing columns are in neither."""
    cols = [c for c in df.columns if not is_timing(c)]
    values = set(VALUE_COLUMNS.get(table, ()))
    key_floats = set(KEY_FLOATS.get(table, ()))
    keys = [c for c in cols if c not in values and (c in key_floats or not pd.api.types.is_float_dtype(df[c]))]
    return keys, [c for c in cols if c not in keys]


def toy_rows(table: str, keyed: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Which rows are toy models: every row of notebooks 01 and 06, else rows whose text key columns
    (model, run, label, minuend, ...) name a toy run."""
    if table.startswith(TOY_NOTEBOOKS):
        return np.ones(len(keyed), bool)
    toy = np.zeros(len(keyed), bool)
    for c in keys:
        if keyed[c].dtype == object:
            toy |= keyed[c].astype(str).str.contains(TOY_NAME).to_numpy()
    return toy


def _with_occurrence(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Key columns as text plus '#', the occurrence of a key (rows sharing a key are matched in order)."""
    out = df.copy()
    for c in keys:
        out[c] = _key_text(out[c])
    out["#"] = out.groupby(keys, sort=False, dropna=False).cumcount() if keys else np.arange(len(out))
    return out


def compare_tables(table: str, committed: pd.DataFrame, run: pd.DataFrame) -> Result:
    """Compare one table; Result.line names the worst difference beyond tolerance."""
    keys, values = split_columns(table, committed)
    run_keys, run_values = split_columns(table, run)
    if set(keys) != set(run_keys) or set(values) != set(run_values):
        gone = sorted(set(keys + values) - set(run_keys + run_values))
        new = sorted(set(run_keys + run_values) - set(keys + values))
        moved = sorted((set(keys) ^ set(run_keys)) - set(gone) - set(new))
        return Result(table, "beyond", f"{table}: columns differ (missing {gone}, new {new}, "
                                       f"changed kind {moved})")
    if committed.equals(run):
        return Result(table, "identical")
    a, b = _with_occurrence(committed, keys), _with_occurrence(run, keys)
    m = a.merge(b, on=keys + ["#"], how="outer", suffixes=("", " run"), indicator=True)
    lost, extra = m[m["_merge"] == "left_only"], m[m["_merge"] == "right_only"]
    if len(lost) or len(extra):
        row = (lost if len(lost) else extra).iloc[0]
        return Result(table, "beyond", f"{table}: {len(lost)} committed rows missing from the run, {len(extra)} "
                                       f"rows new; first {'missing' if len(lost) else 'new'}: {_row(row, keys)}")
    both = m.reset_index(drop=True)
    toy = toy_rows(table, both, keys)
    identical, worst, n_beyond = True, None, []
    for c in values:
        x, y = both[c], both[f"{c} run"]
        if pd.api.types.is_float_dtype(x) and pd.api.types.is_numeric_dtype(y) \
                and not pd.api.types.is_bool_dtype(y):
            x, y = x.to_numpy(float), y.to_numpy(float)
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            if same.all():
                continue
            identical = False
            tol = np.zeros(len(x))
            for kind in (True, False):
                sel = toy == kind
                if sel.any():
                    t = tolerance(table, kind)
                    finite = np.abs(x[sel & np.isfinite(x)])
                    scale = finite.max() if len(finite) else 0.0
                    tol[sel] = t.rel * np.abs(x[sel]) + t.scale * scale
            tol += last_digit_unit(np.where(np.abs(x) > np.abs(y), x, y))
            with np.errstate(invalid="ignore"):
                diff = np.abs(x - y)
                over = ~same & ~(diff <= tol)            # NaN on one side only, or inf mismatch: beyond
                ratio = np.where(over & np.isfinite(diff), diff / np.maximum(tol, 1e-300), np.inf)
        else:
            x, y = _key_text(x).to_numpy(), _key_text(y).to_numpy()
            same = x == y
            if same.all():
                continue
            identical = False
            over = ~same & ~toy     # which token, which layer: exact for pretrained, a toy model's not compared
            ratio, tol = np.where(over, np.inf, 0.0), np.zeros(len(x))
        if over.any():
            n_beyond.append(c)
            i = int(np.argmax(np.where(over, ratio, -1)))
            if worst is None or ratio[i] > worst[0]:
                worst = (ratio[i], c, i, x[i], y[i], tol[i], bool(toy[i]), int(over.sum()))
    if worst is None:
        return Result(table, "identical" if identical else "within")
    _, c, i, xv, yv, tv, is_toy, count = worst
    others = [o for o in n_beyond if o != c]
    return Result(table, "beyond", f"{table}: column {c}, {count} rows beyond; worst {_row(both.iloc[i], keys)}: "
                                   f"committed {_value(xv)}, run {_value(yv)}, tolerance {tv:.3g} "
                                   f"({'toy' if is_toy else 'pretrained'})"
                                   + (f"; also beyond in {others}" if others else ""))


def _value(v) -> str:
    return f"{float(v):.7g}" if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else repr(v)


def _row(row: pd.Series, keys: list[str]) -> str:
    return "{" + ", ".join(f"{k}={row[k]}" for k in keys if row[k] != "") + "}"


def read(path: Path) -> pd.DataFrame:
    """A CSV as written (whole-file type inference: the same dtypes on both sides); an empty table
    (no columns: a notebook found nothing to tabulate) as an empty frame."""
    try:
        return pd.read_csv(path, low_memory=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def csv_tables(folder: Path, only: list[str] | None = None) -> dict[str, Path]:
    """'<notebook folder>/<name>.csv' -> path for every CSV under `folder` (of the notebooks `only`)."""
    found = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*.csv"))}
    return {k: p for k, p in found.items() if not only or any(k.startswith(n) for n in only)}


def compare_dirs(committed: str | Path, run: str | Path, only: list[str] | None = None) -> list[Result]:
    """Compare every table of `run` with `committed`; a table on one side only is a difference."""
    committed, run = Path(committed), Path(run)
    for folder in (committed, run):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder of figures (give e.g. figures/ and <out>/figures)")
    a, b = csv_tables(committed, only), csv_tables(run, only)
    results = []
    for table in sorted(set(a) | set(b)):
        if table not in b:
            results.append(Result(table, "missing", f"{table}: committed, but the run wrote no such table"))
        elif table not in a:
            results.append(Result(table, "extra", f"{table}: written by the run, not committed"))
        else:
            results.append(compare_tables(table, read(a[table]), read(b[table])))
    return results


def summary(results: list[Result]) -> str:
    n = {s: sum(r.status == s for r in results) for s in ("identical", "within", "beyond", "missing", "extra")}
    compared = n["identical"] + n["within"] + n["beyond"]
    return (f"{compared} tables compared: {n['identical']} identical, {n['within']} within tolerance, "
            f"{n['beyond']} beyond; {n['missing']} committed tables missing from the run, "
            f"{n['extra']} run tables not committed")


def failed(results: list[Result]) -> bool:
    return any(r.status in ("beyond", "missing", "extra") for r in results)


def report(results: list[Result], prefix: str = "", verbose: bool = False) -> list[str]:
    lines = [f"{prefix}{r.table}: {r.status}" if verbose and not r.line else f"{prefix}{r.line}"
             for r in results if r.line or verbose]
    return lines + [f"{prefix}{summary(results)}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tg_utils.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("committed", help="the committed figures folder (figures/)")
    ap.add_argument("run", help="the run's figures folder (<out>/figures)")
    ap.add_argument("--only", nargs="+", metavar="NN", help="only the tables of these notebooks (e.g. 03 04)")
    ap.add_argument("--no-fail", action="store_true", help="exit 0 even when tables differ beyond tolerance")
    ap.add_argument("--verbose", action="store_true", help="one line for every table, also those that agree")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        results = compare_dirs(args.committed, args.run, args.only)
    except FileNotFoundError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    for line in report(results, verbose=args.verbose):
        print(line)
    print(f"compare: done in {time.perf_counter() - t0:.1f} s")
    return 1 if failed(results) and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())

"""Tidy result tables under <out_dir>/results/<notebook>/, written atomically.

The long form every metric table uses: one row per (model, revision, prompt_id, shuffle_index,
layer, metric) with its value, so any figure can be redrawn with one groupby."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .paths import OutputDirs, atomic_path

LONG_COLUMNS = ["model", "revision", "prompt_id", "shuffle_index", "layer", "metric", "value"]


def check_long(df: pd.DataFrame) -> pd.DataFrame:
    """Raise if `df` is not in the long form (the columns above, numeric value, no missing keys)."""
    missing = [c for c in LONG_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"long table lacks columns {missing}; it needs {LONG_COLUMNS}")
    if not pd.api.types.is_numeric_dtype(df["value"]):
        raise ValueError("long table: column 'value' must be numeric")
    if df[LONG_COLUMNS[:-1]].isna().any().any():
        raise ValueError("long table: key columns must not be missing (use '' for no revision)")
    return df


def save_table(df: pd.DataFrame, notebook: str, name: str, out_dir: str | Path = "outputs",
               long: bool = False) -> Path:
    """Write `df` as <out_dir>/results/<notebook>/<name>.csv (checked for the long form if `long`)."""
    if long:
        check_long(df)
    path = OutputDirs.at(out_dir).results(notebook) / f"{name}.csv"
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def load_table(notebook: str, name: str, out_dir: str | Path = "outputs") -> pd.DataFrame:
    path = OutputDirs.at(out_dir).results(notebook) / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebook {notebook} first "
                                f"(bash run_all.sh --only {notebook[:2]})")
    return pd.read_csv(path)

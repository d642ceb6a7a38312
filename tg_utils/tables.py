"""Tidy result tables under <out_dir>/results/<notebook>/, written atomically, and the one CSV writer
(write_csv) of every table and figure CSV: floats at a fixed number of significant digits.

The long form every metric table uses: one row per (model, revision, prompt_id, shuffle_index,
layer, metric) with its value, so any figure can be redrawn with one groupby."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .paths import OutputDirs, atomic_path

LONG_COLUMNS = ["model", "revision", "prompt_id", "shuffle_index", "layer", "metric", "value"]

# Significant digits of every float written to a CSV. 6 is FLT_DIG, the decimal digits a float32 carries
# faithfully: our states are float32, so a 7th digit is float noise (~1e-7 relative, and 1e-8 between runs
# that differ only in summation order); it is dropped, and noise of 1e-7 (1e-8) changes the written value
# only where it straddles a rounding boundary, in 1-10 % (0.1-1 %) of values. Real changes stay visible:
# one unit in the 6th digit is 1e-6..1e-5 relative, at or below the ~1e-5 agreement of pretrained-model
# tables across machines and 10x below the comparison's pretrained tolerance (tg_utils.compare), so a
# rounding flip can never fail that comparison, and any change it can see shows in the CSV.
SIGNIFICANT_DIGITS = 6
_EXACT_INTEGRAL = 2.0 ** 53     # integral floats below this are written exactly (counts in NaN-holding columns)


def format_float(x: float, digits: int = SIGNIFICANT_DIGITS) -> str:
    """`x` as CSV text at `digits` significant digits: '' for NaN (pandas' missing value), 'inf' and
    '-inf', integral values exactly ('3.0', so the column reads back as float), else '%.{digits}g'."""
    x = float(x)
    if math.isnan(x):
        return ""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < _EXACT_INTEGRAL:
        return f"{int(x)}.0" if x != 0 or math.copysign(1, x) > 0 else "-0.0"
    text = f"{x:.{digits}g}"
    return text if ("." in text or "e" in text) else text + ".0"


def rounded(df: pd.DataFrame, digits: int = SIGNIFICANT_DIGITS) -> pd.DataFrame:
    """A copy of `df` whose float cells (float columns, and floats inside object columns) are their
    CSV text at `digits` significant digits; integers, booleans and strings are left as they are."""
    if not isinstance(digits, int) or not 1 <= digits <= 17:
        raise ValueError(f"digits must be an integer from 1 to 17 (a float64 holds 17), not {digits!r}")
    out = df.copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_float_dtype(s):
            out[col] = [format_float(v, digits) for v in s.to_numpy(dtype=float)]
        elif s.dtype == object:
            out[col] = [format_float(v, digits) if isinstance(v, (float, np.floating)) else v for v in s]
    return out


def write_csv(df: pd.DataFrame, path: str | Path, digits: int = SIGNIFICANT_DIGITS) -> Path:
    """Write `df` (without its index) to `path` atomically, floats at `digits` significant digits:
    the same numbers give the same bytes, and float noise below that precision does not show."""
    path = Path(path)
    text = rounded(df, digits)
    with atomic_path(path) as tmp:
        text.to_csv(tmp, index=False)
    return path


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
    """Write `df` as <out_dir>/results/<notebook>/<name>.csv (checked for the long form if `long`),
    floats at SIGNIFICANT_DIGITS (write_csv). No notebook reads a result table back to compute from it
    (load_table is for the user), so the rounding changes no downstream number."""
    if long:
        check_long(df)
    return write_csv(df, OutputDirs.at(out_dir).results(notebook) / f"{name}.csv")


def load_table(notebook: str, name: str, out_dir: str | Path = "outputs") -> pd.DataFrame:
    path = OutputDirs.at(out_dir).results(notebook) / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebook {notebook} first "
                                f"(bash run_all.sh --only {notebook[:2]})")
    return pd.read_csv(path)

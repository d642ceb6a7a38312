"""tg_utils.compare: a run's figure tables against the committed ones, rows matched by key, a tolerance
per kind of number (pretrained tight, toy by spread), timing columns ignored, and the runner's summary."""
from pathlib import Path

import numpy as np
import pandas as pd

from tg_utils import compare as C
from tg_utils.runner import print_comparison, reference_figures
from tg_utils.tables import write_csv

PROFILES = "03_geometry_metrics/profiles.csv"
LOSS = "01_train_toy_models/loss_curves.csv"


def profiles() -> pd.DataFrame:
    """Pretrained and toy rows in one table, as notebook 03 writes them (ID ~ 10, a scale of 12)."""
    rows = [{"model": m, "label": lab, "layer": layer, "metric": "id", "mean": 10.0 + layer * 0.5 + k}
            for k, (m, lab) in enumerate([("smollm2-135m", "smollm2-135m"),
                                          ("toy:llama-preln", "llama-preln (trained)")])
            for layer in range(4)]
    return pd.DataFrame(rows)


def loss() -> pd.DataFrame:
    return pd.DataFrame({"run": ["llama-preln"] * 3, "step": [0, 10, 20], "value": [6.0, 4.0, 3.0],
                         "wall_s": [0.1, 5.0, 9.0]})


def write(folder: Path, tables: dict[str, pd.DataFrame]) -> Path:
    for name, df in tables.items():
        write_csv(df, folder / name)
    return folder


def scaled(df: pd.DataFrame, model: str, factor: float, col: str = "mean") -> pd.DataFrame:
    out = df.copy()
    out.loc[out["model"] == model, col] *= factor
    return out


def one(committed: pd.DataFrame, run: pd.DataFrame, table: str = PROFILES) -> C.Result:
    return C.compare_tables(table, committed, run)


def test_identical_and_reordered_rows_are_identical():
    df = profiles()
    assert one(df, df).status == "identical"
    assert one(df, df.sample(frac=1, random_state=0)).status == "identical"   # matched by key, not order


def test_pretrained_rows_are_tight():
    df = profiles()
    assert one(df, scaled(df, "smollm2-135m", 1 + 2e-5)).status == "within"
    r = one(df, scaled(df, "smollm2-135m", 1 + 1e-3))
    assert r.status == "beyond"
    # the line names the table, the column, the worst row, both values and the tolerance
    assert r.line.startswith(f"{PROFILES}: column mean, 4 rows beyond; worst {{model=smollm2-135m")
    assert "layer=3" in r.line and "committed 11.5, run 11.5115" in r.line and "(pretrained)" in r.line


def test_toy_rows_by_the_toy_tolerance():
    df = profiles()                              # toy ID ~ 11..12.5: tolerance 0.15 x 12.5 = 1.9
    assert one(df, scaled(df, "toy:llama-preln", 1.1)).status == "within"
    r = one(df, scaled(df, "toy:llama-preln", 1.3))
    assert r.status == "beyond" and "(toy)" in r.line and "model=toy:llama-preln" in r.line
    # the same relative change in a pretrained row is far beyond
    assert one(df, scaled(df, "smollm2-135m", 1.1)).status == "beyond"


def test_per_table_toy_tolerance_and_all_toy_notebooks():
    df = loss()                                  # notebook 01: every row toy, 15 % relative (the seed spread)
    assert C.TOY[LOSS] == C.Tolerance(rel=0.15)
    assert one(df, df.assign(value=df["value"] * 1.14), LOSS).status == "within"
    assert one(df, df.assign(value=df["value"] * 1.16), LOSS).status == "beyond"


def test_toy_tolerances_are_the_measured_seed_spread_with_margin():
    for table, spread in C._SEED_SPREAD.items():
        assert C.tolerance(table, toy=True) == C.Tolerance(rel=0.0, scale=round(C.SEED_MARGIN * spread, 3))
        assert C.tolerance(table, toy=False) in (C.PRETRAINED, *C.PRETRAINED_BY_TABLE.values())
    assert C.tolerance("05_model_comparison/new_table.csv", toy=True) == C.TOY_DEFAULT
    umap = "07_attention_geometry/phrase_trajectories.csv"
    assert C.tolerance(umap, toy=False).scale == 0.025 and C.tolerance("x/y.csv", toy=False) == C.PRETRAINED


def test_timing_columns_are_ignored():
    df = loss()
    assert one(df, df.assign(wall_s=[3.0, 70.0, 1.0]), LOSS).status == "identical"
    assert all(map(C.is_timing, ["elapsed_s", "train_time_s", "seconds", "peak_rss_gib", "finished"]))
    assert not C.is_timing("s_ref") and not C.is_timing("shuffle_index")


def test_missing_and_extra_rows_and_columns():
    df = profiles()
    r = one(df, df.drop(index=2))
    assert r.status == "beyond" and "1 committed rows missing from the run, 0 rows new" in r.line
    assert "layer=2" in r.line
    extra = pd.concat([df, df.iloc[[0]].assign(layer=9)])
    assert "0 committed rows missing from the run, 1 rows new" in one(df, extra).line
    r = one(df, df.drop(columns="mean"))
    assert r.status == "beyond" and "columns differ (missing ['mean']" in r.line


def test_nan_on_one_side_is_beyond():
    df = profiles()
    run = df.copy()
    run.loc[0, "mean"] = np.nan
    assert one(df, run).status == "beyond"


def test_text_values_exact_for_pretrained_not_compared_for_toy():
    table = "07_attention_geometry/ellipse_probe.csv"    # token: a result (VALUE_COLUMNS), not a key
    df = pd.DataFrame({"model": ["smollm2-135m", "toy:llama-preln@160"], "rank": [0, 0],
                       "token": [" the", " a"], "token_id": [5, 7], "score": [1.0, 2.0]})
    toy_changed = df.assign(token=[" the", " of"], token_id=[5, 9])
    assert one(df, toy_changed, table).status == "within"
    assert one(df, df.assign(token=[" of", " a"]), table).status == "beyond"


def test_dirs_missing_and_extra_tables_and_exit_status(tmp_path, capsys):
    committed = write(tmp_path / "c", {PROFILES: profiles(), LOSS: loss()})
    same = write(tmp_path / "same", {PROFILES: profiles(), LOSS: loss()})
    assert C.main([str(committed), str(same)]) == 0
    assert "2 tables compared: 2 identical, 0 within tolerance, 0 beyond" in capsys.readouterr().out

    within = write(tmp_path / "within", {PROFILES: scaled(profiles(), "toy:llama-preln", 1.05), LOSS: loss()})
    assert C.main([str(committed), str(within)]) == 0
    assert "2 tables compared: 1 identical, 1 within tolerance, 0 beyond" in capsys.readouterr().out

    beyond = write(tmp_path / "beyond", {PROFILES: scaled(profiles(), "smollm2-135m", 1.01), LOSS: loss()})
    assert C.main([str(committed), str(beyond)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"{PROFILES}: column mean") and "1 beyond" in out
    assert C.main([str(committed), str(beyond), "--no-fail"]) == 0
    capsys.readouterr()

    empty = write(tmp_path / "empty", {PROFILES: pd.DataFrame()})    # a notebook with nothing to tabulate
    assert [r.status for r in C.compare_dirs(empty, empty)] == ["identical"]
    assert [r.status for r in C.compare_dirs(committed, empty, ["03"])] == ["beyond"]

    partial = write(tmp_path / "partial", {PROFILES: profiles(), "03_geometry_metrics/new.csv": loss()})
    results = C.compare_dirs(committed, partial)
    assert {r.table: r.status for r in results} == {PROFILES: "identical", LOSS: "missing",
                                                     "03_geometry_metrics/new.csv": "extra"}
    assert C.failed(results)
    assert C.main([str(committed), str(partial), "--only", "03"]) == 1     # the extra table of 03
    assert "1 run tables not committed" in capsys.readouterr().out
    assert C.compare_dirs(committed, partial, ["01"])[0].status == "missing"
    assert C.main([str(committed), str(tmp_path / "nowhere")]) == 2
    assert "is not a folder of figures" in capsys.readouterr().err


def test_committed_figures_agree_with_themselves():
    figures = Path(__file__).resolve().parents[1] / "figures"
    results = C.compare_dirs(figures, figures)
    assert results and all(r.status == "identical" for r in results)


def test_runner_prints_the_summary_and_never_fails(tmp_path, capsys):
    committed = write(tmp_path / "c", {PROFILES: profiles()})
    run = write(tmp_path / "run", {PROFILES: scaled(profiles(), "smollm2-135m", 1.01)})
    nbs = [Path("notebooks/03_geometry_metrics.ipynb")]
    print_comparison(committed, run, nbs, "default")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"[compare] {PROFILES}: column mean") and "1 beyond" in out[-1]
    print_comparison(None, run, nbs, "smoke")
    assert "come from the default profile, this run used smoke" in capsys.readouterr().out
    print_comparison(tmp_path / "nowhere", run, nbs, "default")          # reported, not raised
    assert "the comparison with the committed figures failed" in capsys.readouterr().out


def test_reference_is_a_copy_when_the_run_writes_into_figures(tmp_path):
    figures = Path(__file__).resolve().parents[1] / "figures"
    assert reference_figures(tmp_path / "elsewhere", tmp_path) == figures
    copy = reference_figures(figures, tmp_path)
    assert copy == tmp_path / "committed_figures"
    names = sorted(p.relative_to(copy) for p in copy.rglob("*.csv"))
    assert names == sorted(p.relative_to(figures) for p in figures.rglob("*.csv")) and names


def test_the_writers_rounding_is_always_within_the_pretrained_tolerance(tmp_path):
    """A run that differs from the committed numbers only below the CSV's precision passes: one unit in
    the 6th significant digit is at most 1e-5 relative, under the pretrained 1e-4."""
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"model": "smollm2-135m", "layer": np.arange(500),
                       "mean": rng.standard_normal(500) * 10.0 ** rng.integers(-6, 6, 500)})
    rounded = pd.read_csv(write_csv(df, tmp_path / "r.csv"))
    assert one(df, rounded).status == "within"

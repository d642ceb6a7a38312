import json

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from tg_utils.figures import save_figure
from tg_utils.tables import LONG_COLUMNS, check_long, save_table


def test_save_figure_writes_files_caption_and_gallery(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    data = pd.DataFrame({"x": [0, 1], "y": [1, 0]})
    png = save_figure(fig, "03_geometry_metrics", "line", "A line going down.", data, figures_dir=tmp_path)
    folder = tmp_path / "03_geometry_metrics"
    assert png == folder / "line.png" and png.stat().st_size > 1000
    assert (folder / "line.pdf").exists()
    assert pd.read_csv(folder / "line.csv").equals(data)
    assert json.loads((folder / "captions.json").read_text()) == {"line": "A line going down."}
    readme = (tmp_path / "README.md").read_text()
    assert "![line](03_geometry_metrics/line.png)" in readme and "A line going down." in readme
    assert "notebooks/03_geometry_metrics.ipynb" in readme
    with pytest.raises(ValueError, match="one non-empty line"):
        save_figure(fig, "03_geometry_metrics", "bad", "two\nlines", figures_dir=tmp_path)
    plt.close(fig)


def test_long_tables(tmp_path):
    df = pd.DataFrame([{"model": "m", "revision": "", "prompt_id": 0, "shuffle_index": 0, "layer": 1,
                        "metric": "id", "value": 3.0}])
    path = save_table(df, "04_shuffle_experiment", "metrics", tmp_path, long=True)
    assert list(pd.read_csv(path).columns) == LONG_COLUMNS
    with pytest.raises(ValueError, match="lacks columns"):
        check_long(df.drop(columns="layer"))
    with pytest.raises(ValueError, match="must be numeric"):
        check_long(df.assign(value="x"))


def test_saving_a_figure_twice_gives_identical_bytes(tmp_path):
    """No timestamps in PDF or PNG and floats at a fixed precision in the CSV: a re-run leaves committed
    figures unchanged (the saves are more than a second apart, so a creation date would differ)."""
    import time
    fig, ax = plt.subplots()
    ax.plot([1, 3, 2], label="a")
    ax.legend()
    data = pd.DataFrame({"step": [0, 1, 2], "value": [1 / 3, 3.0, 2 / 7]})
    save_figure(fig, "01_x", "f", "a caption", data, figures_dir=tmp_path)
    first = {p.name: p.read_bytes() for p in (tmp_path / "01_x").iterdir()}
    time.sleep(1.1)
    noisy = data.assign(value=data["value"] * (1 + 1e-9))     # float noise in the numbers: the same CSV
    save_figure(fig, "01_x", "f", "a caption", noisy, figures_dir=tmp_path)
    second = {p.name: p.read_bytes() for p in (tmp_path / "01_x").iterdir()}
    plt.close(fig)
    assert first == second and {"f.png", "f.pdf", "f.csv"} <= set(first)
    assert first["f.csv"] == b"step,value\n0,0.333333\n1,3.0\n2,0.285714\n"

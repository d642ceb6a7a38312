"""Interactive figure pages (plots.interactive, figures.save_figure(page=...)): valid HTML that loads the one
shared plotly.js by a relative path, holding exactly the numbers of the figure's CSV (read back from the
page's JSON), linked from the gallery; and the static-figure fixes (legend outside, layer 0 clipped, panel grid)."""
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from tg_utils.figures import PLOTLY_JS, as_written, ensure_plotly_js, save_figure
from tg_utils.plots import interactive, profiles, shuffle, style
from tg_utils.tables import rounded

VOID = {"meta", "link", "br", "img", "input", "hr", "area", "base", "col", "source", "wbr", "embed", "param", "track"}


class TagChecker(HTMLParser):
    """Collects problems: a closing tag that does not close the innermost open element, or elements left open."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.scripts, self.title = [], [], [], ""

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:                    # <meta ... /> ends itself
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "title":
            self.title += data


def check_page(path: Path) -> str:
    """Assert `path` is a well-formed HTML page whose scripts are the shared plotly.js (present, relative)
    and inline code; return its text."""
    text = path.read_text(encoding="utf-8")
    assert text.lower().startswith("<!doctype html>")
    checker = TagChecker()
    checker.feed(text)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert checker.title.strip() == path.stem
    srcs = [s["src"] for s in checker.scripts if "src" in s]
    assert srcs == [f"../{PLOTLY_JS}"]                    # one script file, by a relative path: opens offline
    assert (path.parent / srcs[0]).resolve().is_file()
    assert "cdn" not in text.lower()
    return text


def same_numbers(page: pd.DataFrame, csv: Path, keep=None):
    """The page's rows, written as the CSV writer writes them, are the CSV's rows (in any order); `keep`: a
    mask over the CSV's rows (a page holding one model)."""
    lines = csv.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    if keep is not None:
        rows = [r for r, k in zip(rows, keep) if k]
    mine = rounded(page[header.split(",")]).to_csv(index=False).splitlines()
    assert mine[0] == header
    assert sorted(mine[1:]) == sorted(rows) and len(rows) > 0


def summary_table(layer0: float = 40.0) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for lab, model, n in (("a (trained)", "toy:a", 4), ("b-model", "b", 6)):
        for metric in ("id", "cos_full"):
            for layer in range(n + 1):
                mean = (layer0 if layer == 0 and metric == "id" else 2 + rng.random()) / 3 ** (metric != "id")
                low, high = (np.nan, np.nan) if layer == 2 else (mean - 0.1 * rng.random(), mean + 0.1)
                rows.append(dict(model=model, revision="", shuffle_index=0, metric=metric, layer=layer,
                                 mean=mean + 1e-9 * rng.random(), low=low, high=high, n_prompts=5, n_layers=n,
                                 relative_depth=layer / n, label=lab))
    return pd.DataFrame(rows)


def test_profile_page_holds_the_csv_numbers_and_is_linked(tmp_path):
    df = summary_table()
    fig, tidy = profiles.plot_profiles(df, ["id", "cos_full"], x="relative_depth")
    save_figure(fig, "03_x", "prof", "Profiles.", tidy, tmp_path, page=interactive.profile_page)
    plt.close(fig)
    page = tmp_path / "03_x" / "prof.html"
    text = check_page(page)
    table = interactive.page_table(text)
    same_numbers(table, tmp_path / "03_x" / "prof.csv")
    assert table["layer"].dtype == np.int64 and table["low"].isna().sum() == 4
    data, layout = interactive.page_figure(text)
    lines = [t for t in data if isinstance(t.get("meta"), dict) and "axes" in t["meta"]]
    assert len(lines) == 4                                            # 2 labels x 2 metrics
    assert all("95 % interval" in t["hovertemplate"] and t["meta"]["const"]["label"] in t["hovertemplate"]
               for t in lines)
    assert sum(t.get("fill") == "toself" for t in data) == 4          # one band per line, no hover of its own
    y_id, y_cos = layout["yaxis"], layout["yaxis2"]
    assert y_id["range"][1] < 10 and "range" not in y_cos               # ID opens on layers >= 1, as the PNG
    assert "layer 0 off scale" in layout["annotations"][0]["text"]
    readme = (tmp_path / "README.md").read_text()
    assert "Interactive: [page](03_x/prof.html)." in readme
    assert ensure_plotly_js(tmp_path) == tmp_path / PLOTLY_JS


def test_shuffle_page_from_the_shuffle_figure(tmp_path):
    rows = []
    for pid in range(3):
        for s in (0, 2):
            for layer in range(1, 5):
                rows.append(dict(model="m", revision="r1", prompt_id=pid, shuffle_index=s, layer=layer,
                                 metric="id", value=1 + layer * (s + 1) / 7 + pid / 11))
    long = pd.DataFrame(rows)
    summary = (long.groupby(["model", "revision", "shuffle_index", "metric", "layer"], as_index=False)
               .value.agg(mean="mean", low="min", high="max", n_prompts="count"))
    fig, tidy = shuffle.plot_shuffle_profiles(long, summary, "id", show_prompts=2)
    save_figure(fig, "04_x", "id_by_s", "By S.", tidy, tmp_path, page=interactive.shuffle_page)
    plt.close(fig)
    text = check_page(tmp_path / "04_x" / "id_by_s.html")
    table = interactive.page_table(text)
    same_numbers(table, tmp_path / "04_x" / "id_by_s.csv")
    assert set(table["panel"]) == {"prompt 0", "prompt 1", "mean"}


def trajectory_table() -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(1)
    for model, label, n_layers, tokens in (("toy:a@10", "a (toy)", 3, ["To", " NA", "é"]),
                                           ("gemma3-270m", "gemma3-270m", 5, ["x", " y"])):
        for p, tok in enumerate(tokens):
            for stage in ("embedding", "embedding + position"):
                rows.append(dict(stage=stage, layer=0, position=p, token=tok, x=rng.normal(), y=rng.normal(),
                                 z=rng.normal(), model=model, label=label))
            for layer in range(n_layers + 1):
                rows.append(dict(stage=interactive.STAGE_NORMED, layer=layer, position=p, token=tok,
                                 x=rng.normal() / 3, y=rng.normal(), z=rng.normal(), model=model, label=label))
    return pd.DataFrame(rows)


def test_trajectory_pages_one_per_model_with_the_csv_numbers(tmp_path):
    df = trajectory_table()
    fig, ax = plt.subplots()
    bg = {"gemma3-270m": np.arange(30, dtype=float).reshape(10, 3)}
    save_figure(fig, "07_x", "traj", "Trajectories.", df, tmp_path,
                page=lambda t: interactive.trajectory_pages(t, bg))
    plt.close(fig)
    folder = tmp_path / "07_x"
    pages = sorted(p.name for p in folder.glob("*.html"))
    assert pages == ["traj.a-toy.html", "traj.gemma3-270m.html"]
    full = pd.read_csv(folder / "traj.csv", keep_default_na=False)
    for name, label, n_tokens, n_layers in (("traj.a-toy.html", "a (toy)", 3, 3),
                                            ("traj.gemma3-270m.html", "gemma3-270m", 2, 5)):
        text = check_page(folder / name)
        table = interactive.page_table(text)
        assert set(table["label"]) == {label}
        same_numbers(table, folder / "traj.csv", keep=full["label"] == label)
        data, _ = interactive.page_figure(text)
        paths = [t for t in data if t.get("meta", {}).get("const", {}).get("stage") == interactive.STAGE_NORMED]
        assert len(paths) == n_tokens                                  # one trace per token, toggled in the legend
        assert all(t["text"] == [str(v) for v in range(n_layers + 1)] for t in paths)   # markers numbered by layer
        assert all("layer %{customdata[0]}" in t["hovertemplate"] for t in paths)
        assert sum(t.get("name") == "embedding rows" for t in data) == (label == "gemma3-270m")
    assert ("Interactive: [a-toy](07_x/traj.a-toy.html), [gemma3-270m](07_x/traj.gemma3-270m.html)."
            in (tmp_path / "README.md").read_text())
    # a later save with fewer models removes the page it no longer writes
    save_figure(plt.figure(), "07_x", "traj", "Trajectories.", df[df.label == "a (toy)"], tmp_path,
                page=interactive.trajectory_pages)
    assert sorted(p.name for p in folder.glob("*.html")) == ["traj.a-toy.html"]


def test_pages_are_byte_stable_and_plotly_js_is_written_once(tmp_path):
    df = summary_table()
    for _ in range(2):
        fig = plt.figure()
        save_figure(fig, "03_x", "p", "P.", df, tmp_path, page=interactive.profile_page)
        plt.close(fig)
        if _ == 0:
            first = (tmp_path / "03_x" / "p.html").read_bytes()
            js = tmp_path / PLOTLY_JS
            stamp = js.stat().st_mtime_ns
    assert (tmp_path / "03_x" / "p.html").read_bytes() == first
    assert js.stat().st_mtime_ns == stamp                              # unchanged: not written again
    js.write_text("stale")
    ensure_plotly_js(tmp_path)
    assert js.stat().st_size > 1_000_000 and js.read_text(encoding="utf-8").lstrip().startswith("/**")


def test_page_needs_the_table_and_page_table_needs_a_plotly_page(tmp_path):
    with pytest.raises(ValueError, match="pass data"):
        save_figure(plt.figure(), "03_x", "p", "P.", None, tmp_path, page=interactive.profile_page)
    with pytest.raises(ValueError, match="not a plotly page"):
        interactive.page_table("<html><body>nothing</body></html>")


def test_as_written_gives_the_csv_floats():
    df = pd.DataFrame({"a": [1 / 3, np.nan, 2.0], "n": [1, 2, 3], "s": ["x", "NA", ""]})
    out = as_written(df)
    assert out["a"].iloc[0] == 0.333333 and np.isnan(out["a"].iloc[1]) and out["n"].tolist() == [1, 2, 3]
    assert out["s"].tolist() == ["x", "NA", ""]


def test_static_profiles_clip_a_far_layer0_and_keep_the_legend_outside():
    fig, _ = profiles.plot_profiles(summary_table(layer0=40.0), ["id", "cos_full"], x="relative_depth")
    ax_id, ax_cos = fig.axes[:2]
    assert ax_id.get_ylim()[1] < 10                                  # layers >= 1 (2..3) fill the axis
    marks = [ln for ln in ax_id.get_lines() if ln.get_marker() == "^"]
    assert len(marks) == 2 and all(ln.get_ydata()[0] == ax_id.get_ylim()[1] for ln in marks)
    assert any("layer 0: 40" in t.get_text() for t in ax_id.texts)
    assert not [ln for ln in ax_cos.get_lines() if ln.get_marker() == "^"]   # cosine: layer 0 within scale
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a (trained)", "b-model"]
    plt.close(fig)
    fig, _ = profiles.plot_profiles(summary_table(layer0=3.0), ["id"], x="relative_depth")
    assert fig.axes[0].get_ylim()[1] > 3.0 and not fig.axes[0].texts    # a near layer 0 is drawn as it is
    plt.close(fig)


def test_panel_grid_wraps_to_three_columns():
    fig, axes = style.panel_grid(5)
    assert axes.shape == (2, 3) and not axes[1][2].axison and axes[1][1].axison
    assert fig.get_size_inches()[0] < 12.5
    plt.close(fig)

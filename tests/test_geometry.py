"""The geometry table cache (tg_utils.geometry through tg_utils.store): the table read back equals the
one computed (values, dtypes, revision "" as ""); a cached table that is truncated, edited or replaced
by other bytes is reported in one line naming it and recomputed with the original numbers; a spec with
its revision ('name@rev') and the same spec with revision= name the same table. No network: a tiny
randomly initialised model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tg_utils.geometry import GEOMETRY_VERSION, TABLE_COLUMNS, geometry_table
from tg_utils.tables import LONG_COLUMNS
from tg_utils.tables import check_long

from test_models import as_loaded, tiny_hf

RNG = np.random.default_rng(0)
PROMPTS = [RNG.integers(5, 250, 12).tolist() for _ in range(3)]


@pytest.fixture(scope="module")
def tiny_lm(word_tokenizer, one_thread):
    return as_loaded(tiny_hf("llama", vocab=len(word_tokenizer)), spec="tiny-llama", tokenizer=word_tokenizer)


def table(tmp_path, lm, **kw):
    return geometry_table("tiny-llama", PROMPTS, tmp_path, k_max=4, progress=False, lm=lm, **kw)


def entry(tmp_path):
    folders = [p for p in (tmp_path / "cache" / "geometry").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1, folders
    return folders[0]


def test_read_back_equals_computed(tmp_path, tiny_lm, capsys):
    computed = table(tmp_path, tiny_lm)
    check_long(computed)
    assert list(computed.columns) == TABLE_COLUMNS and (computed.revision == "").all()
    assert TABLE_COLUMNS == LONG_COLUMNS         # geometry (layer 3) may not import tables (layer 5): kept equal here
    assert computed.value.dtype == np.float64 and computed.value.isna().sum() == 0
    back = table(tmp_path, tiny_lm)
    pd.testing.assert_frame_equal(back, computed, check_exact=True)
    assert (back.revision == "").all() and capsys.readouterr().out == ""
    assert GEOMETRY_VERSION >= 2                          # the CSV tables of version 1 are never read


def test_nan_values_round_trip(tmp_path, tiny_lm):
    """A cloud with repeated tokens lacks some GRIDE scales (NaN): NaN stays NaN and `value` stays float."""
    rep = [[7] * 6 + p[:6] for p in PROMPTS]
    computed = geometry_table("tiny-llama", rep, tmp_path, k_max=4, progress=False, lm=tiny_lm)
    back = geometry_table("tiny-llama", rep, tmp_path, k_max=4, progress=False, lm=tiny_lm)
    assert computed.value.isna().any()                    # the largest scale, id_s4, is undefined
    pd.testing.assert_frame_equal(back, computed, check_exact=True)
    assert back.value.dtype == np.float64


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _edit_one_value(path):
    df = pd.read_parquet(path)
    df.loc[3, "value"] = df.loc[3, "value"] + 1.0
    df.to_parquet(path, index=False)


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))


@pytest.mark.parametrize("damage", [_truncate, _edit_one_value, _random_bytes],
                         ids=["truncated", "one-value-edited", "random-bytes"])
def test_a_damaged_cached_table_is_reported_and_recomputed(tmp_path, tiny_lm, capsys, damage):
    original = table(tmp_path, tiny_lm)
    folder = entry(tmp_path)
    damage(folder / "table.parquet")
    capsys.readouterr()
    again = table(tmp_path, tiny_lm)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and str(folder) in out[0] and "recomputing" in out[0], out
    pd.testing.assert_frame_equal(again, original, check_exact=True)
    # the recomputed table was stored again: the next read is silent and equal
    pd.testing.assert_frame_equal(table(tmp_path, tiny_lm), original, check_exact=True)
    assert capsys.readouterr().out == ""


def test_revision_in_the_spec_or_apart_names_one_table(tmp_path, tiny_lm, capsys):
    at = geometry_table("tiny-llama@r1", PROMPTS, tmp_path, k_max=4, progress=False, lm=tiny_lm)
    assert set(at.model) == {"tiny-llama"} and set(at.revision) == {"r1"}
    apart = geometry_table("tiny-llama", PROMPTS, tmp_path, k_max=4, progress=False, lm=tiny_lm, revision="r1")
    pd.testing.assert_frame_equal(apart, at, check_exact=True)
    assert len(list((tmp_path / "cache" / "geometry").iterdir())) == 1       # the second call read the first
    plain = table(tmp_path, tiny_lm)
    assert (plain.revision == "").all()
    np.testing.assert_array_equal(plain.value.to_numpy(), at.value.to_numpy())


def test_labels_and_profile_figures():
    """Legend labels as the tables name models (toy runs random / trained, others model@revision), and the
    profile figures of notebooks 02, 03 and 05 drawing a constructed table."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tg_utils.geometry import cosine_matrix, profile_summary
    from tg_utils.plots import profiles, style
    rng = np.random.default_rng(3)
    rows = []
    for model, rev in (("toy:x", "step0"), ("toy:x", "step9"), ("org/m", "r1"), ("smollm2-135m", "")):
        for p in range(3):
            for layer in range(4):
                for metric in ("cos_full", "id", "id_s1", "id_s2", "chi_1"):
                    if metric != "chi_1" or layer < 3:
                        rows.append((model, rev, p, 0, layer, metric, float(rng.random())))
    long = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    summary = style.with_labels(profile_summary(long, ("cos_full", "id", "chi_1"), n_boot=20))
    labels = list(dict.fromkeys(summary.label))
    assert labels == ["org/m@r1", "smollm2-135m", "x (random)", "x (trained)"]
    assert style.by_training(summary.label) == (["org/m@r1", "smollm2-135m", "x (trained)"], ["x (random)"])
    norms = pd.DataFrame({"model": "toy:x", "revision": "step9", "layer": range(4),
                          "relative_depth": np.arange(4) / 3, "mean_norm": [1.0, 2.0, 3.0, 2.0]})
    mats = {"x (trained)": {0: cosine_matrix(rng.normal(size=(5, 3))), 3: cosine_matrix(rng.normal(size=(5, 3)))}}
    for fig, tidy in (profiles.plot_norms(norms), profiles.plot_profiles(summary, ["cos_full", "id"]),
                      profiles.plot_differences(summary, [("x (trained)", "x (random)")], "id"),
                      profiles.plot_heatmaps(mats), profiles.plot_scale_curves(long, [("toy:x", "step9"), ("org/m", "r1")])):
        assert len(tidy)
        plt.close(fig)
    assert np.allclose(np.diag(mats["x (trained)"][0]), 1.0)


def test_layer_measures_in_the_table(tmp_path, tiny_lm):
    """measures=True adds the layer-wise measures per prompt and the pooled linearity (prompt -1), equal
    to the metrics functions on the same states; the plain table keeps its cache entry and rows."""
    import torch
    from tg_utils.extract import extract_states
    from tg_utils.geometry import MEASURE_METRICS, id_auto_scale, profile_layers
    from tg_utils.metrics.layerwise import layer_measures
    from tg_utils.metrics.similarity import linearity_profile
    plain = table(tmp_path, tiny_lm)
    full = table(tmp_path, tiny_lm, measures=True)
    check_long(full)
    assert len(list((tmp_path / "cache" / "geometry").iterdir())) == 2
    pd.testing.assert_frame_equal(full[full.metric.isin(plain.metric.unique())].reset_index(drop=True), plain)
    st = extract_states(tiny_lm, PROMPTS, layers=profile_layers(tiny_lm.desc), positions="all", progress=False)
    m = layer_measures(st.states[1].double())
    for name in MEASURE_METRICS:
        got = full[(full.prompt_id == 1) & (full.metric == name)].sort_values("layer").value.to_numpy()
        np.testing.assert_allclose(got, getattr(m, name), rtol=1e-6, atol=1e-9, equal_nan=True)
    pooled = torch.cat(list(st.states), dim=1).double()
    lin = full[(full.prompt_id == -1) & (full.metric == "linearity")].sort_values("layer").value.to_numpy()
    if pooled.shape[1] > pooled.shape[2] + 1:
        np.testing.assert_allclose(lin, linearity_profile(pooled), rtol=1e-6)
    else:
        assert np.isnan(lin).all() and len(lin) == pooled.shape[0] - 1
    auto = id_auto_scale(full)
    assert len(auto) == full.layer.max() + 1
    assert ((auto.n1_low <= auto.n1) & (auto.n1 <= auto.n1_high)).all()
    mean_s1 = full[full.metric == "id_s1"].groupby("layer").value.mean()
    one = auto[auto.n1 == 1]
    np.testing.assert_allclose(one.id_auto.to_numpy(), mean_s1.loc[one.layer].to_numpy())


def test_cross_layer_similarity_of_a_model_with_itself(tiny_lm):
    from tg_utils.extract import extract_states
    from tg_utils.geometry import cross_layer_similarity, profile_layers
    st = extract_states(tiny_lm, PROMPTS, layers=profile_layers(tiny_lm.desc), positions="all", progress=False)
    sim = cross_layer_similarity(st, st, "a", "a", k=3)
    for metric in ("cka", "mutual_knn"):
        diag = sim[(sim.metric == metric) & (sim.layer_a == sim.layer_b)].value
        np.testing.assert_allclose(diag, 1.0)
        assert sim[sim.metric == metric].value.between(0, 1 + 1e-12).all()
    short = extract_states(tiny_lm, [p[:8] for p in PROMPTS], layers=profile_layers(tiny_lm.desc), positions="all",
                           progress=False)
    with pytest.raises(ValueError, match="same tokens"):
        cross_layer_similarity(st, short, "a", "b")

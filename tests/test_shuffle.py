"""The shuffle experiment and model comparison (tg_utils.data.prompts, tg_utils.experiments.nb04/nb05,
tg_utils.plots.shuffle): the shuffled prompt sets built on prompts.shuffle_blocks (tested itself in test_corpus.py), N per context, the per-prompt peak
comparison, the ID-loss correlation, the summary table, and the long-table schema of every output.
No network: tiny randomly initialised models and constructed tables."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tg_utils.data.corpus import Article, Corpus
from tg_utils.data import prompts
from tg_utils.experiments import nb02_extract_states as nb02
from tg_utils.experiments import nb04_shuffle_experiment as nb04
from tg_utils.experiments import nb05_model_comparison as nb05
from tg_utils.experiments import nb04_findings
from tg_utils.findings import to_markdown
from tg_utils.geometry import geometry_table, profile_summary
from tg_utils.plots import profiles, shuffle as shuffle_plots
from tg_utils.params import ParameterError
from tg_utils.tables import LONG_COLUMNS, check_long

from conftest import SAMPLE_TEXTS
from test_models import as_loaded, tiny_hf

RNG = np.random.default_rng(0)
PROMPTS = [RNG.integers(5, 500, 64).tolist() for _ in range(4)]


# ----------------------------------------------------------------------------- shuffled prompt sets

def blocks(p, k):
    n = len(p) // k
    return [tuple(p[i * n:(i + 1) * n]) for i in range(k)]


@pytest.mark.parametrize("S", [1, 2, 3])
def test_shuffle_is_a_permutation_of_blocks_keeping_the_tokens(S):
    out = prompts.shuffled_prompts(PROMPTS, S, seed=3)
    k = 4 ** S
    for p, q in zip(PROMPTS, out):
        assert len(q) == len(p) and Counter(q) == Counter(p)             # the token multiset is kept
        assert sorted(blocks(q, k)) == sorted(blocks(p, k))              # whole blocks, reordered
    assert any(q != p for p, q in zip(PROMPTS, out))                      # something moved


def test_s0_is_the_identity_and_a_copy():
    out = prompts.shuffled_prompts(PROMPTS, 0, seed=3)
    assert out == PROMPTS
    out[0][0] = -1
    assert PROMPTS[0][0] != -1


def test_seeded_per_seed_prompt_and_s():
    a = prompts.shuffled_prompts(PROMPTS, 3, seed=1)
    assert a == prompts.shuffled_prompts(PROMPTS, 3, seed=1)                # same seed: same permutation
    assert a != prompts.shuffled_prompts(PROMPTS, 3, seed=2)                # another seed: another one
    same = [PROMPTS[0]] * 3                                                 # equal prompts, different ids
    outs = prompts.shuffled_prompts(same, 3, seed=1)
    assert len({tuple(o) for o in outs}) == 3
    # a prompt's permutation depends on its id, not on its position in the list
    assert prompts.shuffled_prompts([PROMPTS[2]], 3, 1, prompt_ids=[2])[0] == a[2]
    assert len({prompts.shuffle_seed(0, p, s) for p in range(5) for s in range(6)}) == 30


def test_bos_stays_first_and_is_not_shuffled():
    with_bos = [[2] + p for p in PROMPTS]
    out = prompts.shuffled_prompts(with_bos, 3, seed=0, keep_first=1)
    for p, q in zip(with_bos, out):
        assert q[0] == 2 and Counter(q) == Counter(p)
        assert sorted(blocks(q[1:], 64)) == sorted(blocks(p[1:], 64))
    assert [q[1:] for q in out] == prompts.shuffled_prompts(PROMPTS, 3, seed=0)   # same permutation of the text
    with pytest.raises(ValueError, match="divisible"):
        prompts.shuffled_prompts([[2] + PROMPTS[0][:60]], 2, seed=0, keep_first=1)


@pytest.mark.parametrize("context, n, special, expect", [
    (8192, 1024, 0, 1024), (32768, 1024, 1, 1024), (256, 1024, 0, 256), (1024, 1024, 1, 256),
    (48, 1024, 1, 16), (0, 1000, 0, 1000), (2048, 1000, 0, 1000)])
def test_prompt_length(context, n, special, expect):
    assert prompts.prompt_length(context, n, special) == expect


def test_usable_shuffle_indices():
    assert prompts.usable_shuffle_indices(1024, range(6)) == [0, 1, 2, 3, 4, 5]
    assert prompts.usable_shuffle_indices(256, [5, 0, 1, 2, 3, 4]) == [0, 1, 2, 3, 4]
    assert prompts.usable_shuffle_indices(48, range(6)) == [0, 1, 2]


@pytest.fixture(scope="module")
def tiny_lm(word_tokenizer):
    """A random tiny Llama (context 48) with a real tokenizer whose BOS is <bos>."""
    return as_loaded(tiny_hf("llama", vocab=len(word_tokenizer)), spec="tiny-llama", tokenizer=word_tokenizer)


@pytest.fixture(scope="module")
def tiny_corpus():
    arts = [Article(f"a{i}", t) for i, t in enumerate(SAMPLE_TEXTS)]
    return Corpus("tiny", {"train": [], "validation": [], "test": arts})


def test_builder_sizes_n_to_the_context_and_adds_windows(tiny_lm, tiny_corpus):
    sp = prompts.build_shuffle_prompts(tiny_lm, tiny_corpus, "test", 1024, 3, bos=False,
                                       shuffle_indices=range(6), seed=0)
    # context 48 < 1024: the largest power of 4 that fits, 16 (S = 0, 1, 2)
    assert sp.n_tokens == 16 and sp.shuffle_indices == [0, 1, 2] and sp.per_article == 1
    assert [len(p) for p in sp.ids] == [16] * 3 and sp.keep_first == 0
    fits = prompts.build_shuffle_prompts(tiny_lm, tiny_corpus, "test", 40, 3, False, range(6), 0)
    assert fits.n_tokens == 40 and fits.shuffle_indices == [0, 1]                    # 40 fits; 4 | 40, 16 does not
    more = prompts.build_shuffle_prompts(tiny_lm, tiny_corpus, "test", 16, 7, bos=False,
                                         shuffle_indices=[0, 1, 2], seed=0)
    assert more.per_article == 3 and len(more) == 7 and more.n_tokens == 16          # 3 articles: 3 windows
    assert more.ids[0] == sp.ids[0] and more.sources[:4] == ["a0#0", "a0#1", "a0#2", "a1#0"]
    assert more.info()["articles"] == 3
    with pytest.raises(ValueError, match="lower n_prompts"):
        prompts.build_shuffle_prompts(tiny_lm, tiny_corpus, "test", 16, 500, False, [0], 0, max_per_article=2)


def test_builder_with_bos(tiny_lm, tiny_corpus):
    bos = tiny_lm.desc.bos_token_id
    sp = prompts.build_shuffle_prompts(tiny_lm, tiny_corpus, "test", 1024, 3, bos=True,
                                       shuffle_indices=range(6), seed=5)
    assert sp.bos and sp.n_tokens == 16 and sp.shuffle_indices == [0, 1, 2]          # 48 - 1 -> 16
    for S in sp.shuffle_indices:
        for p, q in zip(sp.ids, sp.at(S)):
            assert len(q) == 17 and q[0] == bos and Counter(q) == Counter(p)
    assert sp.at(0) == sp.ids and sp.at(2) is sp.at(2)
    assert sp.at(2) == prompts.shuffled_prompts(sp.ids, 2, 5, keep_first=1)
    info = sp.info()
    assert info["positions"] == 17 and info["n_prompts"] == 3 and info["shuffle_indices"] == "0 1 2"


def test_geometry_at_every_s_schema_and_bos_left_out(tmp_path, tiny_lm, tiny_corpus):
    sp = prompts.build_shuffle_prompts(tiny_lm, tiny_corpus, "test", 32, 3, bos=True, shuffle_indices=[0, 1, 2],
                                       seed=0)
    assert sp.n_tokens == 32 and len(sp.ids[0]) == 33
    long = pd.concat([geometry_table("tiny-llama", sp.at(s), tmp_path, prompt_ids=sp.prompt_ids, shuffle_index=s,
                                     k_max=8, skip_first=sp.keep_first, progress=False, lm=tiny_lm)
                      for s in sp.shuffle_indices], ignore_index=True)
    check_long(long)
    assert list(long.columns) == LONG_COLUMNS and sorted(long.shuffle_index.unique()) == [0, 1, 2]
    # the clouds have N = 32 points, not 33: the largest GRIDE scale is n1 = 8 (n2 = 16 <= 31)
    assert "id_s8" in set(long.metric) and "id_s16" not in set(long.metric)
    # layer 0 holds the same token embeddings in another order: the same cloud at every S
    l0 = long[(long.metric == "id") & (long.layer == 0)].pivot(index="prompt_id", columns="shuffle_index",
                                                                values="value")
    assert np.allclose(l0[0], l0[1]) and np.allclose(l0[0], l0[2])
    for out in (nb04.peaks_long(nb04.peaks(long)), nb04.comparison_long(nb04.peak_comparison(long)),
                nb04.correlation_long(nb04.id_loss_correlation(long)),
                nb04.correlation_long(nb04.id_loss_correlation(long, pooled=True))):
        check_long(out)
        assert list(out.columns) == LONG_COLUMNS and len(out)


def test_geometry_without_kept_states_equals_cached_and_stores_nothing(tmp_path, tiny_lm, tiny_corpus):
    sp = prompts.build_shuffle_prompts(tiny_lm, tiny_corpus, "test", 32, 3, bos=False, shuffle_indices=[0, 1],
                                       seed=0)
    kw = dict(prompt_ids=sp.prompt_ids, shuffle_index=1, k_max=8, progress=False, lm=tiny_lm)
    lean = geometry_table("tiny-llama", sp.at(1), tmp_path / "lean", keep_states=False, **kw)
    assert not (tmp_path / "lean" / "cache" / "states").exists()
    assert len(list((tmp_path / "lean" / "cache" / "geometry").glob("*/table.parquet"))) == 1   # the table is cached
    kept = geometry_table("tiny-llama", sp.at(1), tmp_path / "kept", **kw)
    assert (tmp_path / "kept" / "cache" / "states").exists()
    pd.testing.assert_frame_equal(lean, kept)


# ----------------------------------------------------------------------------- constructed tables

def table(profiles: dict, loss: dict | None = None, model="m", revision="") -> pd.DataFrame:
    """Long rows from {(prompt, S): {metric: values per layer}} and {(prompt, S): loss}."""
    rows = []
    for (pid, s), metrics in profiles.items():
        for metric, vals in metrics.items():
            for layer, v in enumerate(vals):
                rows.append((model, revision, pid, s, layer, metric, float(v)))
    for (pid, s), v in (loss or {}).items():
        rows.append((model, revision, pid, s, -1, "loss", float(v)))
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def test_peak_comparison_on_a_constructed_table():
    # 3 prompts, S = 0, 1, 2; layers 0..4. Structured peaks at layer 3; shuffled (S=2) peaks at layer 1,
    # higher for prompts 0 and 1, lower for prompt 2; S=1 is not the comparison.
    prof = {(0, 0): [5, 6, 7, 9, 4], (0, 1): [5, 9, 9, 1, 1], (0, 2): [5, 12, 6, 5, 4],
            (1, 0): [5, 6, 7, 8, 4], (1, 1): [5, 6, 7, 8, 4], (1, 2): [5, 6, 11, 5, 4],
            (2, 0): [5, 6, 7, 20, 4], (2, 1): [5, 6, 7, 8, 4], (2, 2): [5, 6, 7, 8, 4]}
    long = table({k: {"id": v} for k, v in prof.items()})
    pk = nb04.peaks(long, min_layer=0)                      # our all-layers view (layer 0 is no peak here)
    assert len(pk) == 9 and set(pk.n_layers) == {4}
    p01 = pk[(pk.prompt_id == 0) & (pk.shuffle_index == 1)].iloc[0]
    assert p01.peak == 9 and p01.peak_layer == 1 and p01.peak_depth == 0.25      # tie: the first layer
    cmp = nb04.peak_comparison(long, min_layer=0)
    assert (cmp.s_cmp == 2).all() and list(cmp.prompt_id) == [0, 1, 2]
    assert list(cmp.higher) == [True, True, False]
    assert list(cmp["shift"]) == [-2, -1, 0] and list(cmp.layer_ref) == [3, 3, 3]
    f = nb04.peak_fractions(cmp).iloc[0]
    assert f.n_prompts == 3 and f.frac_higher == pytest.approx(2 / 3)
    assert f.frac_earlier == pytest.approx(2 / 3) and f.frac_same == pytest.approx(1 / 3) and f.frac_later == 0
    assert f.peak_ref == pytest.approx(37 / 3) and f.peak_cmp == pytest.approx(31 / 3)
    assert f.ratio == pytest.approx(31 / 37) and f.mean_shift == pytest.approx(-1)
    one = nb04.peak_comparison(long, shuffled=1, min_layer=0)
    assert list(one.higher) == [False, False, False]
    check_long(nb04.comparison_long(cmp))
    # layer 0 (the same cloud at every S) highest: over all layers nothing can be higher; from layer 1 on it can
    l0 = table({(p, s): {"id": [30, 5 + s, 4]} for p in range(3) for s in (0, 2)})
    all_layers = nb04.peak_comparison(l0, min_layer=0)
    assert not all_layers.higher.any() and (all_layers.peak_ref == 30).all()
    assert set(nb04.comparison_long(all_layers).metric) == {"id_peak_all_layers_higher_than_s0",
                                                            "id_peak_all_layers_shift_from_s0"}
    from1 = nb04.peak_comparison(l0)                        # the default: the paper's, layers >= 1
    assert from1.higher.all() and (from1.peak_ref == 5).all() and (from1.peak_cmp == 7).all()
    assert (from1.layer_ref == 1).all() and (from1.min_layer == 1).all()
    names = set(nb04.comparison_long(from1).metric) | set(nb04.peaks_long(nb04.peaks(l0)).metric)
    assert names == {"id_peak_from_l1_higher_than_s0", "id_peak_from_l1_shift_from_s0", "id_peak_from_l1",
                     "id_peak_from_l1_layer", "id_peak_from_l1_depth"}
    # models are compared each at its own largest S
    both = pd.concat([long, table({(0, 0): {"id": [1, 3, 2]}, (0, 4): {"id": [1, 2, 5]}}, model="n")])
    c2 = nb04.peak_comparison(both, min_layer=0)
    assert c2[c2.model == "n"].s_cmp.tolist() == [4] and c2[c2.model == "n"].higher.tolist() == [True]


def test_id_loss_correlation_on_a_constructed_case():
    rng = np.random.default_rng(1)
    n, L = 8, 5
    loss = {(p, s): 2 + s + rng.normal() for p in range(n) for s in (0, 1)}
    prof = {}
    for (p, s), lo in loss.items():
        prof[(p, s)] = {"id": [10.0,                          # layer 0: constant -> r undefined (NaN)
                               3 * lo + rng.normal(0, 0.1),    # layer 1: positive
                               -2 * lo + rng.normal(0, 0.1),   # layer 2: negative
                               rng.normal(),                   # layer 3: unrelated
                               lo]}                            # layer 4: exactly linear
    long = table(prof, loss)
    corr = nb04.id_loss_correlation(long)
    assert set(corr.shuffle_index) == {0, 1} and (corr.n == n).all()
    for s in (0, 1):
        c = corr[corr.shuffle_index == s].set_index("layer")
        x = np.array([prof[(p, s)]["id"][1] for p in range(n)])
        y = np.array([loss[(p, s)] for p in range(n)])
        ref = stats.pearsonr(x, y)
        assert c.r[1] == pytest.approx(ref.statistic, abs=1e-12) and c.p[1] == pytest.approx(ref.pvalue, rel=1e-9)
        assert np.isnan(c.r[0]) and c.r[2] < -0.9 and c.r[4] == pytest.approx(1.0)
    pooled = nb04.id_loss_correlation(long, pooled=True)
    assert (pooled.shuffle_index == -1).all() and (pooled.n == 2 * n).all() and len(pooled) == L
    # an encoder (no loss) is left out; a shallower model in the same table keeps its own layers
    enc = table({(p, 0): {"id": [1.0, p, 2.0 * p]} for p in range(4)},
                {(p, 0): np.nan for p in range(4)}, model="enc")
    short = table({(p, 0): {"id": [1.0, p + rng.normal(0, 0.1)]} for p in range(4)},
                  {(p, 0): p for p in range(4)}, model="short")
    mixed = nb04.id_loss_correlation(pd.concat([long, enc, short]))
    assert "enc" not in set(mixed.model)
    s = mixed[mixed.model == "short"]
    assert list(s.layer) == [0, 1] and s.r.iloc[1] > 0.9 and (s.n == 4).all()
    # fewer than 3 prompts: no correlation
    assert nb04.id_loss_correlation(table({(p, 0): {"id": [1.0, p]} for p in range(2)},
                                             {(p, 0): p for p in range(2)})).empty
    out = nb04.correlation_long(corr)
    check_long(out)
    assert set(out.metric) == {"pearson_r_id_loss", "pearson_p_id_loss", "n_samples"} and (out.prompt_id == -1).all()


def test_comparison_summary_and_band_means():
    # L = 6: layers 0..6; middle third = layers 2, 3, 4; chi pairs (l, l+1) at depth (l + 0.5)/6
    prof = {(p, 0): {"id": [20, 5, 9 + p, 7, 6, 4, 3], "cos_full": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                     "chi_1": [0.2, 0.3, 0.4, 0.5, 0.8, 0.9]} for p in range(3)}
    long = table(prof, {(p, 0): 3.0 + p for p in range(3)}, model="toy:x", revision="step9")
    summ = profile_summary(long, ("id", "chi_1", "cos_full"), n_boot=50)
    t = nb05.comparison_summary(long, summ).iloc[0]
    assert t.label == "x (trained)" and t.n_layers == 6 and t.n_prompts == 3
    assert t.peak_id_all_layers == pytest.approx(20) and t.peak_layer_all_layers == 0      # the embedding output
    assert t.peak_depth_all_layers == 0
    assert t.peak_id_from_l1 == pytest.approx(10) and t.peak_layer_from_l1 == 2
    assert t.peak_depth_from_l1 == pytest.approx(1 / 3)
    # chi_1 over the pairs (1, 2) .. (5, 6): the pair (0, 1) (0.2) is left out
    assert t.cos_mid == pytest.approx(0.4) and t.chi1_min == pytest.approx(0.3) and t.chi1_max == pytest.approx(0.9)
    assert t.mean_loss == pytest.approx(4.0) and t.prompt_peak_id_from_l1 == pytest.approx(10)
    assert np.isnan(t.nn_sim)                                                    # no nn_sim rows in this table
    late = nb04.band_mean(long, "chi_1", 2 / 3, 1.0)
    assert late.chi_1.iloc[0] == pytest.approx(0.85)                             # pairs (4,5) and (5,6)
    check_long(nb05.comparison_summary_long(nb05.comparison_summary(long, summ)))
    check_long(nb04.summary_long(summ))
    lb = nb04.loss_by_s(long).iloc[0]
    assert lb["mean"] == pytest.approx(4.0) and lb["n"] == 3


def test_figures_and_findings_run_on_a_constructed_table():
    import matplotlib
    matplotlib.use("Agg")
    rng = np.random.default_rng(2)
    prof, loss = {}, {}
    for p in range(4):
        for s in (0, 1, 2):
            ids = [8.0] + list(10 + 3 * s + rng.normal(0, 1, 4)) + [6.0]
            prof[(p, s)] = {"id": ids, "id_s1": ids, "id_s2": [x * 1.2 for x in ids],
                            "cos_full": list(rng.random(6)), "chi_1": list(rng.random(5)),
                            "nn_angle": list(60 + 10 * rng.random(6))}
            loss[(p, s)] = 2 + s + rng.normal(0, 0.2)
    long = table(prof, loss)
    summ = profile_summary(long, nb04.PROFILE_METRICS, n_boot=50)
    fig, tidy = shuffle_plots.plot_shuffle_profiles(long, summ, "nn_angle", 2, min_layer=1)
    assert tidy.layer.min() == 1 and tidy.nn_angle.notna().all()               # the original's view: from layer 1
    for fn in (lambda: shuffle_plots.plot_shuffle_profiles(long, summ, "id", 2), lambda: shuffle_plots.plot_scale_curves_by_s(long),
               lambda: shuffle_plots.plot_loss_vs_s(long), lambda: shuffle_plots.plot_peak_comparison(nb04.peak_comparison(long)),
               lambda: profiles.plot_correlation(nb04.id_loss_correlation(long))):
        fig, tidy = fn()
        assert len(tidy)
    text = to_markdown(nb04_findings.findings(long))
    assert "prompts at S = 2 (mean peak" in text and "Loss rises with S" in text and "r > 0 at" in text
    assert "(layers >= 1)" in text and "**our addition**" in text and "nn_sim angle" in text


# ----------------------------------------------------------------------------- parameters

def test_params_validation():
    from tg_utils.params.notebooks import ComparisonParams, ShuffleParams
    ShuffleParams.from_dict({})
    ComparisonParams.from_dict({})
    with pytest.raises(ParameterError, match="n_prompts_by_model"):
        ShuffleParams.from_dict({"n_prompts_by_model": {"gemma3-270m": 5}, "models": ["smollm2-135m"]})
    with pytest.raises(ParameterError, match="shuffle_indices"):
        ShuffleParams.from_dict({"shuffle_indices": [1, 2]})
    with pytest.raises(ParameterError, match="n_prompts"):
        ShuffleParams.from_dict({"n_prompts": 2})
    with pytest.raises(ParameterError, match="models"):
        ShuffleParams.from_dict({"models": ["no such model"]})


def test_specs_with_a_revision():
    """'owner/name@revision' specs: table keys and placement from ModelSpec, for every notebook 02-05."""
    from tg_utils.models import ModelSpec
    assert ModelSpec.parse("EleutherAI/pythia-6.9b@step143000").table_key() == ("EleutherAI/pythia-6.9b", "step143000")
    assert ModelSpec.parse("toy:llama-preln@12").table_key() == ("toy:llama-preln", "step12")
    assert ModelSpec.parse("smollm2-135m").table_key() == ("smollm2-135m", "")
    assert nb02.load_kwargs("EleutherAI/pythia-6.9b@step143000", "cpu", "auto") == {"device_map": "auto"}
    assert nb02.load_kwargs("smollm2-135m", "cuda", "auto") == {"device": "cuda"}
    assert nb02.load_kwargs("toy:llama-preln", "cpu", "auto") == {"device": "cpu"}
    assert nb02.load_kwargs("EleutherAI/pythia-6.9b", "cuda", None) == {"device": "cuda"}


def test_auto_scale_per_shuffle_index():
    """nb04.auto_scale: one row per (model, S, layer); the ID read at the middle of the first flat window of
    3 scales of the mean curve over prompts (S = 0: 10, 5, 5, 5, 3 -> flat from n1 = 2, read at n1 = 4; S = 1:
    flat from the start, read at n1 = 2)."""
    curves = {0: [10, 5, 5, 5, 3], 1: [6, 6, 6, 6, 6]}
    rows = [{"model": "m", "revision": "", "shuffle_index": s, "layer": 1, "prompt_id": p, "metric": f"id_s{n1}",
             "value": v + (0.1 if p else -0.1)}
            for s, curve in curves.items() for p in (0, 1) for n1, v in zip((1, 2, 4, 8, 16), curve)]
    auto = nb04.auto_scale(pd.DataFrame(rows)).set_index("shuffle_index")
    assert list(auto.index) == [0, 1]
    assert auto.loc[0, "n1"] == 4 and auto.loc[0, "id_auto"] == pytest.approx(5.0)
    assert (auto.loc[0, "n1_low"], auto.loc[0, "n1_high"]) == (2, 8)
    assert auto.loc[1, "n1"] == 2 and auto.loc[1, "id_auto"] == pytest.approx(6.0)

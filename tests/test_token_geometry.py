"""The Geometry of Tokens, faithfully (notebooks 04 and 05): each of the original's procedures as our code
runs it, against a re-derivation written here from the original's definitions (RitAreaSciencePark/
token_geometry, src/utils.py and src/summarize.py) on small fixed clouds: nn_sim (utils.py:37-49), the ID peak
over the blocks' outputs (summarize.py:11), the chi_1 range over the pairs (1, 2) .. (L-1, L) (summarize.py:
79-105); nn_sim on analytic cases; the paper profile's BOS and dtype choices. No network."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial import distance

from tg_utils import metrics as M
from tg_utils.experiments import nb04_shuffle_experiment as nb04
from tg_utils.experiments import nb05_model_comparison as nb05
from tg_utils.experiments import nb04_findings, nb05_findings
from tg_utils.geometry import profile_rows, profile_summary
from tg_utils.params.base import load_profile
from tg_utils.tables import LONG_COLUMNS

RNG = np.random.default_rng(7)
STACK = RNG.normal(size=(3, 5, 14, 6))          # 3 prompts x 5 layers (0..4) x 14 tokens x 6 features


# ----------------------------------------------------------------------------- re-derivations of the original

def original_nn_sim(X: np.ndarray) -> np.ndarray:
    """utils.py:33-46: Euclidean distance matrix, argsort of each row, columns 1 and 2 (column 0 the
    token itself), then 1 - scipy's cosine distance between x_i - x_nn1 and x_i - x_nn2."""
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    nn = np.argsort(D, axis=-1, kind="stable")[:, 1:3]
    return np.array([1 - distance.cosine(X[i] - X[nn[i, 0]], X[i] - X[nn[i, 1]]) for i in range(len(X))])


def original_overlap(D_a: np.ndarray, D_b: np.ndarray, maxk: int = 32) -> np.ndarray:
    """summarize.py:79-99: argsort the two distance matrices; for k = 1..maxk-1 the shared fraction of
    columns 1..k (column 0 the token itself); the mean over tokens. Index k holds chi_k."""
    A, B = np.argsort(D_a, axis=1, kind="stable"), np.argsort(D_b, axis=1, kind="stable")
    out = np.zeros((len(A), maxk))
    for i in range(len(A)):
        for k in range(1, maxk):
            out[i, k] = len(set(A[i, 1:k + 1]) & set(B[i, 1:k + 1])) / k
    return out.mean(0)


def distances(X: np.ndarray) -> np.ndarray:
    return np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))


def long_of(stack: np.ndarray, k_max: int = 8, model: str = "m") -> pd.DataFrame:
    """The long table geometry_table writes, from layer_profile of each prompt's stack of layers."""
    frames = []
    for pid, X in enumerate(stack):
        rows = profile_rows(M.layer_profile(X, range_max=4, k_max=k_max), k_max)
        rows = pd.concat([rows, pd.DataFrame({"layer": [-1], "metric": ["loss"], "value": [2.0 + pid]})])
        frames.append(rows.assign(prompt_id=pid, model=model, revision="", shuffle_index=0))
    return pd.concat(frames, ignore_index=True)[LONG_COLUMNS]


# ----------------------------------------------------------------------------- nn_sim

def test_nn_sim_analytic_cases():
    tri = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    np.testing.assert_allclose(M.nn_sim(tri), [0.5, 0.5, 0.5], atol=1e-12)
    # the same triangle rotated into 5 dimensions and shifted: the cosine does not move
    Q, _ = np.linalg.qr(RNG.normal(size=(5, 5)))
    tri5 = np.pad(tri, ((0, 0), (0, 3))) @ Q + 3.0
    np.testing.assert_allclose(M.nn_sim(tri5), [0.5, 0.5, 0.5], atol=1e-12)
    # 0, 1, 3 on a line: at 0 both neighbours lie on one side (+1), at 1 on both sides (-1), at 3 on one side
    line = np.array([[0.0], [1.0], [3.0]])
    np.testing.assert_allclose(M.nn_sim(line), [1.0, -1.0, 1.0], atol=1e-12)
    # the original's sign convention (x_i - neighbour) and the reverse (neighbour - x_i) agree: both flip
    np.testing.assert_allclose(original_nn_sim(line), [1.0, -1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(M.nn_angle(M.nn_sim(line)), [0.0, 180.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(M.nn_angle(M.nn_sim(tri)), [60.0, 60.0, 60.0], atol=1e-6)


def test_nn_sim_equals_the_original_on_fixed_clouds():
    for X in STACK.reshape(-1, 14, 6):
        np.testing.assert_allclose(M.nn_sim(X), original_nn_sim(X), atol=1e-12)
    # batched over any leading shape, numpy or torch, float32 states measured in float64
    out = M.nn_sim(STACK)
    assert out.shape == (3, 5, 14)
    np.testing.assert_allclose(out[2, 3], original_nn_sim(STACK[2, 3]), atol=1e-12)
    t = M.nn_sim(torch.tensor(STACK, dtype=torch.float32))
    ref = np.stack([original_nn_sim(x) for x in STACK.astype(np.float32).astype(np.float64).reshape(-1, 14, 6)])
    np.testing.assert_allclose(t.reshape(-1, 14), ref, atol=1e-9)


def test_nn_sim_undefined_and_bad_input():
    # a repeated token (an exact copy) leaves x_i - x_copy = 0: NaN for both copies, the others defined
    X = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [4.0, 1.0]])
    out = M.nn_sim(X)
    assert np.isnan(out[:2]).all() and np.isfinite(out[2:]).all()
    with pytest.raises(ValueError, match="N >= 3"):
        M.nn_sim(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        M.nn_sim(np.array([[0.0], [np.nan], [1.0]]))


def test_layer_profile_carries_the_mean_nn_sim_and_angle():
    lp = M.layer_profile(STACK, range_max=4, k_max=8)
    per_token = M.nn_sim(STACK)
    np.testing.assert_allclose(lp.nn_sim, per_token.mean(-1), atol=1e-12)
    np.testing.assert_allclose(lp.nn_angle, np.degrees(np.arccos(per_token)).mean(-1), atol=1e-9)
    # k_max = 1 still gets two neighbours for nn_sim, and chi_1 is unchanged by the longer table
    lp1 = M.layer_profile(STACK, range_max=4, k_max=1)
    np.testing.assert_allclose(lp1.nn_sim, lp.nn_sim, atol=1e-12)
    np.testing.assert_array_equal(lp1.chi[..., 1], lp.chi[..., 1])
    # undefined tokens are left out of the mean: a cloud with one duplicated pair
    X = STACK[0, :2].copy()
    X[:, 1] = X[:, 0]
    lpd = M.layer_profile(X, range_max=4, k_max=4)
    v = M.nn_sim(X)
    np.testing.assert_allclose(lpd.nn_sim, np.nanmean(v, -1), atol=1e-12)
    assert set(profile_rows(lpd, 4).metric) >= {"nn_sim", "nn_angle"}


# ----------------------------------------------------------------------------- ID peak and chi_1 range

def test_id_peak_is_over_the_blocks_outputs_as_the_original():
    long = long_of(STACK)
    # give layer 0 the largest ID of every prompt: the original never computes it (summarize.py:11)
    long.loc[(long.metric == "id") & (long.layer == 0), "value"] = 1e3
    ids = long[long.metric == "id"].pivot(index="prompt_id", columns="layer", values="value").to_numpy()
    ref_layer = np.argmax(ids[:, 1:], axis=1) + 1                    # reps[1:]: layer index from 1
    pk = nb04.peaks(long)                                            # the default is the original's
    assert (pk.min_layer == nb04.PAPER_MIN_LAYER).all() and nb04.PAPER_MIN_LAYER == 1
    np.testing.assert_array_equal(pk.sort_values("prompt_id").peak_layer, ref_layer)
    np.testing.assert_allclose(pk.sort_values("prompt_id").peak, ids[np.arange(3), ref_layer])
    ours = nb04.peaks(long, min_layer=0)                             # our all-layers view: the embedding
    assert (ours.peak_layer == 0).all() and (ours.peak == 1e3).all()
    names = set(nb04.id_peaks_long(long).metric)
    assert {"id_peak_from_l1", "id_peak_all_layers"} <= names and "id_peak" not in names
    summ = profile_summary(long, nb04.PROFILE_METRICS, n_boot=20)
    t = nb05.comparison_summary(long, summ).iloc[0]
    mean_ids = ids.mean(0)
    assert t.peak_layer_from_l1 == np.argmax(mean_ids[1:]) + 1 and t.peak_id_from_l1 == pytest.approx(mean_ids[1:].max())
    assert t.peak_layer_all_layers == 0 and t.peak_id_all_layers == pytest.approx(1e3)
    assert t.prompt_peak_id_from_l1 == pytest.approx(ids[np.arange(3), ref_layer].mean())


def test_chi1_range_over_the_original_pairs():
    long = long_of(STACK)
    # summarize.py:101-105: pairs (reps[1:-1], reps[2:]) = (1, 2), (2, 3), (3, 4) of layers 0..4
    per_prompt = np.array([[original_overlap(distances(X[l]), distances(X[l + 1]), maxk=9)[1]
                            for l in range(1, 4)] for X in STACK])
    ref = per_prompt.mean(0)
    summ = profile_summary(long, nb04.PROFILE_METRICS, n_boot=20)
    chi = summ[summ.metric == "chi_1"].set_index("layer")["mean"]
    np.testing.assert_allclose(chi.loc[[1, 2, 3]].to_numpy(), ref, atol=1e-12)
    t = nb05.comparison_summary(long, summ).iloc[0]
    assert (t.chi1_min, t.chi1_max) == pytest.approx((ref.min(), ref.max()))
    # the pair (0, 1), which the original never forms, does not enter the range, however extreme
    long.loc[(long.metric == "chi_1") & (long.layer == 0), "value"] = 0.0
    summ0 = profile_summary(long, nb04.PROFILE_METRICS, n_boot=20)
    assert nb04.chi_range(summ0) == pytest.approx((ref.min(), ref.max()))
    assert nb04.chi_range(summ0, first_pair=0)[0] == 0.0              # our earlier variant, as an option
    # nn_sim in the summary row: the mean over prompts, tokens and layers >= 1
    per_token = M.nn_sim(STACK)[:, 1:]
    assert t.nn_sim == pytest.approx(per_token.mean(-1).mean())
    assert t.nn_angle == pytest.approx(np.degrees(np.arccos(per_token)).mean(-1).mean())


def test_paper_view_leaves_layer_zero_out_where_the_original_does():
    summ = profile_summary(long_of(STACK), nb04.PROFILE_METRICS, n_boot=20)
    view = nb04.paper_view(summ)
    assert view[view.metric.isin(["id", "chi_1", "nn_angle"])].layer.min() == 1
    assert view[view.metric == "cos_full"].layer.min() == 0             # the original plots cosine from layer 0


# ----------------------------------------------------------------------------- the paper profile

def test_paper_profile_feeds_no_bos_to_the_papers_models_and_runs_bfloat16():
    prof = load_profile("paper")
    papers = {"meta-llama/Meta-Llama-3-8B", "mistralai/Mistral-7B-v0.1"}
    # token_geometry src/utils.py:25 tokenizes with add_special_tokens=False; src/extract.py:40 loads bfloat16
    for nb in ("02_extract_states", "03_geometry_metrics", "04_shuffle_experiment", "05_model_comparison"):
        sec = prof[nb]
        assert not papers & set(sec.get("bos_models", [])), nb
        assert sec["model_dtype"] == "bfloat16", nb


def test_id_loss_findings_count_the_original_layers_only():
    # the original correlates ID and loss at layers 1..L (model_comparison.ipynb: ids from reps[1:]); layer 0's
    # correlation stays in the table but not in the counts
    long = long_of(STACK)
    long = pd.concat([long, long.assign(prompt_id=long.prompt_id + 3)], ignore_index=True)
    long.loc[long.metric == "loss", "value"] = np.arange(6) + 0.5
    ids = long.metric == "id"
    long.loc[ids, "value"] = np.where(long.layer[ids] == 0, long.prompt_id[ids], 6 - long.prompt_id[ids])
    corr = nb04.id_loss_correlation(long)
    assert corr.set_index("layer").r.loc[0] == pytest.approx(1.0)
    summ = profile_summary(long, nb04.PROFILE_METRICS, n_boot=20)
    facts = nb05_findings.correlation_facts(nb05.comparison_summary(long, summ), corr)
    assert (facts.pos.tolist(), facts.layers.tolist()) == ([0], [4])
    both = pd.concat([long, long.assign(shuffle_index=1)], ignore_index=True)
    d = nb04_findings.detail_table(both)
    assert (d.corr_pos.iloc[0], d.corr_layers.iloc[0], d.pooled_pos.iloc[0], d.pooled_layers.iloc[0]) == (0, 4, 0, 4)

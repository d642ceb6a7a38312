"""The phase rule on synthetic curves, token convergence per bucket, P1/P2 on constructed states."""
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest

from tg_utils.metrics.trajectory import (COMPRESSION, ENTROPY, PHASE_COLUMNS, PHASES, WARMUP, Phase,
                                         describe_phases, mark_phases, phase_intervals, running_median)
from tg_utils.metrics.word_states import (PerturbationScores, convergence_by_bucket, perturbation_by_bucket,
                                          perturbation_scores)

# log-spaced checkpoints as notebook 01 writes them: 0, 1, 2, 4, ..., 16384 (16 checkpoints)
STEPS = np.array([0] + [2 ** k for k in range(15)])
X = np.log10(1 + STEPS)
X_TROUGH, X_PEAK = 1.2, 2.7                      # RankMe trough (end of warmup) and peak, in log10 step
I_TROUGH = int(np.argmin(np.abs(X - X_TROUGH)))  # nearest checkpoints: 16 (index 5), 512 (index 10)
I_PEAK = int(np.argmin(np.abs(X - X_PEAK)))


def three_phase_curves():
    """RankMe 100 -> 20 (warmup collapse) -> 200 (entropy-seeking) -> 80 (compression-seeking),
    alpha 0.8 -> 1.5 -> 0.6 -> 1.0, piecewise linear in log-step (RankMe on a log scale)."""
    knots = [0, X_TROUGH, X_PEAK, X[-1]]
    rankme = np.exp(np.interp(X, knots, np.log([100, 20, 200, 80])))
    alpha = np.interp(X, knots, [0.8, 1.5, 0.6, 1.0])
    return rankme, alpha


def spans(ph):
    return [(r.phase, r.start_index, r.end_index) for r in ph]


def columns(result) -> pd.DataFrame:
    """A column result of tg_utils.metrics.word_states as a DataFrame, one column per field."""
    return pd.DataFrame({f.name: getattr(result, f.name) for f in fields(result)})


def assert_three_phases(ph, tol=1):
    assert [r.phase for r in ph] == [WARMUP, ENTROPY, COMPRESSION]
    w, e, c = ph
    assert w.start_index == 0 and w.start_step == 0
    assert abs(w.end_index - I_TROUGH) <= tol and abs(e.start_index - I_TROUGH) <= tol
    assert abs(e.end_index - I_PEAK) <= tol and abs(c.start_index - I_PEAK) <= tol
    assert c.end_index >= len(STEPS) - 1 - tol


def test_three_phases_boundaries():
    ph = mark_phases(STEPS, *three_phase_curves())
    assert all(isinstance(r, Phase) for r in ph) and [f.name for f in fields(Phase)] == PHASE_COLUMNS
    assert_three_phases(ph)
    # the median flattens each turning point: one unlabelled transition interval at most
    assert spans(ph) == [(WARMUP, 0, 4), (ENTROPY, 5, 10), (COMPRESSION, 11, 15)]
    assert ph[1].start_step == 16 and ph[1].end_step == 512
    r, a = three_phase_curves()
    assert ph[0].rankme_start == r[0] and ph[2].alpha_end == a[-1]


def test_no_smoothing_gives_exact_turning_points():
    ph = mark_phases(STEPS, *three_phase_curves(), smooth=1)
    assert_three_phases(ph)
    assert sum(r.n_checkpoints for r in ph) >= len(STEPS)


def noisy(seed, rel=0.03, abs_alpha=0.02):
    rng = np.random.default_rng(seed)
    r, a = three_phase_curves()
    return r * np.exp(rng.normal(0, rel, len(r))), a + rng.normal(0, abs_alpha, len(a))


@pytest.mark.parametrize("seed", range(20))
def test_noise_robustness(seed):
    # 3 % noise on RankMe, 0.02 on alpha: the three phases, each boundary within two checkpoints
    assert_three_phases(mark_phases(STEPS, *noisy(seed)), tol=2)


def test_noise_robustness_most_boundaries_exact():
    exact = sum(spans(mark_phases(STEPS, *noisy(seed))) == [(WARMUP, 0, 4), (ENTROPY, 5, 10),
                                                            (COMPRESSION, 11, 15)] for seed in range(50))
    assert exact >= 40


def test_spike_does_not_split_a_phase():
    r, a = three_phase_curves()
    r, a = r.copy(), a.copy()
    r[7] *= 3.0                                          # one outlier checkpoint inside entropy-seeking
    a[13] -= 0.5                                         # and one inside compression-seeking
    ph = mark_phases(STEPS, r, a)        # a spike on a slope can widen a transition by one checkpoint
    assert_three_phases(ph, tol=2)
    assert spans(ph)[:2] == [(WARMUP, 0, 4), (ENTROPY, 5, 10)]
    r[7] *= 3.0                          # a 9x spike does not split the phase either
    assert spans(mark_phases(STEPS, r, a))[:2] == [(WARMUP, 0, 4), (ENTROPY, 5, 10)]


def test_monotone_curves_give_one_phase():
    up, down = 50 * np.exp(X), 1.2 - 0.15 * X
    ph = mark_phases(STEPS, up, down)                    # RankMe up, alpha down all along
    assert spans(ph) == [(ENTROPY, 0, len(STEPS) - 1)]
    ph = mark_phases(STEPS, 500 * np.exp(-X), 0.5 + 0.15 * X)   # down / up from step 0
    assert spans(ph) == [(WARMUP, 0, len(STEPS) - 1)]


def test_warmup_until_ties_the_collapse_to_the_lr_warmup():
    ph = mark_phases(STEPS, 500 * np.exp(-X), 0.5 + 0.15 * X, warmup_until=60)
    # intervals starting before step 60 (the last one is 32 -> 64) are the warmup
    assert spans(ph) == [(WARMUP, 0, 7), (COMPRESSION, 7, len(STEPS) - 1)]
    assert ph[0].end_step == 64


def test_absent_phases_have_no_row():
    flat = mark_phases(STEPS, np.full(len(STEPS), 40.0), np.full(len(STEPS), 1.0))
    assert flat == ()
    both_up = mark_phases(STEPS, 50 * np.exp(X), 0.5 + 0.15 * X)   # not a phase of the paper
    assert len(both_up) == 0
    lines = describe_phases(both_up)
    assert lines == [f"{p}: does not appear" for p in PHASES]
    # tiny changes (below the slope thresholds) are not phases either
    tiny = mark_phases(STEPS, 40 * np.exp(0.01 * X), 1.0 - 0.005 * X)
    assert len(tiny) == 0


def test_no_warmup_when_rankme_rises_first():
    r, a = three_phase_curves()
    ph = mark_phases(STEPS[I_TROUGH:], r[I_TROUGH:], a[I_TROUGH:])
    assert [r.phase for r in ph] == [ENTROPY, COMPRESSION]
    assert WARMUP + ": does not appear" in describe_phases(ph)


def test_short_blips_are_not_phases():
    r = 50 * np.exp(X)
    a = 1.2 - 0.15 * X
    r2, a2 = r.copy(), a.copy()
    r2[8:] *= 0.6                        # a single falling step of RankMe...
    a2[8:] += 0.2                        # ...with alpha rising: one compression interval, too short
    ph = mark_phases(STEPS, r2, a2, smooth=1)            # the blip is unlabelled, then the gap filled
    assert spans(ph) == [(ENTROPY, 0, len(STEPS) - 1)]
    assert spans(mark_phases(STEPS, r2, a2, smooth=1, max_gap=0)) == [(ENTROPY, 0, 7), (ENTROPY, 8, 15)]
    assert [r.phase for r in mark_phases(STEPS, r2, a2, smooth=1, min_len=1)] == [ENTROPY, COMPRESSION, ENTROPY]
    # a one-interval gap between the same phase is filled (max_gap=1)
    iv = phase_intervals(STEPS, r2, a2, smooth=1)
    assert iv.raw_label[7] == COMPRESSION and iv.label[7] == ENTROPY
    assert len(iv.label) == len(iv.start_step) == len(STEPS) - 1


def test_gap_filling():
    r = 50 * np.exp(X)
    a = 1.2 - 0.15 * X
    a2 = a.copy()
    a2[8:] += 0.15 * (X[8] - X[7])       # alpha flat on one interval: unlabelled, then filled
    assert spans(mark_phases(STEPS, r, a2, smooth=1)) == [(ENTROPY, 0, len(STEPS) - 1)]
    assert len(mark_phases(STEPS, r, a2, smooth=1, max_gap=0)) == 2


def test_describe_and_intervals():
    ph = mark_phases(STEPS, *three_phase_curves())
    lines = describe_phases(ph)
    assert lines[0].startswith("warmup collapse: steps 0-8") and lines[1].startswith("entropy-seeking: steps 16-512")
    table = pd.DataFrame([{k: getattr(r, k) for k in PHASE_COLUMNS} for r in ph], columns=PHASE_COLUMNS)
    assert describe_phases(table) == lines                             # a table of phases reads the same
    iv = phase_intervals(STEPS, *three_phase_curves())
    assert list(iv.start_step) == list(STEPS[:-1]) and iv.label[4] is None


def test_phase_input_checks():
    with pytest.raises(ValueError, match="same length"):
        mark_phases([0, 1, 2], [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="increasing"):
        mark_phases([0, 2, 1], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        mark_phases([0, 1, 2], [1, 0, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="odd"):
        mark_phases(STEPS, *three_phase_curves(), smooth=2)


def test_running_median():
    y = np.array([1.0, 9.0, 2.0, 3.0, 4.0])
    assert running_median(y, 3).tolist() == [1.0, 2.0, 3.0, 3.0, 4.0]
    assert running_median(y, 1).tolist() == y.tolist()
    assert running_median(np.arange(6.0), 5).tolist() == list(np.arange(6.0))   # monotone stays


# ============================================================================ convergence

def test_convergence_by_bucket_matches_groupby():
    rng = np.random.default_rng(0)
    W, L, T = 13, 3, 5
    cos = rng.uniform(-1, 1, (W, L, T))
    buckets = rng.integers(1, 4, W)
    df = columns(convergence_by_bucket(cos, buckets, steps=[0, 1, 2, 4, 8], layers=[0, 2, 4]))
    assert len(df) == 3 * L * T
    assert list(df.columns) == ["step", "layer", "bucket", "mean_cos", "std_cos", "n_words", "delta",
                                "mean_abs_delta"]
    long = pd.DataFrame({"word": np.repeat(np.arange(W), L * T),
                         "layer": np.tile(np.repeat([0, 2, 4], T), W),
                         "step": np.tile([0, 1, 2, 4, 8], W * L), "cos": cos.ravel()})
    long["bucket"] = buckets[long["word"]]
    ref = long.groupby(["step", "layer", "bucket"])["cos"].agg(["mean", "count", lambda s: s.std(ddof=0)])
    got = df.set_index(["step", "layer", "bucket"]).loc[ref.index]
    np.testing.assert_allclose(got["mean_cos"], ref["mean"])
    np.testing.assert_allclose(got["std_cos"], ref.iloc[:, 2], atol=1e-12)
    assert (got["n_words"] == ref["count"]).all()
    # step-to-step change: difference of consecutive means, NaN at the first step
    one = df[(df.layer == 2) & (df.bucket == buckets[0])].sort_values("step")
    assert np.isnan(one["delta"].iloc[0]) and np.isnan(one["mean_abs_delta"].iloc[0])
    np.testing.assert_allclose(one["delta"].iloc[1:], np.diff(one["mean_cos"]))
    sel = buckets == buckets[0]
    np.testing.assert_allclose(one["mean_abs_delta"].iloc[1:], np.abs(np.diff(cos[sel, 1], axis=-1)).mean(0))


def test_convergence_known_values_and_nan():
    cos = np.array([[[0.2, 0.6, 1.0]], [[0.4, 0.8, 1.0]], [[0.0, np.nan, 1.0]]])   # (3 words, 1 layer, 3 steps)
    df = columns(convergence_by_bucket(cos, [2, 2, 3]))
    b2 = df[df.bucket == 2]
    np.testing.assert_allclose(b2["mean_cos"], [0.3, 0.7, 1.0])
    np.testing.assert_allclose(b2["delta"].iloc[1:], [0.4, 0.3])
    b3 = df[df.bucket == 3]
    assert b3["n_words"].tolist() == [1, 0, 1] and np.isnan(b3["mean_cos"].iloc[1])
    with pytest.raises(ValueError, match="n_words, n_layers, n_steps"):
        convergence_by_bucket(cos[0], [1])
    with pytest.raises(ValueError, match="buckets"):
        convergence_by_bucket(cos, [1, 2])


def test_convergence_with_metrics_token_convergence():
    from tg_utils import metrics
    rng = np.random.default_rng(1)
    states = rng.normal(size=(4, 6, 2, 8))                  # (steps, words, layers, d); last = final
    cos = np.stack([metrics.token_convergence(s, states[-1]) for s in states], -1)   # (6, 2, 4)
    df = columns(convergence_by_bucket(cos, [1, 1, 2, 2, 2, 3]))
    np.testing.assert_allclose(df[df.step == 3]["mean_cos"], 1.0)


# ============================================================================ perturbation

def unit2(theta):
    """Unit vectors at angles theta (radians) in the first two coordinates of R^3."""
    theta = np.asarray(theta, float)
    return np.stack([np.cos(theta), np.sin(theta), np.zeros_like(theta)], -1)


def test_perturbation_explicit_others_known_cosines():
    # word 0: base along e1; other contexts at 0, 60 and 90 degrees (cos 1, 0.5, 0); swap at 60 deg.
    # word 1: base along e2; others at 0 and 180 degrees from it; swap at 180 degrees (cos -1).
    # two layers: layer 1 = layer 0 scaled (norms do not matter)
    base = np.stack([unit2([0.0]), unit2([np.pi / 2])])[:, :, None, :]               # (2, 1, 1, 3)
    others = np.stack([unit2([0.0, np.pi / 3, np.pi / 2]),
                       unit2([np.pi / 2, 3 * np.pi / 2, 0.0])])[:, :, None, :]       # (2, 3, 1, 3)
    swapped = np.stack([unit2([np.pi / 3]), unit2([-np.pi / 2])])[:, :, None, :]
    two = lambda x: np.concatenate([x, 5 * x], axis=2)                               # noqa: E731
    other_mask = np.array([[True, True, True], [True, True, False]])
    s = perturbation_scores(two(base), two(others), two(swapped), other_mask=other_mask)
    assert isinstance(s, PerturbationScores) and s.p1.shape == (2, 2)
    np.testing.assert_allclose(s.p1, [[0.5, 0.5], [0.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(s.p2, [[0.5, 0.5], [-1.0, -1.0]], atol=1e-12)
    np.testing.assert_allclose(s.diff, [[0.0, 0.0], [1.0, 1.0]], atol=1e-12)
    # (W, L, d) inputs: one base sentence per word
    s1 = perturbation_scores(two(base)[:, 0], two(others), two(swapped)[:, 0], other_mask=other_mask)
    np.testing.assert_allclose(s1.p1, s.p1)


def test_perturbation_leave_one_out():
    # three contexts at 0, 90 and 45 degrees: pairwise cosines 0, 1/sqrt2, 1/sqrt2 -> mean sqrt2/3
    base = unit2([0.0, np.pi / 2, np.pi / 4])[None, :, None, :]                     # (1, 3, 1, 3)
    swapped = unit2([np.pi / 3, np.pi / 3, np.pi / 4])[None, :, None, :]            # cos .5, cos(30), 1
    s = perturbation_scores(base, None, swapped)
    np.testing.assert_allclose(s.p1, [[np.sqrt(2) / 3]])
    np.testing.assert_allclose(s.p2, [[(0.5 + np.sqrt(3) / 2 + 1.0) / 3]])
    # a masked context is left out everywhere
    m = perturbation_scores(base, None, swapped, base_mask=[[True, True, False]])
    np.testing.assert_allclose(m.p1, [[0.0]], atol=1e-12)
    np.testing.assert_allclose(m.p2, [[(0.5 + np.sqrt(3) / 2) / 2]])
    with pytest.raises(ValueError, match="at least two"):
        perturbation_scores(base[:, :1], None, swapped[:, :1])


def test_perturbation_random_matches_loop():
    rng = np.random.default_rng(2)
    W, B, C, L, d = 4, 3, 5, 2, 7
    base, other, swap = rng.normal(size=(W, B, L, d)), rng.normal(size=(W, C, L, d)), rng.normal(size=(W, B, L, d))
    cosf = lambda u, v: u @ v / np.linalg.norm(u) / np.linalg.norm(v)              # noqa: E731
    s = perturbation_scores(base, other, swap)
    for w in range(W):
        for l in range(L):
            p1 = np.mean([cosf(base[w, i, l], other[w, j, l]) for i in range(B) for j in range(C)])
            p2 = np.mean([cosf(base[w, i, l], swap[w, i, l]) for i in range(B)])
            assert s.p1[w, l] == pytest.approx(p1) and s.p2[w, l] == pytest.approx(p2)
    import torch
    st = perturbation_scores(torch.tensor(base, dtype=torch.float32), torch.tensor(other), torch.tensor(swap))
    np.testing.assert_allclose(st.p1, s.p1, atol=1e-6)
    sb = perturbation_scores(torch.tensor(base, dtype=torch.bfloat16), torch.tensor(other), torch.tensor(swap))
    np.testing.assert_allclose(sb.p1, s.p1, atol=2e-2)


def test_perturbation_shape_checks():
    x = np.zeros((2, 3, 4, 5))
    with pytest.raises(ValueError, match="must match"):
        perturbation_scores(x, x, x[:, :2])
    with pytest.raises(ValueError, match="does not match"):
        perturbation_scores(x, x[:1], x)
    with pytest.raises(ValueError, match="n_words"):
        perturbation_scores(x[0, 0], None, x[0, 0])


def test_perturbation_by_bucket():
    p1 = np.array([[0.9, 0.8], [0.7, 0.6], [0.5, np.nan]])
    p2 = np.array([[0.1, 0.2], [0.3, 0.2], [0.5, 0.5]])
    df = columns(perturbation_by_bucket(PerturbationScores(p1, p2), [2, 2, 3], layers=[0, 5]))
    assert list(df.columns) == ["layer", "bucket", "P1", "P2", "P1_minus_P2", "diff_std", "n_words"]
    assert df[["layer", "bucket"]].values.tolist() == [[0, 2], [0, 3], [5, 2], [5, 3]]
    np.testing.assert_allclose(df["P1"].iloc[:3], [0.8, 0.5, 0.7])
    np.testing.assert_allclose(df["P1_minus_P2"].iloc[:3], [0.6, 0.0, 0.5])
    np.testing.assert_allclose(df["diff_std"].iloc[0], 0.2)
    assert df["n_words"].tolist() == [2, 1, 2, 0] and np.isnan(df["P1"].iloc[3])

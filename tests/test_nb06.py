"""Notebook 06's pipeline (tg_utils.experiments.nb06_*, tg_utils.data.sequences, tg_utils.plots.trajectory):
checkpoint / spec enumeration, windows, per-layer spectra on constructed clouds, the power-law intercept,
the last-token NLL, table schemas, the convergence summary, the parameters, and a tiny end-to-end run on a
toy model trained here for a few steps."""
from __future__ import annotations

import dataclasses
import json
import random
import types

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tg_utils import metrics as M
from tg_utils.data.corpus import Article, Corpus
from tg_utils.data.sequences import batch_prompts, sequence_windows
from tg_utils.experiments import nb06_training_trajectory_phases as nb06
from tg_utils.experiments.nb06_findings import findings_markdown
from tg_utils.metrics import trajectory as T
from tg_utils.metrics import word_states as WS
from tg_utils.models.spec import ModelSpec
from tg_utils.models.unembed import model_nll
from tg_utils.params.trajectory import TrajectoryParams
from tg_utils.params import ParameterError
from tg_utils.plots import trajectory as PT
from tg_utils.tables import check_long


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- what is read

def _fake_run(root, run, steps, warmup=3):
    d = root / "checkpoints" / run
    d.mkdir(parents=True)
    for s in steps:
        (d / f"step_{s:06d}.pt").write_bytes(b"")
    (d / "config.json").write_text(json.dumps({"model_config": {}, "train_config": {"warmup_steps": warmup}}))
    return d


def test_toy_trajectory_enumerates_every_checkpoint(tmp_path):
    _fake_run(tmp_path, "r1", [0, 1, 2, 4, 8, 10], warmup=4)
    t = nb06.toy_trajectory("r1", tmp_path)
    assert t.steps == [0, 1, 2, 4, 8, 10] and t.warmup_until == 4 and t.model == "toy:r1"
    assert [c.label for c in t.checkpoints] == [f"toy:r1@{s}" for s in t.steps]
    assert all(c.revision is None for c in t.checkpoints)
    assert t.revision_label(8) == "step8"
    _fake_run(tmp_path, "lonely", [0])
    with pytest.raises(FileNotFoundError, match="at least two"):
        nb06.toy_trajectory("lonely", tmp_path)
    with pytest.raises(FileNotFoundError):
        nb06.toy_trajectory("missing", tmp_path)


def test_hub_trajectory_sorts_revisions_by_step():
    t = nb06.hub_trajectory("EleutherAI/pythia-160m", ["step1000", "step0", "step143000", "step1"], 1430)
    assert t.steps == [0, 1, 1000, 143000] and t.warmup_until == 1430 and t.run_dir is None
    assert [c.label for c in t.checkpoints][:2] == ["EleutherAI/pythia-160m@step0", "EleutherAI/pythia-160m@step1"]
    assert t.checkpoints[2].spec == ModelSpec.parse("EleutherAI/pythia-160m", "step1000")
    assert t.checkpoints[2].spec.name == "EleutherAI/pythia-160m" and t.checkpoints[2].revision == "step1000"
    assert t.revision_label(1000) == "step1000"
    assert nb06.revision_step("step64-tokens134M") == 64
    with pytest.raises(ValueError, match="does not name a step"):
        nb06.revision_step("main")
    with pytest.raises(ValueError, match="same step"):
        nb06.hub_trajectory("a/b", ["step1", "step1"])
    with pytest.raises(ValueError, match="at least two"):
        nb06.hub_trajectory("a/b", ["step1"])


def test_trajectories_from_parameters(tmp_path):
    _fake_run(tmp_path, "r1", [0, 1, 2])
    P = TrajectoryParams(out_dir=str(tmp_path), toy_runs=["r1"], models=["EleutherAI/pythia-160m"],
                         revisions=["step0", "step512"], model_warmup_steps=1430)
    P.check()
    ts = nb06.trajectories(P)
    assert [t.name for t in ts] == ["r1", "EleutherAI/pythia-160m"]
    tab = nb06.checkpoint_table(ts)
    assert list(tab.columns) == ["trajectory", "step", "spec", "revision", "warmup_until"]
    assert tab.spec.tolist() == ["toy:r1@0", "toy:r1@1", "toy:r1@2", "EleutherAI/pythia-160m@step0",
                                 "EleutherAI/pythia-160m@step512"]
    assert tab.revision.tolist()[-1] == "step512" and tab.warmup_until.tolist() == [3, 3, 3, 1430, 1430]


@pytest.mark.parametrize("kw, match", [
    (dict(models=["a/b"]), "revisions"),
    (dict(models=["a/b"], revisions=["step0", "main"]), "does not name a step"),
    (dict(models=["a/b@step1"], revisions=["step0", "step1"]), "without @revision"),
    (dict(n_seqs=10, spectra_sequences="windows"), "n_seqs"),
    (dict(phase_smooth=2), "phase_smooth"),
    (dict(context_buckets=[1, 2]), "context_buckets"),
    (dict(word_prefixes=["", ""]), "word_prefixes"),
    (dict(spectra_split="dev"), "spectra_split"),
    (dict(toy_runs=[], models=[]), "nothing to trace"),
    (dict(convergence_threshold=1.5), "convergence_threshold"),
    (dict(batch_tokens=0), "batch_tokens"),
])
def test_parameter_checks(kw, match):
    with pytest.raises(ParameterError, match=match):
        TrajectoryParams(**kw).check()


def test_default_parameters_validate():
    TrajectoryParams().check()


def test_default_profile_reads_the_papers_documents_of_128_tokens():
    """Issues 7 / 17: the spectra of the default profile use the Tracing paper's sequences (every validation
    document, its first <= 128 tokens); the windows variant keeps 512 windows of 128 tokens."""
    P = TrajectoryParams()
    assert P.spectra_sequences == "documents" and P.max_docs is None and P.min_doc_tokens == 10
    assert P.n_seqs >= 512 and P.seq_len >= 128 and P.spectra_split == "validation"


def test_batch_prompts_fills_a_token_budget():
    assert batch_prompts([[1] * 128] * 600, 2048) == 16
    assert batch_prompts([[1] * 3, [1] * 9], 2048) == 227            # the longest prompt counts
    assert batch_prompts([[1] * 3] * 900, 2048, chunk_size=256) == 256   # at most a cache chunk
    assert batch_prompts([[1] * 300], 256) == 1                        # at least one prompt


# ----------------------------------------------------------------------------- inputs

def test_sequence_windows_are_evenly_spaced_with_targets():
    s = np.arange(1000)
    w = sequence_windows(s, 10, 5)
    assert w.starts.tolist() == [0, 247, 494, 741, 989]
    assert all(ids == list(range(a, a + 10)) for ids, a in zip(w.ids, w.starts))
    assert w.targets.tolist() == (w.starts + 10).tolist()          # the token after each window
    assert w.overlap == 0 and w.stream_tokens == 1000
    dense = sequence_windows(s, 100, 200)                   # more windows than disjoint ones
    assert 0 < dense.overlap < 1 and dense.targets.max() <= 999 and len(dense.ids) == 200
    assert sequence_windows(s, 10, 3, bos_id=7).ids[1][:2] == [7, 494]
    with pytest.raises(ValueError, match="too short"):
        sequence_windows(s[:5], 10, 1)
    with pytest.raises(ValueError, match="distinct windows"):
        sequence_windows(s[:20], 10, 11)


# ----------------------------------------------------------------------------- spectra

def _power_law_cloud(n, d, alpha, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scale = np.arange(1, d + 1) ** (-alpha / 2)
    return (rng.standard_normal((n, d)) * scale) @ q.T + 3.0        # an offset the centring removes


def test_layer_spectra_per_layer_on_constructed_clouds():
    n, d = 4000, 128
    layers = [_power_law_cloud(n, d, 1.5, 0), np.random.default_rng(1).standard_normal((n, d)),
              np.ones((n, d))]                                         # the last has zero variance
    X = np.stack(layers, 1)                                            # (N, L, d)
    out = nb06.layer_spectra(X)
    for l in (0, 1):
        e = M.eigenspectrum(layers[l])
        np.testing.assert_allclose(out["eigs"][l], e, rtol=1e-10, atol=1e-14)
        assert out["rankme"][l] == pytest.approx(M.rankme(e), rel=1e-12)
        assert out["rankme_singular"][l] == pytest.approx(M.rankme(e, variant="singular"), rel=1e-12)
        a = M.alpha_req(e)
        assert (out["alpha"][l], out["alpha_r2"][l], out["alpha_r2_100"][l]) == pytest.approx((a.alpha, a.r2, a.r2_100), rel=1e-12)
    assert out["alpha"][0] == pytest.approx(1.5, abs=0.15) and out["alpha_r2"][0] > 0.95
    assert out["rankme"][1] > 0.9 * d and abs(out["alpha"][1]) < 0.3 and out["rankme"][0] < 0.5 * d
    assert np.isnan(out["rankme"][2]) and np.isnan(out["alpha"][2]) and np.isnan(out["eigs"][2]).all()
    with pytest.raises(ValueError, match="n_prompts, n_layers, d"):
        nb06.layer_spectra(X[:, 0])


def test_power_law_intercept_recovers_an_exact_law():
    r = np.arange(1, 201)
    lam = 0.3 * r ** -1.2
    lam = lam / lam.sum()
    a = M.alpha_req(lam)
    assert a.alpha == pytest.approx(1.2, abs=1e-9)
    b = M.power_law_intercept(lam, a.alpha)
    np.testing.assert_allclose(np.exp(b) * r ** -a.alpha, lam, rtol=1e-8)
    # batched, and on a noisy spectrum it is the WLS intercept of alpha_req's own fit
    noisy = np.sort(lam * np.exp(np.random.default_rng(0).normal(0, 0.1, 200)))[::-1]
    a2 = M.alpha_req(noisy)
    rank = np.arange(12, 101)
    w = (1 / rank.astype(np.float32)).astype(np.float64)
    X = np.stack([-np.log(rank), np.ones(len(rank))], 1)
    coef = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * np.log(noisy[11:100])))
    assert a2.alpha == pytest.approx(coef[0], rel=1e-9)
    both = M.power_law_intercept(np.stack([lam, noisy]), np.array([a.alpha, a2.alpha]))
    assert both[1] == pytest.approx(coef[1], rel=1e-9) and both[0] == pytest.approx(b)


def test_model_nll_matches_cross_entropy():
    """The last-token NLL of the spectra windows goes through tg_utils.models.unembed.model_nll."""
    g = torch.Generator().manual_seed(0)
    W_U, b_U = torch.randn(8, 50, generator=g), torch.randn(50, generator=g)
    h, y = torch.randn(6, 8, generator=g), torch.randint(0, 50, (6,), generator=g)
    desc = types.SimpleNamespace(W_U=W_U, b_U=b_U, logit_softcap=None)
    got = model_nll(desc, h.numpy(), y.numpy())
    want = F.cross_entropy(h @ W_U + b_U, y, reduction="none").double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    desc.W_U = None
    assert model_nll(desc, h.numpy(), y.numpy()) is None


# ----------------------------------------------------------------------------- tables

def _results(steps, L=3, d=16, n=40, W=6, seed=0):
    """Per-checkpoint results of random states (spectra computed for real), word states drifting
    towards the last checkpoint, and P1 / P2 of fixed values."""
    rng = np.random.default_rng(seed)
    final = rng.standard_normal((W, L, d))
    out = []
    for i, s in enumerate(steps):
        S = rng.standard_normal((n, L, d)) * np.linspace(1, 3, d)
        frac = i / (len(steps) - 1)
        ws = frac * final + (1 - frac) * rng.standard_normal((W, L, d))
        out.append(nb06.CheckpointResult(s, nb06.layer_spectra(S), 2.0 - frac, {"": ws},
                                           np.full((W, L), 0.5 + 0.1 * frac), np.full((W, L), 0.4), 0.0,
                                           np.full((W, L), 0.3), np.full((W, L), 0.1 * frac)))
    return out


def _toy_traj(steps, warmup=None):
    return nb06.Trajectory("r", "toy:r", [nb06.Checkpoint(s, ModelSpec.parse(f"toy:r@{s}")) for s in steps], warmup)


def test_spectra_rows_are_long_form_with_steps():
    traj = _toy_traj([0, 1, 2, 4], 2)
    res = _results(traj.steps)
    df = nb06.spectra_rows(traj, res)
    check_long(df)
    assert list(df.columns) == ["model", "revision", "prompt_id", "shuffle_index", "layer", "metric", "value",
                                "trajectory", "step"]
    assert set(df.metric) == set(nb06.SPECTRAL_METRICS) | {"next_token_nll"}
    assert len(df) == 4 * (3 * len(nb06.SPECTRAL_METRICS) + 1)
    assert set(df.revision) == {"step0", "step1", "step2", "step4"} and (df.prompt_id == -1).all()
    nll = df[df.metric == "next_token_nll"]
    assert (nll.layer == 2).all() and nll.value.tolist() == pytest.approx([2.0, 2 - 1 / 3, 2 - 2 / 3, 1.0])
    r = df[(df.metric == "rankme") & (df.step == 4) & (df.layer == 1)].value.item()
    assert r == pytest.approx(res[3].spectra["rankme"][1])
    eigs = nb06.eig_rows(traj, res)
    assert list(eigs.columns) == ["trajectory", "step", "layer", "rank", "eigenvalue"] and len(eigs) == 4 * 3 * 16
    np.testing.assert_allclose(eigs.groupby(["step", "layer"]).eigenvalue.sum(), 1.0)
    fits = nb06.fit_rows(traj, res)
    assert len(fits) == 12 and set(fits.columns) == {"trajectory", "step", "layer", "alpha", "intercept", "alpha_r2"}


def test_phase_tables_apply_the_rule_per_layer():
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    rk = np.array([50, 40, 30, 20, 30, 45, 60, 70, 60, 45, 35, 28.0])
    al = np.array([1.0, 1.1, 1.2, 1.3, 1.1, 0.9, 0.7, 0.6, 0.8, 1.0, 1.2, 1.3])
    traj = _toy_traj(steps, 4)
    rows = []
    for layer, (r, a) in enumerate([(rk, al), (rk[::-1].copy(), al)]):
        for m, v in (("rankme", r), ("alpha", a)):
            rows.append(pd.DataFrame({"layer": layer, "metric": m, "value": v, "step": steps}))
    spectra = pd.concat(rows, ignore_index=True)
    P = TrajectoryParams()
    ph, iv = nb06.phase_tables(traj, spectra, P)
    want = nb06.frame(T.mark_phases(steps, rk, al, warmup_until=4))
    got = ph[ph.layer == 0].drop(columns=["trajectory", "layer"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert list(got.phase) == list(T.PHASES)                      # all three, in order, on this curve
    assert set(ph.layer) <= {0, 1} and len(iv) == 2 * (len(steps) - 1)
    assert list(iv.columns[:4]) == ["trajectory", "layer", "start_step", "end_step"]
    # a layer with an undefined curve is skipped, not an error
    bad = spectra.copy()
    bad.loc[(bad.layer == 1) & (bad.metric == "alpha") & (bad.step == 8), "value"] = np.nan
    ph2, _ = nb06.phase_tables(traj, bad, P)
    assert set(ph2.layer) == {0}


def test_convergence_rows_and_summary():
    steps = [0, 1, 2, 4]
    traj = _toy_traj(steps)
    res = _results(steps)
    wp = types.SimpleNamespace(n_tokens=np.array([1, 1, 2, 2, 3, 3]))
    inputs = types.SimpleNamespace(words={"": wp})
    conv = nb06.convergence_rows(traj, inputs, res)
    assert list(conv.columns[:2]) == ["trajectory", "prefix"]
    last = conv[conv.step == 4]
    np.testing.assert_allclose(last.mean_cos, 1.0)
    assert len(conv) == 4 * 3 * 3 and (conv.n_words == 2).all()
    # summary on a hand-made table: deficit and first step from which cos stays >= threshold
    hand = pd.DataFrame({"trajectory": "r", "prefix": "", "layer": 1, "bucket": 2, "step": steps,
                         "mean_cos": [0.5, 0.95, 0.8, 1.0], "n_words": 7})
    s = nb06.convergence_summary(hand, threshold=0.9)
    assert s.deficit.item() == pytest.approx(np.mean([0.5, 0.05, 0.2]))
    assert s.converged_step.item() == 4 and s.n_words.item() == 7
    s2 = nb06.convergence_summary(hand.assign(mean_cos=[0.95, 0.96, 0.97, 1.0]), threshold=0.9)
    assert s2.converged_step.item() == 0
    # trends: deficit rising with layer and with bucket -> both rho = +1
    grid = pd.DataFrame([{"trajectory": "r", "prefix": "", "layer": l, "bucket": b, "deficit": 0.1 * l + 0.01 * b,
                          "converged_step": 0, "n_words": 10} for l in range(4) for b in (1, 2, 3)])
    tr = nb06.convergence_trends(grid)
    assert tr.rho_layer.item() == pytest.approx(1.0) and tr.rho_bucket.item() == pytest.approx(1.0)
    # perturbation rows
    pert = nb06.perturbation_rows(traj, types.SimpleNamespace(contexts=types.SimpleNamespace(
        word_buckets=lambda: np.array([2, 2, 3, 3, 4, 4]))), res)
    assert list(pert.columns[:3]) == ["trajectory", "step", "states"] and len(pert) == 2 * 4 * 3 * 3
    last = pert[pert.step == 4]
    np.testing.assert_allclose(last[last.states == "raw"].P1_minus_P2, 0.2)
    np.testing.assert_allclose(last[last.states == "centred"].P1_minus_P2, 0.2)
    np.testing.assert_allclose(pert[(pert.step == 0) & (pert.states == "centred")].P1_minus_P2, 0.3)


def test_centred_perturbation_removes_a_shared_direction():
    """States = a large common vector + small word / context parts: raw P1 and P2 are ~1 and P1 - P2 ~0;
    centred on the common vector, the word identity (shared by a word's contexts) shows: P1 > P2."""
    rng = np.random.default_rng(0)
    Wd, C, L, d = 8, 5, 1, 32
    common = 50 * rng.standard_normal(d)
    word = rng.standard_normal((Wd, 1, L, d))
    ctx = 0.3 * rng.standard_normal((Wd, C, L, d))
    base = common + word + ctx
    swap = common + rng.standard_normal((Wd, C, L, d)) + ctx          # another word, same context
    raw = WS.perturbation_scores(base, None, swap)
    cen = WS.perturbation_scores(base - common, None, swap - common)
    assert raw.p1.min() > 0.99 and raw.p2.min() > 0.99 and np.abs(raw.diff).max() < 0.01
    assert cen.diff.mean() > 0.5


def test_warmup_collapse_starts_where_rankme_falls():
    """With log-spaced checkpoints the first updates barely move RankMe: leading flat intervals are not
    part of the warmup collapse, which starts at the last checkpoint before RankMe falls (issue 17)."""
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 160]
    rk = [88.7, 87.7, 83.0, 73.0, 7.5, 2.0, 1.3, 2.8, 4.6, 5.3]           # llama-preln as measured
    al = [0.826, 0.840, 0.874, 0.948, 0.902, 0.962, 2.009, 2.981, 3.569, 3.681]
    iv = T.phase_intervals(steps, rk, al, warmup_until=16)
    assert iv.rankme_sign[0] == 0                                          # 0 -> 1 is flat
    first_down = int(np.flatnonzero(iv.rankme_sign < 0)[0])
    ph = T.mark_phases(steps, rk, al, warmup_until=16)
    assert (ph[0].phase, ph[0].start_step, ph[0].end_step) == (T.WARMUP, steps[first_down], 16)
    assert first_down > 0
    flat_then_up = T.mark_phases(steps, [50, 50.1, 50, 60, 80, 100, 120, 140, 160, 170], np.linspace(1.0, 0.5, 10))
    assert T.WARMUP not in {p.phase for p in flat_then_up}


def test_shown_steps():
    assert PT.shown_steps([0, 1, 2, 4, 8, 16, 32, 64, 128, 160], 4) == [0, 4, 32, 160]
    assert PT.shown_steps([0, 5], 4) == [0, 5]


# ----------------------------------------------------------------------------- end to end

def _tiny_corpus(seed=0):
    rng = random.Random(seed)
    subj = ["The engineer", "A historian", "The committee", "Every philosopher", "The astronomer", "A musician"]
    verb = ["described", "studied", "rejected", "praised", "measured", "compared", "discovered"]
    obj = ["telescope", "manuscript", "government", "mathematics", "philosophy", "architecture", "instrument",
           "population", "revolution", "character", "community", "agreement", "structure", "movement"]
    adj = ["ancient", "modern", "strange", "famous", "complex", "simple", "northern"]

    def article(n, sep=" "):
        return sep.join(f"{rng.choice(subj)} {rng.choice(verb)} the {rng.choice(adj)} {rng.choice(obj)}. "
                        f"It was {rng.choice(adj)} and {rng.choice(adj)}." for _ in range(n))
    # validation: one line (a document of the spectra) per pair of sentences
    arts = {s: [Article(f"{s}{i}", article(60, "\n" if s == "validation" else " ")) for i in range(k)]
            for s, k in (("train", 6), ("validation", 2), ("test", 1))}
    return Corpus("tiny", arts)


def test_end_to_end_on_a_tiny_trained_toy_model(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tg_utils.figures import save_figure
    from tg_utils.toy.model import preset
    from tg_utils.toy.tokenizer import train_bpe_tokenizer
    from tg_utils.toy.train import TrainConfig, encode_texts, train_run

    corpus = _tiny_corpus()
    tok = train_bpe_tokenizer(corpus.texts("train"), vocab_size=300)
    ids = {s: encode_texts(tok, corpus.texts(s)) for s in ("train", "validation")}
    cfg = preset("llama-preln", n_layer=2, d_model=32, n_head=2, d_ff=64, vocab_size=len(tok), context=32)
    tc = TrainConfig(max_steps=8, batch_size=4, warmup_steps=2, lr=1e-2, eval_every=4, save_every=4,
                     eval_batch_size=8, trajectory_optimizer=False)
    train_run(tmp_path / "checkpoints" / "tiny", cfg, tc, ids["train"], ids["validation"], tokenizer=tok,
              progress=False)

    P = TrajectoryParams(out_dir=str(tmp_path), figures_dir=str(tmp_path / "figures"), toy_runs=["tiny"],
                         n_seqs=24, seq_len=16, words_path=None, contexts_path=None, word_buckets=[1, 2, 3, 4],
                         words_per_bucket=4, context_buckets=[2, 3, 4], min_context_words=2,
                         context_words_per_bucket=3, batch_tokens=128, min_bucket_words=2)
    P.check()
    traj = nb06.trajectories(P)[0]
    words_only = dataclasses.replace(traj, name="tiny (words)", spectra=False)
    res = nb06.run_trajectories(P, [traj, words_only], corpus=corpus, progress=False)
    assert set(res.spectra.trajectory) == {"tiny"}                     # words-only: no spectra ...
    assert set(res.convergence.trajectory) == set(res.perturbation.trajectory) == {"tiny", "tiny (words)"}
    wo = res.perturbation[res.perturbation.trajectory == "tiny (words)"]
    assert set(wo.states) == {"raw"}                                   # ... nor centred states
    pd.testing.assert_frame_equal(                                     # the same word numbers
        res.convergence[res.convergence.trajectory == "tiny"].drop(columns="trajectory").reset_index(drop=True),
        res.convergence[res.convergence.trajectory == "tiny (words)"].drop(columns="trajectory").reset_index(drop=True))
    info = res.inputs["tiny"]
    assert info["sequences"] == "documents" and info["n_seqs"] == info["n_available"] >= 14
    assert res.inputs["tiny (words)"]["n_seqs"] == 0
    res = nb06.run_trajectories(P, [traj], corpus=corpus, progress=False)

    assert res.checkpoints.step.tolist() == [0, 1, 2, 4, 8] and res.warmup == {"tiny": 2}
    check_long(res.spectra)
    n_states = 2 + 2                                                   # embedding, 2 blocks, final norm
    assert sorted(res.spectra.layer.unique()) == list(range(n_states))
    curves = PT.spectral_curves(res)
    assert curves.step.tolist() == [0, 1, 2, 4, 8] and (curves.rankme > 1).all()
    assert np.isfinite(curves.alpha).all() and np.isfinite(curves.next_token_nll).all()
    assert curves.next_token_nll.iloc[0] == pytest.approx(np.log(len(tok)), rel=0.2)   # ~uniform at init
    assert list(res.phases.columns) == ["trajectory", "layer", *T.PHASE_COLUMNS]
    assert set(res.logs.columns) >= {"step", "val_loss", "trajectory"}
    conv = res.convergence
    assert set(conv.prefix) == {"", "The word is"} and set(conv.layer) == set(range(n_states))
    np.testing.assert_allclose(conv[conv.step == 8].mean_cos, 1.0, rtol=1e-6)
    assert (conv[conv.step == 0].mean_cos < 1).all()
    assert set(res.buckets.analysis) == {"convergence", "perturbation"}
    assert len(res.perturbation) and set(res.perturbation.step) == {0, 1, 2, 4, 8}
    assert set(res.perturbation.columns) >= {"trajectory", "step", "layer", "bucket", "P1", "P2", "P1_minus_P2"}
    assert set(res.perturbation.states) == {"raw", "centred"}
    l0 = res.perturbation[res.perturbation.layer == 0]                    # the embedding of the shared last token
    np.testing.assert_allclose(l0.P2, 1.0, rtol=1e-6)
    text = findings_markdown(res)
    assert "RankMe" in text and "Warmup collapse" in text and "Later layers converge later" in text

    # every figure draws and saves
    summ = nb06.convergence_summary(conv)
    for name, (fig, tidy) in {
            "traj": PT.plot_spectral_trajectories(res), "overlay": PT.plot_spectral_overlay(res),
            "eig": PT.plot_eigenspectra(res, 3), "heat": PT.plot_layer_heatmaps(res),
            "conv": PT.plot_convergence(conv), "delta": PT.plot_convergence(conv, "mean_abs_delta"),
            "summ": PT.plot_convergence_summary(summ),
            "pf": PT.plot_perturbation_final(res.perturbation, [4]),
            "pt": PT.plot_perturbation_trajectory(res.perturbation, [4])}.items():
        assert len(tidy) > 0 and len(fig.axes) > 0
        if name == "overlay":                             # saving is figures.py's (tested there); one here
            save_figure(fig, nb06.NB, name, f"test figure {name}", tidy, P.figures_dir)
        plt.close(fig)
    assert (tmp_path / "figures" / nb06.NB / "overlay.png").exists()

    # a second run (the notebook's run: tables saved) reads everything from the activation cache and gives
    # the same numbers
    res2 = nb06.run(P, corpus=corpus, progress=False)
    pd.testing.assert_frame_equal(res.spectra, res2.spectra)
    pd.testing.assert_frame_equal(res.convergence, res2.convergence)
    saved = {p.stem for p in (tmp_path / "results" / nb06.NB).glob("*.csv")}
    assert saved == set(nb06.result_tables(res2, P)) and "convergence_summary" in saved
    assert "checkpoints in" in nb06.describe_run(res2)

"""Notebook 06's memorization (tg_utils.experiments.nb06_memorization): the replay of the training batches,
the probes of each kind, the model's continuation log-likelihood, the summary, the tables' schema and the
parameters, on synthetic streams and a toy model trained here for a few steps."""
from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from tg_utils.data.corpus import Article, Corpus
from tg_utils.experiments import nb06_memorization as MEM
from tg_utils.experiments import nb06_training_trajectory_phases as nb06
from tg_utils.params import ParameterError
from tg_utils.params.trajectory import TrajectoryParams
from tg_utils.plots.memorization import plot_memorization


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def _corpus(seed=0):
    rng = random.Random(seed)
    words = ["the", "engineer", "historian", "studied", "praised", "ancient", "modern", "telescope", "manuscript",
             "government", "famous", "simple", "it", "was", "and", "measured", "structure", "movement"]
    def art(n):
        return " ".join(rng.choice(words) for _ in range(n)) + "."
    arts = {s: [Article(f"{s}{i}", art(400)) for i in range(k)] for s, k in (("train", 6), ("validation", 2),
                                                                            ("test", 1))}
    return Corpus("tiny", arts)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tg_utils.toy.model import preset
    from tg_utils.toy.tokenizer import train_bpe_tokenizer
    from tg_utils.toy.train import TrainConfig, encode_texts, train_run
    root = tmp_path_factory.mktemp("memo")
    corpus = _corpus()
    tok = train_bpe_tokenizer(corpus.texts("train"), vocab_size=300)
    ids = {s: encode_texts(tok, corpus.texts(s)) for s in ("train", "validation")}
    cfg = preset("llama-preln", n_layer=2, d_model=32, n_head=2, d_ff=64, vocab_size=len(tok), context=32)
    tc = TrainConfig(max_steps=8, batch_size=4, grad_accum=2, warmup_steps=2, lr=1e-2, eval_every=4,
                     save_every=4, eval_batch_size=8, trajectory_optimizer=False)
    train_run(root / "checkpoints" / "tiny", cfg, tc, ids["train"], ids["validation"], tokenizer=tok,
              progress=False)
    return root, corpus, ids


def test_replayed_windows_are_the_training_batches(tiny_run):
    root, _, ids = tiny_run
    rd = root / "checkpoints" / "tiny"
    starts, steps, ctx = MEM.training_windows(rd, len(ids["train"]))
    assert ctx == 32 and len(starts) == 8 * 2 * 4                    # steps x grad_accum x batch_size
    assert steps.min() == 1 and steps.max() == 8 and np.bincount(steps)[1:].tolist() == [8] * 8
    assert (starts >= 0).all() and (starts + ctx < len(ids["train"])).all()
    # a run trained from another data seed is refused (its stored generator state differs)
    cfg = json.loads((rd / "config.json").read_text())
    cfg["train_config"]["seed"] += 1
    other = root / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(cfg))
    (other / "step_000008.pt").write_bytes((rd / "step_000008.pt").read_bytes())
    with pytest.raises(ValueError, match="retrain"):
        MEM.training_windows(other, len(ids["train"]))


def test_probes_of_each_kind_lie_where_they_should():
    rng = np.random.default_rng(0)
    train, val = rng.integers(1, 50, 3000), rng.integers(1, 50, 800)
    train[::97] = 0                                                  # "end of text" tokens
    starts = np.array([100, 1000, 1010, 2500])
    steps = np.array([1, 2, 5, 5])
    ctx = 20
    pr = MEM.write_probes(train, val, (starts, steps, ctx), k=6, m=3, n=15, seed=1, eos=0)
    t = pr.table
    assert pr.ids.shape == (len(t), 9) and set(t.kind) == set(MEM.KINDS)
    assert (t.groupby("kind").size() <= 15).all() and (t[t.kind == "held_out"].shape[0] == 15)
    for r, x in zip(t.itertuples(), pr.ids):
        stream = val if r.kind == "held_out" else train
        assert x.tolist() == stream[r.start:r.start + 9].tolist() and 0 not in x
        inside = (starts <= r.start) & (r.start + 9 <= starts + ctx + 1)
        touches = (starts <= r.start + 8) & (r.start <= starts + ctx)
        if r.kind == "seen":
            assert inside.any() and r.first_seen_step == steps[inside].min() and r.times_seen == inside.sum()
        elif r.kind == "train_unseen":
            assert not touches.any() and r.first_seen_step == -1
    again = MEM.write_probes(train, val, (starts, steps, ctx), k=6, m=3, n=15, seed=1, eos=0)
    assert again.table.equals(t)                                    # seeded
    with pytest.raises(ValueError, match="lower them"):
        MEM.write_probes(train, val, (starts, steps, ctx), k=20, m=5, n=3, seed=0)


def test_summary_gaps_and_spearman():
    rows = []
    for pid, (kind, seen_by, lp, ng) in enumerate([("seen", True, -2.0, -1.0), ("seen", True, -4.0, -3.0),
                                                   ("seen", True, -6.0, -2.0), ("seen", False, -9.0, -5.0),
                                                   ("train_unseen", False, -8.0, -1.0),
                                                   ("held_out", False, -10.0, -4.0)]):
        rows.append({"trajectory": "r", "step": 3, "probe_id": pid, "kind": kind, "seen_by_step": seen_by,
                     "model_logp": lp, "ngram_logp": ng})
    s = MEM.summarize(pd.DataFrame(rows), m=2).set_index("kind")
    assert s.loc["seen", "n_probes"] == 3 and s.loc["not_yet_seen", "n_probes"] == 1
    assert s.loc["seen", "model_logp_token"] == pytest.approx(-2.0)
    assert s.loc["seen", "gap_held_out"] == pytest.approx(-2.0 - (-5.0))
    # train_unseen mean per token -4; the seen probes' kind mean (all four) is -5.25 per token
    assert s.loc["seen", "gap_train_unseen"] == pytest.approx(-2.0 - (-4.0))
    assert s.loc["seen", "spearman"] == pytest.approx(0.5)           # ranks (3, 2, 1) vs (3, 1, 2)
    # Welch standard error: seen per-token values (-1, -2, -3) against held_out's single probe: undefined
    assert np.isnan(s.loc["seen", "gap_held_out_se"])
    assert np.isnan(s.loc["all", "gap_train_unseen_se"])             # one train_unseen probe
    assert s.loc["all", "n_probes"] == 6 and np.isnan(s.loc["held_out", "spearman"])


def test_run_memorization_tables_and_model_logprobs(tiny_run):
    root, corpus, _ = tiny_run
    P = TrajectoryParams(out_dir=str(root), toy_runs=["tiny"], memo_probes=6, memo_prefix_tokens=8,
                         memo_continuation_tokens=4, batch_tokens=64, words_path=None, contexts_path=None)
    P.check()
    trajs = nb06.trajectories(P)
    memo = MEM.run_memorization(P, trajs, corpus=corpus, progress=False)
    n_ck = len(trajs[0].checkpoints)
    assert list(memo.scores.columns) == MEM.SCORE_COLUMNS
    assert len(memo.scores) == len(memo.probes) * n_ck and set(memo.scores.kind) <= set(MEM.KINDS)
    assert memo.scores.groupby("step").size().eq(len(memo.probes)).all()
    train_spans = memo.probes[memo.probes.split == "train"]
    assert (train_spans.ngram_suffix_len == 8).all()                # the whole prefix occurs in the index
    assert (memo.probes.ngram_suffix_len <= 8).all() and (memo.scores.model_logp < 0).all()
    assert set(memo.summary.columns) == {"trajectory", "step", "kind", "n_probes", "model_logp_token",
                                         "ngram_logp_token", "spearman", "gap_held_out", "gap_train_unseen",
                                         "gap_held_out_se", "gap_train_unseen_se"}
    two = memo.summary[(memo.summary.kind == "all")].iloc[-1]
    sc = memo.scores[memo.scores.step == two.step]
    a, b = sc.model_logp / 4, sc[sc.kind == "train_unseen"].model_logp / 4
    assert two.gap_train_unseen_se == pytest.approx(np.sqrt(a.var() / len(a) + b.var() / len(b)))
    assert {"index_build_s", "index_mb", "train_tokens"} <= set(memo.cost.columns)
    for name in ("memorization", "memorization_summary", "memorization_probes", "memorization_cost"):
        assert (root / "results" / MEM.NB / f"{name}.csv").exists()
    # the model's log-likelihood of the continuation, recomputed one probe at a time
    from tg_utils.models.load import load_model
    lm = load_model("toy:tiny@8", out_dir=root)
    last = memo.scores[memo.scores.step == 8].sort_values("probe_id")
    pr0 = memo.probes.iloc[0]                                          # its tokens, cut again from its split
    enc = lm.tokenizer(corpus.texts(pr0.split), add_special_tokens=False)["input_ids"]
    stream = np.concatenate([np.r_[x, lm.tokenizer.eos_token_id] for x in enc]).astype(np.int64)
    x = torch.as_tensor(stream[pr0.start:pr0.start + 12])[None]
    lp = torch.log_softmax(lm.model(x).double(), -1)[0]
    want = sum(lp[j - 1, x[0, j]].item() for j in range(8, 12))
    assert last.model_logp.iloc[0] == pytest.approx(want, rel=1e-6)
    fig, tidy = plot_memorization(memo.summary)
    assert set(tidy.panel) == {"model_logp_token", "spearman", "gap_held_out", "gap_train_unseen"}
    assert set(tidy[tidy.panel == "spearman"].kind) <= {"all", "held_out"}


def test_memorization_parameters_are_checked():
    with pytest.raises(ParameterError, match="memo_probes"):
        TrajectoryParams(memo_probes=2).check()
    with pytest.raises(ParameterError, match="memo_prefix_tokens"):
        TrajectoryParams(memo_prefix_tokens=0).check()
    with pytest.raises(ParameterError, match="memorization"):
        TrajectoryParams(memorization="yes").check()

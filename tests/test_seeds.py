"""Notebook 01's seeds: the parameters' checks, the run folders of each seed, identical checkpoints for the
same seed and different ones for two seeds, and the spread over seeds with the findings built on it."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from tg_utils.experiments import nb01_train_toy_models as nb01
from tg_utils.models.spec import ModelSpec
from tg_utils.params import ParameterError
from tg_utils.params.notebooks import TrainToyParams
from tg_utils.toy.checkpoints import list_checkpoints, run_dir, step_path
from tg_utils.toy.runs import RunJob, ToyData, run_jobs, train_config
from tg_utils.toy.tokenizer import train_bpe_tokenizer
from tg_utils.toy.train import encode_texts

from conftest import SAMPLE_TEXTS

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(vocab_size=300, n_layer=1, d_model=16, n_head=2, d_ff=32, context=16, max_steps=4, batch_size=2,
            warmup_steps=1, eval_every=2, eval_tokens=64, save_every=2)   # smaller than the smoke profile


def params(tmp_path, **kw) -> TrainToyParams:
    return TrainToyParams(out_dir=str(tmp_path), **{**TINY, **kw})


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("values, fragment", [
    ({"seeds": []}, "at least one seed"),
    ({"seeds": [0, 1, 1]}, "seed 1 is given twice"),
    ({"seeds": [0, -1]}, ">= 0"),
    ({"seeds": [1, 0]}, "must be 'seed' (0)"),
    ({"seed": 3}, "must be 'seed' (3)"),
    ({"seed_runs": ["gpt2"]}, "'gpt2' is not a run"),
    ({"seed_runs": ["llama-postln-nowarmup"], "no_warmup_run": False}, "is not a run"),
    ({"seed_runs": ["llama-preln", "llama-preln"]}, "given twice"),
    ({"seeds": [0, 1.5]}, "expected an integer"),
])
def test_bad_seeds_are_refused_with_the_fix(values, fragment):
    with pytest.raises(ParameterError, match="seed") as e:
        TrainToyParams.from_dict(values, "01_train_toy_models")
    assert fragment in str(e.value)


def test_run_jobs_first_seed_keeps_the_plain_folders():
    P = TrainToyParams(seed=5, seeds=[5, 2, 9], seed_runs=["standard-preln", "llama-preln"])
    jobs = run_jobs(P)
    assert jobs[:5] == [RunJob(r, 5, r) for r in ("llama-preln", "llama-postln", "standard-preln",
                                                   "standard-postln", "llama-postln-nowarmup")]
    assert jobs[5:] == [RunJob("llama-preln", 2, "llama-preln-seed2"), RunJob("standard-preln", 2, "standard-preln-seed2"),
                        RunJob("llama-preln", 9, "llama-preln-seed9"), RunJob("standard-preln", 9, "standard-preln-seed9")]
    assert train_config(P, "llama-preln", 9).seed == 9 and train_config(P, "llama-preln").seed == 5
    assert len(run_jobs(TrainToyParams(seeds=[0]))) == 5


# ----------------------------------------------------------------------------- training

def test_same_seed_gives_identical_checkpoints_and_two_seeds_different_ones(tmp_path):
    tok = train_bpe_tokenizer(SAMPLE_TEXTS, vocab_size=300, path=tmp_path / "tok.json")
    ids = encode_texts(tok, SAMPLE_TEXTS)
    data = ToyData(None, tok, {"train": ids, "validation": ids[:200], "test": ids[200:400]})
    kw = dict(presets=["llama-preln"], no_warmup_run=False, seeds=[0, 1], seed_runs=["llama-preln"])
    A, B = params(tmp_path / "a", **kw), params(tmp_path / "b", **kw)
    logs = nb01.train_all(A, data, progress=False)
    nb01.train_all(B, data, progress=False)
    assert sorted(set(zip(logs.run, logs.seed))) == [("llama-preln", 0), ("llama-preln", 1)]
    steps = list_checkpoints(run_dir(A.out_dir, "llama-preln"))
    assert steps == [0, 1, 2, 4] == list_checkpoints(run_dir(A.out_dir, "llama-preln-seed1"))

    def state(P, folder, step):
        return torch.load(step_path(run_dir(P.out_dir, folder), step), weights_only=True)["model_state"]

    for folder in ("llama-preln", "llama-preln-seed1"):
        for step in steps:
            a, b = state(A, folder, step), state(B, folder, step)
            assert all(torch.equal(a[k], b[k]) for k in a), (folder, step)
    for step in (0, 4):            # another initialisation, and another data order on top of it
        s0, s1 = state(A, "llama-preln", step), state(A, "llama-preln-seed1", step)
        assert not torch.equal(s0["embed.weight"], s1["embed.weight"])
    summary = nb01.summary_table(A)
    assert summary[["run", "seed"]].values.tolist() == [["llama-preln", 0], ["llama-preln", 1]]
    assert summary.val_ppl.iloc[0] != summary.val_ppl.iloc[1]


# ----------------------------------------------------------------------------- spread and findings

def summary(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"run": r, "seed": s, "val_ppl": v, "test_ppl": v + 10, "unigram_val_ppl": 1300.0,
                          "unigram_test_ppl": 1310.0, "train_time_s": 1.0}
                         for r, vs in values.items() for s, v in enumerate(vs)])


def test_seed_spread_mean_min_max_std():
    sp = nb01.seed_spread(summary({"a": [600.0, 610.0, 620.0], "b": [700.0]})).set_index("run")
    assert sp.at["a", "n_seeds"] == 3 and sp.at["a", "seeds"] == "0 1 2"
    assert (sp.at["a", "val_ppl_seed0"], sp.at["a", "val_ppl_mean"]) == (600.0, 610.0)
    assert (sp.at["a", "val_ppl_min"], sp.at["a", "val_ppl_max"]) == (600.0, 620.0)
    assert sp.at["a", "val_ppl_std"] == pytest.approx(10.0)          # sample std (ddof 1) of 600, 610, 620
    assert sp.at["a", "test_ppl_mean"] == 620.0
    assert sp.at["b", "n_seeds"] == 1 and math.isnan(sp.at["b", "val_ppl_std"]) and sp.at["b", "val_ppl_max"] == 700.0


def test_a_difference_is_stated_only_beyond_the_seed_spread():
    apart = nb01.differences(nb01.seed_spread(summary({"b": [640.0, 650.0], "a": [600.0, 610.0], "c": [500.0]})))
    assert apart == ["a is lower than b beyond the seed spread: val_ppl mean 605.0 vs 645.0 "
                     "(ranges 600.0-610.0 and 640.0-650.0 do not overlap)."]          # c: one seed, no pair
    overlap = nb01.differences(nb01.seed_spread(summary({"a": [600.0, 630.0], "b": [620.0, 640.0]})))
    assert overlap[0].startswith("a vs b: no difference stated, the seed spread covers it")
    P = TrainToyParams(presets=["llama-preln", "standard-preln"], no_warmup_run=False)
    fs = nb01.findings(summary({"llama-preln": [600.0, 630.0, 615.0], "standard-preln": [620.0, 640.0, 625.0]}), P)
    assert fs[0].ours.startswith("llama-preln at 625.0 (mean of 3 seeds) against a unigram baseline of 1310.0")
    assert fs[1].ours.startswith("llama-preln vs standard-preln: no difference stated")
    assert "mean of the validation perplexity over seeds is 4.9 %" in fs[2].ours   # llama-preln: 30 / 615


def test_loss_curves_are_the_mean_over_seeds_with_their_range():
    rows = [{"run": "a", "seed": s, "step": st, "lr": 1e-3, "train_loss": 5.0 + s, "val_loss": 4.0 + 2 * s,
             "val_ppl": math.exp(4.0 + 2 * s)} for s in (0, 1) for st in (0, 1, 2)]
    d = nb01.loss_curves_data(pd.DataFrame(rows), smooth=1)
    v = d[(d.metric == "val_loss") & (d.step == 2)].iloc[0]
    assert (v.value, v.value_min, v.value_max, v.n_seeds) == (5.0, 4.0, 6.0, 2)
    assert d[d.metric == "train_loss_smoothed"].step.tolist() == [1, 2]
    assert len(nb01.lr_schedule_data(pd.DataFrame(rows))) == 2                        # the first seed's schedule


def test_another_seed_is_reached_by_its_folder_name_as_a_toy_spec(tmp_path):
    job = run_jobs(TrainToyParams(seeds=[0, 1]))[-1]
    spec = ModelSpec.parse(f"toy:{job.folder}@4")
    assert (spec.kind, spec.name, spec.step) == ("toy", "standard-preln-seed1", 4)
    assert run_dir(tmp_path, spec.name) == tmp_path / "checkpoints" / "standard-preln-seed1"

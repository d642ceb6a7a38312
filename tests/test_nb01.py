"""Notebook 01's experiment module: figure data, the warmup verdict and the findings text."""
import math

import pandas as pd
import pytest

from tg_utils.experiments import nb01_train_toy_models as nb01
from tg_utils.findings import Finding
from tg_utils.params.notebooks import TrainToyParams


def logs() -> pd.DataFrame:
    rows = []
    for run, base in (("a", 7.0), ("b", 6.0)):
        for step in range(5):
            val = base - step / 10 if step % 2 == 0 else math.nan
            rows.append({"run": run, "step": step, "lr": math.nan if step == 0 else 1e-3 * step,
                         "train_loss": math.nan if step == 0 else base - step / 20,
                         "val_loss": val, "val_ppl": math.exp(val) if step % 2 == 0 else math.nan})
    return pd.DataFrame(rows)


def summary(val_with: float, val_without: float) -> pd.DataFrame:
    rows = [{"run": r, "val_ppl": v, "test_ppl": v + 1, "unigram_val_ppl": 400.0, "unigram_test_ppl": 410.0,
             "train_time_s": 1.0}
            for r, v in (("llama-preln", 800.0), ("llama-postln", val_with), (nb01.NO_WARMUP, val_without))]
    return pd.DataFrame(rows)


def test_loss_curves_data_is_the_smoothed_train_loss_and_every_evaluation():
    d = nb01.loss_curves_data(logs(), smooth=2)
    assert list(d.columns) == ["run", "step", "metric", "value", "value_min", "value_max", "n_seeds"]
    a = d[(d.run == "a") & (d.metric == "train_loss_smoothed")]
    assert a.step.tolist() == [1, 2, 3, 4]
    assert a.value.tolist()[:2] == pytest.approx([7.0 - 1 / 20, (7.0 - 1 / 20 + 7.0 - 2 / 20) / 2])
    assert d[(d.run == "b") & (d.metric == "val_loss")].step.tolist() == [0, 2, 4]
    s = nb01.lr_schedule_data(logs())
    assert list(s.columns) == ["run", "step", "lr"] and len(s) == 8 and s.index.tolist() == list(range(8))


def test_warmup_verdict_and_findings():
    P = TrainToyParams()
    v = nb01.warmup_verdict(summary(1000.0, 1100.0), P)
    assert v == nb01.WarmupVerdict(1000.0, 1100.0) and v.needs_warmup
    assert not nb01.warmup_verdict(summary(1000.0, 1040.0), P).needs_warmup
    assert nb01.warmup_verdict(summary(1000.0, 1100.0), TrainToyParams(no_warmup_run=False)) is None
    fs = nb01.findings(summary(1000.0, 1100.0), P)
    assert fs[0].ours.startswith("llama-preln at 801.0 (seed 0) against a unigram baseline of 410.0")
    warm = next(f for f in fs if isinstance(f, Finding) and "warmup" in f.title)
    assert "1000.0 with warmup and 1100.0 without (seed 0): here post-norm training needs warmup." in warm.ours
    assert warm.verdict == "agrees"
    warm = next(f for f in nb01.findings(summary(1000.0, 1040.0), P) if isinstance(f, Finding) and "warmup" in f.title)
    assert "1040.0 without" in warm.ours and warm.verdict == "disagrees"

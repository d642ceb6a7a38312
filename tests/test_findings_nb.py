"""Findings of notebooks 01, 03, 04, 05 are built from their tables: a changed table changes the text (the
number shown, the verdict); and no notebook's Markdown cell carries a number typed in from a run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tg_utils.experiments import nb01_train_toy_models as nb01
from tg_utils.experiments import nb03_geometry_metrics as nb03
from tg_utils.experiments import nb04_findings, nb05_findings
from tg_utils.findings import Finding, to_markdown
from tg_utils.params.notebooks import TrainToyParams

from test_shuffle import table

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def by_title(findings, word: str) -> Finding:
    return next(f for f in findings if isinstance(f, Finding) and word in f.title)


# ----------------------------------------------------------------------------- 01

def summary01(best: float, without_warmup: float) -> pd.DataFrame:
    return pd.DataFrame([{"run": r, "seed": 0, "val_ppl": v, "test_ppl": v, "unigram_val_ppl": 900.0,
                          "unigram_test_ppl": 900.0} for r, v in
                         (("llama-preln", best), ("llama-postln", 800.0), (nb01.NO_WARMUP, without_warmup))])


def test_nb01_findings_follow_the_summary():
    P = TrainToyParams(seeds=[0])
    a = nb01.findings(summary01(600.0, 1000.0), P)
    b = nb01.findings(summary01(555.5, 810.0), P)
    assert "llama-preln at 600.0" in to_markdown(a) and "llama-preln at 555.5" in to_markdown(b)
    assert by_title(a, "warmup").verdict == "agrees" and by_title(b, "warmup").verdict == "disagrees"
    assert "llama-postln 0.001" in to_markdown(a)                       # the rates of the parameters


# ----------------------------------------------------------------------------- 03

def summary03(peak_layer: int, chi_top: float) -> pd.DataFrame:
    rows = []
    for label, scale in (("a (trained)", 1.0), ("a (random)", 0.5)):
        ids = [9.0, 2.0, 3.0, 3.0, 3.0]
        ids[peak_layer] = 5.0
        prof = {"cos_full": [0.1, 0.2, 0.3, 0.4, 0.5], "id": [scale * v for v in ids],
                "chi_1": [0.3, 0.5, 0.6, chi_top, float("nan")]}
        rows += [{"label": label, "metric": m, "layer": l, "mean": v} for m, vs in prof.items() for l, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_nb03_findings_follow_the_profiles():
    inner, last = nb03.findings(summary03(2, 0.95)), nb03.findings(summary03(4, 0.6))
    assert "a (trained) 5.0 at layer 2/4 (depth 0.50)" in by_title(inner, "ID peaks").ours
    assert "a (trained) 5.0 at layer 4/4" in by_title(last, "ID peaks").ours
    assert (by_title(inner, "ID peaks").verdict, by_title(last, "ID peaks").verdict) == ("agrees", "disagrees")
    assert "0.50 to 0.95" in by_title(inner, "chi_1").ours   # pair (0, 1) left out and by_title(inner, "chi_1").verdict == "agrees"
    assert by_title(last, "chi_1").verdict == "disagrees"
    assert "ID peak 2.50 -> 5.00" in by_title(inner, "training").ours
    assert nb03.profile_facts(summary03(2, 0.95)).id_layer0.tolist() == [9.0, 4.5]


# ----------------------------------------------------------------------------- 04

def long04(shuffled_peak: float, loss_step: float) -> pd.DataFrame:
    prof, loss = {}, {}
    for p in range(3):
        for s in (0, 1, 2):
            ids = [20.0, 4.0, 6.0 + p, 5.0]
            if s == 2:
                ids = [20.0, shuffled_peak + p, 5.0, 4.0]          # peak at layer 1: earlier when shuffled
            prof[(p, s)] = {"id": ids, "chi_1": [0.2, 0.5, 0.92], "cos_full": [0.1, 0.3, 0.4, 0.5],
                            "nn_angle": [40.0, 60.0, 62.0, 64.0]}
            loss[(p, s)] = 2.0 + loss_step * s + 0.1 * p
    return table(prof, loss)


def test_nb04_findings_follow_the_long_table():
    up, down = nb04_findings.findings(long04(9.0, 1.0)), nb04_findings.findings(long04(2.0, -1.0))
    peak_up, peak_down = by_title(up, "higher ID peak"), by_title(down, "higher ID peak")
    assert "higher for 3/3 prompts at S = 2 (mean peak 7.0 -> 10.0, x1.43)" in peak_up.ours
    assert "higher for 0/3 prompts at S = 2 (mean peak 7.0 -> 5.0, x0.71)" in peak_down.ours
    assert (peak_up.verdict, peak_down.verdict) == ("agrees", "disagrees")
    assert by_title(up, "earlier").verdict == "agrees"                 # layer 2 -> 1
    assert "2.10 -> 4.10 nats" in by_title(up, "Loss").ours and by_title(up, "Loss").verdict == "agrees"
    assert "2.10 -> 0.10 nats" in by_title(down, "Loss").ours and by_title(down, "Loss").verdict == "disagrees"
    assert "layer 0 holds ID 20.0" in by_title(up, "all layers").ours
    assert by_title(up, "correlate").verdict == "not testable here"     # 3 prompts
    assert "3 prompts" in up[0]


# ----------------------------------------------------------------------------- 05

def table05(peak_layer: int, chi_max: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    t = pd.DataFrame([{"model": m, "revision": rev, "label": m + rev, "n_layers": 6, "n_prompts": 10,
                       "peak_id_from_l1": 7.5, "peak_layer_from_l1": peak_layer, "peak_depth_from_l1": peak_layer / 6,
                       "peak_id_all_layers": 11.0, "peak_layer_all_layers": 0, "cos_mid": 0.3, "chi1_min": 0.4,
                       "chi1_max": chi_max, "nn_angle": 61.0, "mean_loss": loss}
                      for m, rev, loss in (("big", "", 3.0), ("toy:a", "step100", 6.5), ("toy:a", "step0", 9.0))])
    corr = pd.DataFrame([{"model": m, "revision": rev, "shuffle_index": 0, "layer": l, "r": r, "p": 0.5, "n": 10}
                         for m, rev, r in (("big", "", 0.4), ("toy:a", "step100", -0.2), ("toy:a", "step0", 0.1))
                         for l in range(7)])
    return t, corr


def test_nb05_findings_follow_the_summary_table():
    early, late = nb05_findings.findings(*table05(2, 0.93)), nb05_findings.findings(*table05(6, 0.7))
    assert "big: 7.5 at layer 2/6 (depth 0.33)" in by_title(early, "pretrained").ours
    assert by_title(early, "pretrained").verdict == "agrees" and by_title(late, "pretrained").verdict == "disagrees"
    assert "0.40 to 0.93" in by_title(early, "chi_1").ours and by_title(late, "chi_1").verdict == "disagrees"
    corr = by_title(early, "correlate")
    assert "big: n = 10: r > 0 at 6/6 layers" in corr.ours and "a (trained)" not in corr.ours
    assert corr.verdict == "partly"                                   # big at every layer, the toy at none


# ----------------------------------------------------------------------------- Markdown cells hold no run numbers

# What a typed-in run number looks like: a decimal (7.3, 0.94), a percentage (63 %), a factor (x1.46, x231), a
# count out of a total (18/18, 3/3) or a thousands count (328k). Integers alone are not flagged (layer counts,
# parameter values, the paper's setup); review covers those.
RUN_NUMBER = re.compile(r"(?<![\w.\-/])(\d+\.\d+(?![\w.])|\d+ ?%|x\d[\d.]*\b|\d+/\d+\b|\d+k\b)")
ALLOWED = {
    "95 %",            # bootstrap interval level (a constant of the method)
    "10 %",            # the cosine schedule's floor (tg_utils.toy.train)
    "0.9",             # the paper's "chi_1 climbs to about 0.9"
    "1/3", "2/3",      # the middle third of the depth, l / L in [1/3, 2/3] (a definition)
    "0.02", "1e-6", "1e-5", "2/5",   # the original code's constants, quoted with their file and line (notebook 01)
}
ARXIV = re.compile(r"^\d{4}\.\d{4,5}$")


def run_numbers(nb: Path) -> list[str]:
    cells = json.loads(nb.read_text())["cells"]
    text = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    text = re.sub(r"`[^`]*`", "", text)                                # code: file names, parameter literals
    return [m for m in RUN_NUMBER.findall(text) if m not in ALLOWED and not ARXIV.match(m)]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_markdown_cells_hold_no_run_numbers(nb):
    assert run_numbers(nb) == []


def test_the_rule_catches_typed_in_numbers(tmp_path):
    nb = tmp_path / "x.ipynb"
    nb.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": ["peak 7.3 -> 10.6 (x1.46) for 3/3 prompts, 63 % of 328k tokens; "
                                             "arXiv 2309.07315, `lr = 3e-3`, 95 % bands"]},
        {"cell_type": "code", "source": ["x = 0.5"]}]}))
    assert run_numbers(nb) == ["7.3", "10.6", "x1.46", "3/3", "63 %", "328k"]

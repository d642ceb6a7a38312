"""Findings of notebooks 06 and 07 as Markdown built from their tables: on small synthetic tables in the
notebooks' formats, a raised value shows in the text and a flipped comparison flips the verdict."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from tg_utils.experiments import nb06_findings as F6
from tg_utils.experiments import nb07_claims as C7
from tg_utils.experiments.nb06_training_trajectory_phases import Results
from tg_utils.experiments.nb07_report import ModelReport, Trajectory

# ----------------------------------------------------------------------------- notebook 06

STEPS = [0, 1, 2, 4]


def _results(rankme_final=(40.0, 3.0, 2.0, 5.0), warm_phase=True, deficit_slope=-0.1, p1_minus_p2=-0.02):
    """Two runs ("a", "b"), layers 0..2 (2 = final; convergence: 0..3), 4 checkpoints; the convergence cosines make the deficit
    change with the layer by `deficit_slope` per layer; P1 - P2 is the given value everywhere."""
    sp = []
    for t in ("a", "b"):
        for i, s in enumerate(STEPS):
            for layer in range(3):
                r = rankme_final[i] if layer == 2 else 10.0 + layer
                sp += [(t, s, layer, "rankme", r), (t, s, layer, "alpha", 1.0 + 0.1 * i + 0.01 * layer)]
    spectra = pd.DataFrame(sp, columns=["trajectory", "step", "layer", "metric", "value"])
    phases = pd.DataFrame([(t, 2, "warmup collapse", 0.0, 2.0) for t in ("a", "b") if warm_phase],
                          columns=["trajectory", "layer", "phase", "start_step", "end_step"])
    conv = []
    for t in ("a", "b"):
        for prefix in ("", "The word is"):
            for bucket in (1, 2, 3):
                for layer in range(4):
                    d = 0.5 + deficit_slope * layer + 0.05 * bucket
                    for s in STEPS:
                        conv.append((t, prefix, layer, bucket, s, 1.0 if s == STEPS[-1] else 1 - d, 10))
    conv = pd.DataFrame(conv, columns=["trajectory", "prefix", "layer", "bucket", "step", "mean_cos", "n_words"])
    pert = pd.DataFrame([(t, s, layer, b, k, 0.9, 0.9 - p1_minus_p2, p1_minus_p2, 20)
                         for t in ("a", "b") for s in STEPS for layer in range(3) for b in (2, 3)
                         for k in ("raw", "centred")],
                        columns=["trajectory", "step", "layer", "bucket", "states", "P1", "P2", "P1_minus_P2",
                                 "n_words"])
    buckets = pd.DataFrame([("convergence", 1, True, 10, 10), ("perturbation", 3, False, 4, 20)],
                           columns=["analysis", "bucket", "enough", "n_words", "wanted"])
    empty = pd.DataFrame()
    return Results(checkpoints=empty, spectra=spectra, eigs=empty, fits=empty, phases=phases, intervals=empty,
                   logs=empty, buckets=buckets, convergence=conv, perturbation=pert,
                   inputs={t: {"n_seqs": 50} for t in ("a", "b")}, warmup={"a": 2, "b": 2})


def _by_title(findings):
    return {f.title: f for f in findings if not isinstance(f, str)}


def test_nb06_text_follows_the_spectra():
    md = F6.findings_markdown(_results())
    assert "a 40.0 -> 2.0 at step 2 (N = 50, warmup 2 steps)" in md
    raised = F6.findings_markdown(_results(rankme_final=(55.5, 3.0, 2.0, 5.0)))
    assert "a 55.5 -> 2.0 at step 2" in raised and "40.0" not in raised
    assert "\n" not in md.split("\n\n")[1]                     # one paragraph per finding, no hard wraps


def test_nb06_verdicts_follow_the_numbers():
    f = _by_title(F6.findings(_results()))
    assert f["Warmup collapse"].verdict == "agrees"
    assert f["Entropy-seeking phase"].verdict == "disagrees"
    assert f["Later layers converge later"].verdict == "disagrees"       # deficit falls with the layer
    assert "a alone -1.00" in f["Later layers converge later"].ours
    assert f["Multi-token words converge later"].verdict == "agrees"    # deficit grows with the bucket
    assert f["P1 > P2"].verdict == "disagrees" and "raw -0.020 to -0.020" in f["P1 > P2"].ours
    g = _by_title(F6.findings(_results(warm_phase=False, deficit_slope=0.1, p1_minus_p2=0.03)))
    assert g["Warmup collapse"].verdict == "disagrees" and "marked in 0 of 2 runs" in g["Warmup collapse"].ours
    assert g["Later layers converge later"].verdict == "agrees"
    assert g["P1 > P2"].verdict == "agrees" and "raw +0.030" in g["P1 > P2"].ours


def test_nb06_first_position_effect_needs_both_forms():
    res = _results()
    f = _by_title(F6.findings(res))["First-position effect"]
    assert "in 0 of 2 runs" in f.ours and "a 0.350 vs 0.350" in f.ours     # (0.45 + 0.35 + 0.25) / 3, alone = prefix
    conv = res.convergence
    res = dataclasses.replace(res, convergence=conv[~((conv.bucket == 1) & (conv.prefix == ""))])
    assert "First-position effect" not in _by_title(F6.findings(res))            # no one-token word alone


def test_nb06_caveat_names_the_short_bucket():
    md = F6.findings_markdown(_results())
    assert "*Caveat (perturbation):* the corpus cannot fill bucket(s) [3] (3-token words: 4 of 20)" in md


@pytest.mark.parametrize("hits, n, verdict", [(2, 2, "agrees"), (0, 2, "disagrees"), (1, 2, "partly"),
                                              (0, 0, "not testable here")])
def test_share_verdict(hits, n, verdict):
    assert F6.share_verdict(hits, n) == verdict == C7.share_verdict(hits, n)


# ----------------------------------------------------------------------------- notebook 07

def _report(label="toy", bias=True, growth=100.0, cv=0.01, distinct_first=True, lens_last=1.0):
    """A two-block model probed at blocks 0 and 1, two heads, two nouns; numbers set by the arguments."""
    scorings = ["norm", "scaled_norm"] + (["bias", "both", "bias_term", "max_logit"] if bias else [])
    nt = pd.DataFrame([("embedding", s, side, r, f"t{r}", r) for s in scorings for side in ("top", "bottom")
                       for r in (1, 2, 3)], columns=["matrix", "scoring", "side", "rank", "token", "token_id"])
    ns = pd.DataFrame([("embedding", s, 1.0 if s == "norm" else 0.5, 1.0 if s == "norm" else 2 / 3)
                       for s in scorings], columns=["matrix", "scoring", "spearman_vs_norm", "top_overlap_vs_norm"])
    cov = pd.DataFrame([(l, k, h, 7, 0.99, "sigma") for l in (0, 1) for k in ("qk", "vo") for h in (0, 1)],
                       columns=["layer", "kind", "head", "rank_at_level", "level", "coverage_of"])
    dirs = pd.DataFrame([(l, k, h, 0, side, 1, f"s{h}", h, 2.0 - h) for l in (0, 1) for h in (0, 1)
                         for k, sides in (("qk", ("query", "key")), ("vo", ("input", "output"))) for side in sides],
                        columns=["layer", "kind", "head", "component", "side", "rank", "token", "token_id", "sigma"])
    ell = []
    for l in (0, 1):
        for probe, heads in (("keys", (0, 1)), ("values_sum", (-1,))):
            for ni, noun in enumerate(("time", "house")):
                for h in heads:
                    distinct = distinct_first or l == 1
                    top = 100 + ni if distinct else 100                    # the same top-1 for every noun
                    ell.append((l, probe, noun, h, 1, top, f"k{top}", 10 + ni))
    ell = pd.DataFrame(ell, columns=["layer", "probe", "noun", "head", "rank", "token_id", "token", "query_id"])
    L = 2
    norms = pd.DataFrame([(layer, p, growth ** (layer / L), 1.0 + (cv if p else -cv)) for layer in range(L + 1)
                          for p in (0, 1)], columns=["layer", "position", "norm", "normed_norm"])
    lens = pd.DataFrame([(layer, p, "n" if p == 0 else "", bool(layer == L and p == 0 and lens_last), False)
                         for layer in range(L + 1) for p in (0, 1)],
                        columns=["layer", "position", "next_token", "is_next", "is_self"])
    traj = Trajectory(coords=pd.DataFrame(), norms=norms, lens=lens, background=np.zeros((1, 3)), tokens=["a", "b"])
    e = pd.DataFrame()
    return ModelReport(spec=label, label=label, summary=label, layers=[0, 1], notes=[], norm_tokens=nt,
                       norm_stats=ns, norm_points=e, layernorm_distances=e, coverage=cov, curves=e,
                       directions=dirs, nouns=e, ellipse=ell, bias_probes=e, trajectory=traj, n_layers=L,
                       d_head=8, n_heads=2)


def test_nb07_text_follows_the_reports():
    md = C7.findings_markdown({"toy": _report()})
    assert "x100 (toy)" in md and "rank correlation with ||e|| 0.50, top-5 overlap 67%" in md
    raised = C7.findings_markdown({"toy": _report(growth=231.0)})
    assert "x231 (toy)" in raised and "x100" not in raised
    assert "W_qk 7/7, W_vo 7/7 at blocks 0/1, 99% coverage" in md


def test_nb07_verdicts_follow_the_numbers():
    f = _by_title(C7.findings({"toy": _report()}))
    assert f["Trajectories on a sphere"].verdict == "agrees"
    assert f["Query-key patterns in the first block"].verdict == "agrees"
    assert f["Iterative refinement"].verdict == "agrees"
    g = _by_title(C7.findings({"toy": _report(cv=0.5, distinct_first=False, lens_last=0.0)}))
    assert g["Trajectories on a sphere"].verdict == "disagrees"
    assert g["Query-key patterns in the first block"].verdict == "disagrees"
    assert "block 0: 25%, block 1: 50%" in g["Query-key patterns in the first block"].ours
    assert g["Iterative refinement"].verdict == "disagrees"
    two = _by_title(C7.findings({"a": _report("a"), "b": _report("b", bias=False, cv=0.5)}))
    assert two["Trajectories on a sphere"].verdict == "partly"
    assert "RMSNorm, no beta, only ||e|| and ||gamma e||: b" in two["The final norm decides which tokens are easy "
                                                                    "to reach"].ours


def test_nb07_detail_tables_and_bad_input():
    t = C7.model_table({"toy": _report(growth=50.0)})
    assert t.norm_growth.item() == pytest.approx(50.0) and t.blocks.item() == "0/1"
    h = C7.strongest_heads({"toy": _report()})
    assert h["head"].tolist() == [0, 0] and h.key_tokens.tolist() == ["s0", "s0"]
    with pytest.raises(ValueError, match="no model reports"):
        C7.findings({})

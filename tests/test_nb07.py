"""Notebook 07 (tg_utils.experiments.nb07_*, tg_utils.plots.attention): the layer choice, labels and notes, the
input-normed rows against the blocks' own norms, the per-block probe on real model descriptions against direct
computation, the tables' schemas, the noun filter, a tiny end-to-end run on toy checkpoints trained here for
two steps, and the report cache (verified folders: an edited file is reported and recomputed, no pickle is
read). No network; the UMAP fit itself is tested in tests/test_weights.py (its first call compiles numba
kernels for ~20 s), here it is replaced by a stand-in that checks what it is handed."""
from __future__ import annotations

import builtins
import dataclasses
import json
import pathlib
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from tg_utils import weights as W
from tg_utils.experiments import nb07_attention_geometry as X
from tg_utils.experiments import nb07_claims as C
from tg_utils.experiments import nb07_findings as F
from tg_utils.experiments import nb07_model_facts as MF
from tg_utils.metrics.stats import spearman
from tg_utils.models import ModelSpec, describe
from tg_utils.plots import attention as PA
from tg_utils.weights import umap as WU

from fakes import fake_umap


# ----------------------------------------------------------------------------- tiny models

def tiny_toy(preset: str, seed: int = 0, vocab: int = 120, n_layer: int = 3):
    from tg_utils.toy.model import ToyTransformer, preset as make
    torch.manual_seed(seed)
    m = ToyTransformer(make(preset, n_layer=n_layer, d_model=32, n_head=4, d_ff=64, vocab_size=vocab,
                            context=48)).eval().requires_grad_(False)
    with torch.no_grad():                      # non-trivial norm gains and biases
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(torch.rand_like(p) + 0.5 if n.endswith("weight") else 0.1 * torch.randn_like(p))
    return m


def tiny_gemma(seed: int = 0, vocab: int = 120):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    torch.manual_seed(seed)
    m = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                                           head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                                           max_position_embeddings=48))
    with torch.no_grad():                      # Gemma norms init to 0 (scale 1 + w): perturb them
        for n, p in m.named_parameters():
            if "norm" in n:
                p.normal_(0, 0.3)
    return m.eval().requires_grad_(False)


def tiny_llama_gqa(seed: int = 0, vocab: int = 120):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m.eval().requires_grad_(False)


def nouns_for(vocab: int, n: int = 7) -> pd.DataFrame:
    ids = np.arange(3, 3 + n)
    return pd.DataFrame({"noun": [f"n{i}" for i in ids], "token_id": ids, "token": [str(i) for i in ids]})


# ----------------------------------------------------------------------------- layer choice, labels, notes

def test_probe_layers_first_middle_last():
    assert MF.probe_layers(30) == [0, 15, 29]           # blocks 1, 16, 30
    assert MF.probe_layers(18) == [0, 9, 17]
    assert MF.probe_layers(6) == [0, 3, 5]
    assert MF.probe_layers(3) == [0, 1, 2]
    assert MF.probe_layers(2) == [0, 1]                 # middle rounds onto the last: kept once
    assert MF.probe_layers(1) == [0]
    assert MF.probe_layers(12, [1.0, 0.0, 0.25]) == [0, 3, 11]
    with pytest.raises(ValueError):
        MF.probe_layers(6, [1.5])
    with pytest.raises(ValueError):
        MF.probe_layers(0)
    assert [PA.layer_role(l, [0, 15, 29]) for l in (0, 15, 29)] == ["first", "middle", "last"]
    assert ModelSpec.parse("toy:llama-preln@160").short_name == "llama-preln (toy)"     # the report's label
    assert ModelSpec.parse("meta-llama/Llama-2-7b-hf").short_name == "Llama-2-7b-hf"


def test_model_notes_say_what_is_left_out():
    rms = describe(tiny_toy("llama-preln"))
    notes = " ".join(MF.model_notes(rms))
    assert "RMSNorm without bias" in notes and "'bias' and 'both'" in notes and "untied" in notes
    assert "readout_matrix" in notes                   # untied: which matrix the paper reads against
    ln = " ".join(MF.model_notes(describe(tiny_toy("standard-preln"))))
    assert "LayerNorm with bias" in ln and "paper's four" in ln
    gem = MF.model_notes(describe(tiny_gemma()))
    g = " ".join(gem)
    assert "q/k norms" in g and "rotary" in g and "1 + weight" in g and "grouped-query" in g and "tied" in g


# ----------------------------------------------------------------------------- input-normed rows, the per-block probe

@pytest.mark.parametrize("kind", ["llama-preln", "standard-preln", "gemma3"])
def test_input_normed_rows_equal_the_blocks_norm(kind):
    m = tiny_gemma() if kind == "gemma3" else tiny_toy(kind)
    desc = describe(m)
    rows = MF.InputNormedRows(desc, chunk=17)          # chunked standardisation
    for l in range(desc.n_layers):
        base, norm = rows.for_layer(l)
        ref = W.as_norm(desc.attn_norms[l])(desc.W_E.float())
        torch.testing.assert_close(norm(base), ref, rtol=1e-5, atol=1e-5)
    assert len(rows._std) == 1                         # standardised once, shared by every block
    # a post-norm block reads the raw stream
    post = describe(tiny_toy("standard-postln"))
    base, norm = MF.InputNormedRows(post).for_layer(1)
    assert base is post.W_E and norm is None


def test_input_normed_rows_fall_back_to_the_module():
    desc = describe(tiny_toy("llama-preln"))
    desc.attn_norms[0].eps = None                      # an unknown eps: use the module itself
    base, norm = MF.InputNormedRows(desc).for_layer(0)
    assert base is desc.W_E and norm is desc.attn_norms[0].module

    class CustomNorm(torch.nn.Module):                 # a class it does not know (T5-style, say)
        def forward(self, x):
            return 2 * x
    desc.attn_norms[1].module = CustomNorm()
    base, norm = MF.InputNormedRows(desc).for_layer(1)
    assert base is desc.W_E and isinstance(norm, CustomNorm)
    base, norm = MF.InputNormedRows(desc).for_layer(2)  # an RMSNorm it knows: the fast path
    assert base is not desc.W_E and norm is not desc.attn_norms[2].module


@pytest.mark.parametrize("kind", ["standard-preln", "gemma3", "llama-gqa"])
def test_layer_probe_against_direct_computation(kind, word_tokenizer):
    """The notebook's per-block probe on real model descriptions (LayerNorm with bias, Gemma's (1 + w) RMSNorm
    and tied embeddings, grouped-query Llama), through the input-normed rows, against direct float64
    computation with the block's own norm module, with this repository's variants (the paper's procedures are
    tested in tests/test_paper_procedures.py): the directions' top tokens with W_qk's sign set on the query
    side, the ellipse keys x W_qk norm(W_E)^T and the update read-out ((x W_vo) * g) W_U."""
    m = {"gemma3": tiny_gemma, "llama-gqa": tiny_llama_gqa}.get(kind, lambda: tiny_toy(kind))()
    desc = describe(m)
    rows = MF.InputNormedRows(desc)
    nouns = nouns_for(desc.vocab_size)
    tok = word_tokenizer if len(word_tokenizer) <= desc.vocab_size else None
    W_U = desc.W_U.double()
    g = desc.final_norm.scale.double()
    for l in (0, 2):
        dirs, ell = X.layer_probe(desc, l, rows.for_layer(l), nouns, tok, n_components=3, k=4,
                                  ellipse_heads=[1, 3], chunk=37, sign_side="query", readout="update",
                                  readout_matrix="unembedding")
        assert list(dirs.columns) == W.DIRECTION_COLUMNS and list(ell.columns) == W.ELLIPSE_COLUMNS
        assert len(dirs) == 2 * 2 * desc.n_heads * 3 * 4 and set(dirs.layer) == {l}
        a = desc.attn[l]
        En = W.as_norm(desc.attn_norms[l])(desc.W_E.double())              # the block's own module
        qk = W.sign_align(W.qk_factors(a.W_Q, a.W_K, desc.kv_head_map, desc.attn_scale).svd(), En, "left")
        vo = W.sign_align(W.vo_factors(a.W_V, a.W_O, desc.kv_head_map).svd(), W_U.T, "right")
        for kind_, svd, sides in (("qk", qk, (("query", "U", En), ("key", "V", En))),
                                  ("vo", vo, (("input", "U", En), ("output", "V", W_U.T)))):
            for side, attr, ref in sides:
                for h in range(desc.n_heads):
                    for c in range(3):
                        sel = dirs[(dirs.kind == kind_) & (dirs.side == side) & (dirs["head"] == h)
                                   & (dirs.component == c)]
                        scores = ref @ getattr(svd, attr)[h, :, c]
                        assert sel["token_id"].tolist() == scores.argsort(descending=True)[:4].tolist()
                        np.testing.assert_allclose(sel["score"], scores.sort(descending=True).values[:4].numpy(),
                                                   rtol=1e-4, atol=1e-5)
                        assert sel["sigma"].iloc[0] == pytest.approx(svd.S[h, c].item(), rel=1e-12)
        Wqk = W.qk_matrices(a.W_Q, a.W_K, desc.kv_head_map, desc.attn_scale)
        Wvo = W.vo_matrices(a.W_V, a.W_O, desc.kv_head_map)
        assert set(ell["head"]) == {1, 3} and len(ell) == 2 * 2 * len(nouns) * 4 and set(ell.layer) == {l}
        for h in (1, 3):
            for noun, t in zip(nouns["noun"], nouns["token_id"]):
                keys = En[t] @ Wqk[h] @ En.T
                sel = ell[(ell.probe == "keys") & (ell["head"] == h) & (ell.noun == noun)]
                assert sel["query_id"].tolist() == [t] * 4
                assert sel["token_id"].tolist() == keys.argsort(descending=True)[:4].tolist()
                np.testing.assert_allclose(sel["score"], keys.sort(descending=True).values[:4].numpy(),
                                           rtol=1e-4, atol=1e-5)
                logits = ((En[t] @ Wvo[h]) * g) @ W_U
                sel = ell[(ell.probe == "update") & (ell["head"] == h) & (ell.noun == noun)]
                assert sel["token_id"].tolist() == logits.argsort(descending=True)[:4].tolist()
        if tok is not None:
            assert dirs["token"].tolist() == [tok.decode([i]) for i in dirs["token_id"]]
    # no nouns: an empty ellipse table with the same columns
    _, empty = X.layer_probe(desc, 0, rows.for_layer(0), nouns.iloc[:0], tok, 2, 3)
    assert empty.empty and list(empty.columns) == W.ELLIPSE_COLUMNS


def test_layer_probe_sign_rule_and_gqa():
    """After the sign rule the query side's largest score beats the most negative one; GQA heads of one kv
    group share their key side (W_qk = W_Q[h] W_K[g]^T spans the same key directions)."""
    desc = describe(tiny_llama_gqa())
    rows = MF.InputNormedRows(desc)
    rn = rows.for_layer(1)
    dirs, _ = X.layer_probe(desc, 1, rn, None, None, n_components=2, k=3, sign_side="query")
    En = rn[1](rn[0]).double()
    a = desc.attn[1]
    svd = W.qk_factors(a.W_Q, a.W_K, desc.kv_head_map, desc.attn_scale).svd()
    for h in range(desc.n_heads):
        for c in range(2):
            s = En @ svd.U[h, :, c]
            sel = dirs[(dirs.kind == "qk") & (dirs.side == "query") & (dirs["head"] == h) & (dirs.component == c)]
            # the listed top tokens are the aligned direction's: +u if max >= |min|, else -u
            sign = 1.0 if s.max() >= -s.min() else -1.0
            assert sel["token_id"].tolist() == (sign * s).argsort(descending=True)[:3].tolist()
    assert desc.kv_head_map.tolist() == [0, 0, 1, 1]


# ----------------------------------------------------------------------------- tables

def test_embedding_norm_table_schema():
    ln = describe(tiny_toy("standard-preln"))
    toks, stats = X.embedding_norm_table(ln, None, k=3)
    assert list(toks.columns) == ["matrix", "scoring", "procedure", "paper_setting", "rank", "side", "token_id",
                                  "token", "token_raw", "score"]
    assert list(dict.fromkeys(toks.matrix)) == ["embedding", "unembedding"]       # untied toy: wte first
    assert set(toks.scoring) == {"norm", "scaled_norm", "bias", "both", "bias_term", "max_logit"}
    assert set(toks[toks.procedure == "paper"].scoring) == {"norm", "scaled_norm", "bias", "both"}
    assert len(toks) == 2 * 6 * 2 * 3
    assert list(stats.columns) == ["matrix", "scoring", "procedure", "mean", "std", "min", "max",
                                   "spearman_vs_norm", "top_overlap_vs_norm"]
    top = toks[(toks.matrix == "unembedding") & (toks.scoring == "norm") & (toks.side == "top")]
    norms = torch.linalg.vector_norm(ln.W_U.T.double(), dim=1)
    assert top.token_id.tolist() == norms.argsort(descending=True)[:3].tolist()
    s = stats.set_index(["matrix", "scoring"])
    assert s.loc[("embedding", "norm"), "spearman_vs_norm"] == pytest.approx(1.0)
    gem = describe(tiny_gemma())
    toks, _ = X.embedding_norm_table(gem, None, k=2)
    assert set(toks.matrix) == {"tied"} and set(toks.scoring) == {"norm", "scaled_norm"}   # RMSNorm: no bias
    sc = toks[(toks.scoring == "scaled_norm") & (toks.side == "top")]
    ref = torch.linalg.vector_norm(gem.W_E.double() * gem.final_norm.scale.double(), dim=1)  # (1 + w) scale
    assert sc.token_id.tolist() == ref.argsort(descending=True)[:2].tolist()


def test_coverage_tables_schema():
    desc = describe(tiny_llama_gqa())
    cov, curves = X.coverage_tables(desc, 0.9, of="sigma2")
    assert list(cov.columns) == ["layer", "kind", "head", "n_singular", "rank_at_level", "percent_of_features",
                                 "level", "coverage_of", "sigma_1", "frobenius", "d_head"]
    assert len(cov) == desc.n_layers * 2 * desc.n_heads
    assert cov.rank_at_level.between(1, desc.d_head).all() and (cov.level == 0.9).all()
    assert list(curves.columns) == ["layer", "kind", "head", "rank", "sigma", "coverage"]
    for _, g in curves.groupby(["layer", "kind", "head"]):
        assert np.all(np.diff(g.coverage) >= -1e-12) and g.coverage.iloc[-1] == pytest.approx(1.0)
    # the ranks are those of the dense per-head matrices
    a = desc.attn[2]
    dense = W.vo_matrices(a.W_V, a.W_O, desc.kv_head_map)
    ref = W.rank_at_coverage(torch.linalg.svdvals(dense)[:, :desc.d_head], 0.9)
    got = cov[(cov.layer == 2) & (cov.kind == "vo")].sort_values("head").rank_at_level
    assert got.tolist() == ref.tolist()
    paper, _ = X.coverage_tables(desc, 0.9)                                 # the paper's: coverage of sigma
    S = torch.linalg.svdvals(dense)[:, :desc.d_head].numpy()
    ref = [int(np.argmax(np.cumsum(s) / s.sum() > 0.9)) + 1 for s in S]    # utils/plot_utils.py:123-128
    assert paper[(paper.layer == 2) & (paper.kind == "vo")].sort_values("head").rank_at_level.tolist() == ref


def test_common_nouns_file():
    for path in ("data/traveling_words_nouns.txt", "data/common_nouns.txt"):     # the paper's list; ours
        nouns = X.load_common_nouns(path)
        assert len(nouns) == 100 and len(set(nouns)) == 100
        assert nouns[:2] == ["time", "year"]
        assert all(n.isalpha() and n.islower() for n in nouns)
    assert X.load_common_nouns()[-3:] == ["teacher", "force", "education"]     # the default: the paper's


def test_noun_filter_is_what_the_probe_uses(word_tokenizer):
    nouns = ["dog", "fox", "anarchism", "algorithm", "zzzqx", "dog"]
    table = X.noun_table(word_tokenizer, nouns, prefix=" ")                     # the variant: " noun"
    ids = {n: word_tokenizer(" " + n, add_special_tokens=False)["input_ids"] for n in set(nouns)}
    assert table.noun.tolist() == [n for n in dict.fromkeys(nouns) if len(ids[n]) == 1]
    assert "zzzqx" not in table.noun.tolist()
    for n, i in zip(table.noun, table.token_id):
        assert ids[n] == [i]


# ----------------------------------------------------------------------------- parameters

def test_parameter_checks():
    from tg_utils.params import ParameterError, params_class
    cls = params_class("07_attention_geometry")
    P = cls()
    assert MF.probe_layers(6, P.depths) == [0, 3, 5]
    for bad in (dict(depths=[1.2]), dict(depths=[]), dict(umap_n_fit=10), dict(coverage_level=0.0),
                dict(dtype="int8"), dict(phrase="  "), dict(models=["not a spec!"]), dict(ellipse_heads=0),
                dict(nouns_path="data/no_such_file.txt"), dict(sign_side="left"), dict(ellipse_readout="x"),
                dict(readout_matrix="W_U"), dict(umap_metric="l1"), dict(umap_rows="last"), dict(umap_init="pca"),
                dict(blocks=[]), dict(blocks=[-1]), dict(umap_epochs=0), dict(coverage_of="s")):
        with pytest.raises(ParameterError):
            cls.from_dict(bad, "07_attention_geometry")
    assert cls.from_dict({"ellipse_heads": None}).ellipse_heads is None
    # the defaults are the paper's procedures and settings
    assert (P.top_k, P.n_components, P.sign_side, P.ellipse_readout, P.readout_matrix, P.noun_prefix,
            P.ellipse_heads, P.umap_rows, P.umap_metric, P.umap_init, P.umap_n_fit, P.umap_epochs, P.phrase) == (
        5, 20, "key", "paper", "embedding", "", None, "first", "euclidean", "spectral", 10000, None,
        "To kill two birds with one stone")
    assert P.coverage_of == "sigma" and P.coverage_level == 0.99
    assert MF.blocks_to_probe(12, P.depths, [11, 0, 5]) == [0, 5, 11]


# ----------------------------------------------------------------------------- end to end on toy checkpoints

@pytest.fixture(scope="module")
def toy_tokenizer():
    """The toy models' byte-level BPE (tg_utils.toy.tokenizer) trained on a few sentences, so that some common
    nouns (" dog", " water", " house", ...) are one token and most are not."""
    from tg_utils.toy.tokenizer import train_bpe_tokenizer
    texts = ["The quick brown fox jumps over the lazy dog. " * 20,
             "The dog drank water in the house of the king. " * 20,
             "Music filled the city at night. " * 10]
    return train_bpe_tokenizer(texts, vocab_size=330, min_frequency=2)


def _train(out_dir, name, tokenizer):
    from tg_utils.toy.model import preset
    from tg_utils.toy.train import TrainConfig, train_run
    cfg = preset(name, n_layer=4, d_model=32, n_head=4, d_ff=64, vocab_size=len(tokenizer), context=32)
    tc = TrainConfig(max_steps=2, batch_size=2, warmup_steps=0, eval_every=1, save_every=1, eval_batch_size=2)
    ids = np.asarray(tokenizer(" ".join(["The quick brown fox jumps over the lazy dog."] * 30))["input_ids"])
    train_run(out_dir / "checkpoints" / name, cfg, tc, ids, ids[:200], tokenizer=tokenizer, progress=False)


@pytest.fixture(scope="module")
def toy_out(tmp_path_factory, toy_tokenizer):
    """An output folder with two toy runs trained for two steps, and the notebook's parameters on it."""
    from tg_utils.params import params_class

    out = tmp_path_factory.mktemp("nb07")
    for name in ("standard-preln", "llama-preln"):
        _train(out, name, toy_tokenizer)
    P = params_class("07_attention_geometry").from_dict(dict(
        models=["toy:standard-preln", "toy:llama-preln"], out_dir=str(out), figures_dir=str(out / "fig"),
        top_k=3, n_components=2, ellipse_heads=2, umap_n_fit=50, umap_neighbors=5, umap_epochs=5,
        phrase="The quick brown fox jumps over the lazy dog", noun_prefix=" "))   # the toy BPE needs " noun"
    return out, P


def _clear_report_cache(out):
    """No cached reports: the next run computes every model (tests do not depend on their order)."""
    shutil.rmtree(out / "cache" / "attention", ignore_errors=True)


def test_end_to_end_on_toy_checkpoints(toy_out, toy_tokenizer, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from tg_utils.models import load_model
    from tg_utils.tables import save_table

    tmp_path, P = toy_out
    _clear_report_cache(tmp_path)
    calls = []
    monkeypatch.setattr(WU, "umap_trajectory", fake_umap(calls))
    reports, T = X.run(P, progress=False, verbose=False)
    assert list(reports) == ["standard-preln (toy)", "llama-preln (toy)"]
    assert set(T) == {*X.TABLES, "trajectory_coords", "trajectory_norms", "logit_lens"}
    for name, df in T.items():
        assert list(df.columns[:2]) == ["model", "label"] and len(df), name
    assert set(T["directions"].layer) == {0, 2, 3}                      # first, middle, last of 4 blocks
    assert set(T["ellipse"].layer) == {0, 2, 3} and set(T["ellipse"]["head"]) == {0, 1, -1}   # -1: sum of heads
    # only single-token nouns query the probe, each with its own token id
    nouns = X.load_common_nouns(P.nouns_path)
    single = X.noun_table(toy_tokenizer, nouns, prefix=" ")
    assert set(T["ellipse"].noun) == set(single.noun) and 0 < len(single) < len(nouns)
    q = T["ellipse"][["noun", "query_id"]].drop_duplicates()
    assert dict(zip(q.noun, q.query_id)) == dict(zip(single.noun, single.token_id))
    # norm scorings: LayerNorm with bias has the paper's four and the two variants, RMSNorm two
    sc = T["norm_tokens"].groupby("label").scoring.unique()
    assert set(sc["standard-preln (toy)"]) == {"norm", "scaled_norm", "bias", "both", "bias_term", "max_logit"}
    assert set(sc["llama-preln (toy)"]) == {"norm", "scaled_norm"}
    # the paper's ellipse read-out; the bias probes and the distance table only for the LayerNorm model with biases
    assert set(T["ellipse"].probe) == {"keys", "values", "values_sum"}
    assert set(T["bias_probes"].label) == {"standard-preln (toy)"} == set(T["layernorm_distances"].label)
    assert any("no query or key biases" in n for n in reports["llama-preln (toy)"].notes)
    assert any("RMSNorm" in n and "not computed" in n for n in reports["llama-preln (toy)"].notes)
    # the trajectory: states 0..L of the phrase, final-normed by the model's final norm
    ids = toy_tokenizer(P.phrase)["input_ids"]
    assert len(calls) == 2
    for c in calls:
        assert c["states"].shape == (5, len(ids), 32) and c["norm"] is not None and c["n_fit"] == 50
        assert (c["rows"], c["metric"], c["init"]) == ("first", "euclidean", "spectral")      # the paper's
        assert c["extra"].shape == (2 * len(ids), 32)                 # raw embeddings, embeddings + positions
    lm = load_model("toy:llama-preln", out_dir=tmp_path)
    torch.testing.assert_close(calls[1]["states"][0], lm.desc.W_E[ids])          # state 0 = embeddings
    # the logit lens after the last block is the model's own next-token argmax
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids]))[0]
    lens = T["logit_lens"]
    last = lens[(lens.label == "llama-preln (toy)") & (lens.layer == 4)].sort_values("position")
    assert last.top_id.tolist() == logits.argmax(-1).tolist()
    assert last.is_next.tolist() == (logits.argmax(-1)[:-1] == torch.tensor(ids[1:])).tolist() + [False]
    nm = T["trajectory_norms"]
    assert nm.groupby("label").layer.max().tolist() == [4, 4]
    # views, findings, figures, saved tables
    assert {"u_tokens", "v_tokens"} <= set(F.direction_view(T).columns)
    assert not F.norm_view(T).empty and not F.rank_view(T).empty
    ev = F.ellipse_view(T, single.noun[:2].tolist())
    assert set(ev.columns) >= {"keys", "values", "values_sum"} and len(ev) == 2 * 3 * 2
    assert not F.ellipse_summary(T).empty and list(F.lens_view(T, "llama-preln (toy)").index) == list(range(5))
    text = C.findings_markdown(reports)
    assert "standard-preln (toy)" in text and "llama-preln (toy)" in text and "||gamma e|| + beta.e" in text
    assert "RMSNorm, no beta" in text and "99% coverage" in text
    assert set(C.model_table(reports).label) == set(reports) and len(C.strongest_heads(reports)) == 2 * 3
    assert not F.bias_view(T).empty
    for fig_fn in (lambda: PA.plot_coverage(T), lambda: PA.plot_trajectories(reports),
                   lambda: PA.plot_state_norms(reports), lambda: PA.plot_norm_scorings(T),
                   lambda: PA.plot_ellipse(T, single.noun[:3].tolist(), head=1)):
        fig, tidy = fig_fn()
        assert len(tidy) > 0
    paths = [save_table(df, X.NB, name, P.out_dir) for name, df in T.items()]
    assert len(paths) == len(T) and all(p.exists() for p in paths)


def _no_pickle_reads(monkeypatch):
    """Fail the test on any attempt to open a .pkl file for reading from Python."""
    real_open, real_path_open = builtins.open, pathlib.Path.open

    def guard(path, mode):
        if str(path).endswith(".pkl") and not any(m in mode for m in "wax"):
            pytest.fail(f"a .pkl file was opened for reading: {path}")

    def open_(file, mode="r", *a, **k):
        guard(file, mode)
        return real_open(file, mode, *a, **k)

    def path_open(self, mode="r", *a, **k):
        guard(self, mode)
        return real_path_open(self, mode, *a, **k)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(pathlib.Path, "open", path_open)


def test_report_cache_verified_folders(toy_out, monkeypatch, capsys):
    """Each model's report is a verified folder (parquet tables + report.json); a second run reads it back
    without loading a model and gives equal reports; a folder with an edited file is reported and recomputed;
    a .pkl file in the cache folder (an old pickle cache) is never read; other parameters give another key."""
    tmp_path, P = toy_out
    _clear_report_cache(tmp_path)
    monkeypatch.setattr(WU, "umap_trajectory", fake_umap([]))
    cache = tmp_path / "cache" / "attention"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "toy_llama-preln@2-0123456789abcdef.pkl").write_bytes(b"not a pickle")     # old format
    _no_pickle_reads(monkeypatch)
    first = X.run_models(P, progress=False, verbose=False)
    folders = sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(folders) == 2
    for f in folders:
        names = {p.name for p in f.iterdir()}
        assert {"manifest.json", "report.json", "coverage.parquet", "ellipse.parquet",
                "trajectory_background.parquet"} <= names
        assert not any(n.endswith(".pkl") for n in names)
        assert json.loads((f / "manifest.json").read_text())["format"] == "tg-verified-folder-v1"
    (folders[0] / "stray.pkl").write_bytes(b"not a pickle either")             # not in the manifest: ignored

    loads = []
    real_load = X.load_model

    def counting_load(*a, **k):
        loads.append(a[0])
        return real_load(*a, **k)
    monkeypatch.setattr(X, "load_model", counting_load)
    again = X.run_models(P, progress=False, verbose=False)
    assert loads == []                                                           # read from the cache
    for label, rep in first.items():
        back = again[label]
        for name in X.TABLES:
            pd.testing.assert_frame_equal(getattr(back, name), getattr(rep, name), obj=name)
        for attr in ("coords", "norms", "lens"):
            pd.testing.assert_frame_equal(getattr(back.trajectory, attr), getattr(rep.trajectory, attr), obj=attr)
        np.testing.assert_array_equal(back.trajectory.background, rep.trajectory.background)
        for f in ("spec", "label", "summary", "layers", "notes", "n_layers", "d_head", "n_heads", "timings"):
            assert getattr(back, f) == getattr(rep, f), f
        assert back.trajectory.tokens == rep.trajectory.tokens

    # an edited table: the folder is reported and recomputed (its model loaded), with the same tables
    llama = X.report_folder(P, "toy:llama-preln", X.load_common_nouns(P.nouns_path)[:P.n_nouns])[0]
    df = pd.read_parquet(llama / "ellipse.parquet")
    df.loc[0, "score"] += 1.0
    df.to_parquet(llama / "ellipse.parquet", index=False)
    capsys.readouterr()
    third = X.run_models(P, progress=False, verbose=False)
    out = capsys.readouterr().out
    assert f"{llama}: ellipse.parquet does not match its manifest" in out and "recomputing" in out
    assert loads == ["toy:llama-preln"]
    for name in X.TABLES:
        pd.testing.assert_frame_equal(getattr(third["llama-preln (toy)"], name),
                                      getattr(first["llama-preln (toy)"], name), obj=name)
    assert X.read_report(*X.report_folder(P, "toy:llama-preln", X.load_common_nouns(P.nouns_path)[:P.n_nouns]))
    # other parameters, other key
    nouns = X.load_common_nouns(P.nouns_path)
    assert X.report_folder(P, "toy:llama-preln", nouns) != X.report_folder(
        dataclasses.replace(P, top_k=4), "toy:llama-preln", nouns)


def test_rank_correlation_is_spearman_and_nan_without_a_warning_for_a_constant_scoring():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 3.0, 2.0, 4.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # numpy's "invalid value encountered in divide" would raise here
        assert np.isnan(spearman(np.full(4, 2.5), np.array([1.0, 2.0, 3.0, 4.0])))

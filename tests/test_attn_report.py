"""tg_utils.attn_report (notebook 07): the layer choice, the fast paths against tg_utils.attention (input-normed
rows, singular values, the fused per-block probe), the tables' schemas, the noun filter, and a tiny end-to-end
run on toy checkpoints trained here for two steps. No network; the UMAP fit itself is tested in
tests/test_attention.py (its first call compiles numba kernels for ~20 s), here it is replaced by a stand-in
that checks what it is handed."""
from __future__ import annotations


import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from tg_utils import attention as A
from tg_utils import attn_report as R
from tg_utils.models import describe


# ----------------------------------------------------------------------------- tiny models

def tiny_toy(preset: str, seed: int = 0, vocab: int = 120, n_layer: int = 3):
    from tg_utils.toy_model import ToyTransformer, preset as make
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
    assert R.probe_layers(30) == [0, 15, 29]           # blocks 1, 16, 30
    assert R.probe_layers(18) == [0, 9, 17]
    assert R.probe_layers(6) == [0, 3, 5]
    assert R.probe_layers(3) == [0, 1, 2]
    assert R.probe_layers(2) == [0, 1]                 # middle rounds onto the last: kept once
    assert R.probe_layers(1) == [0]
    assert R.probe_layers(12, [1.0, 0.0, 0.25]) == [0, 3, 11]
    with pytest.raises(ValueError):
        R.probe_layers(6, [1.5])
    with pytest.raises(ValueError):
        R.probe_layers(0)
    assert [R.layer_role(l, [0, 15, 29]) for l in (0, 15, 29)] == ["first", "middle", "last"]
    assert R.model_label("toy:llama-preln@160") == "llama-preln (toy)"
    assert R.model_label("meta-llama/Llama-2-7b-hf") == "Llama-2-7b-hf"


def test_model_notes_say_what_is_left_out():
    rms = describe(tiny_toy("llama-preln"))
    notes = " ".join(R.model_notes(rms))
    assert "RMSNorm without bias" in notes and "'bias' and 'both'" in notes and "untied" in notes
    ln = " ".join(R.model_notes(describe(tiny_toy("standard-preln"))))
    assert "LayerNorm with bias" in ln
    gem = R.model_notes(describe(tiny_gemma()))
    g = " ".join(gem)
    assert "q/k norms" in g and "rotary" in g and "1 + weight" in g and "grouped-query" in g and "tied" in g


# ----------------------------------------------------------------------------- fast paths vs tg_utils.attention

@pytest.mark.parametrize("kind", ["llama-preln", "standard-preln", "gemma3"])
def test_input_normed_rows_equal_the_blocks_norm(kind):
    m = tiny_gemma() if kind == "gemma3" else tiny_toy(kind)
    desc = describe(m)
    rows = R.InputNormedRows(desc, chunk=17)          # chunked standardisation
    for l in range(desc.n_layers):
        base, norm = rows.for_layer(l)
        ref = A.as_norm(desc.attn_norms[l])(desc.W_E.float())
        torch.testing.assert_close(norm(base), ref, rtol=1e-5, atol=1e-5)
    assert len(rows._std) == 1                         # standardised once, shared by every block
    # a post-norm block reads the raw stream
    post = describe(tiny_toy("standard-postln"))
    base, norm = R.InputNormedRows(post).for_layer(1)
    assert base is post.W_E and norm is None


def test_input_normed_rows_fall_back_to_the_module():
    desc = describe(tiny_toy("llama-preln"))
    desc.attn_norms[0].eps = None                      # an unknown eps: use the module itself
    base, norm = R.InputNormedRows(desc).for_layer(0)
    assert base is desc.W_E and norm is desc.attn_norms[0].module

    class CustomNorm(torch.nn.Module):                 # a class it does not know (T5-style, say)
        def forward(self, x):
            return 2 * x
    desc.attn_norms[1].module = CustomNorm()
    base, norm = R.InputNormedRows(desc).for_layer(1)
    assert base is desc.W_E and isinstance(norm, CustomNorm)
    base, norm = R.InputNormedRows(desc).for_layer(2)  # an RMSNorm it knows: the fast path
    assert base is not desc.W_E and norm is not desc.attn_norms[2].module


def test_singular_values_match_factored_svd():
    g = torch.Generator().manual_seed(0)
    Af = torch.randn(3, 40, 6, generator=g, dtype=torch.float64)
    Bf = torch.randn(3, 6, 30, generator=g, dtype=torch.float64)
    Af[1, :, 2:] = 0                                   # a rank-deficient head: the QR fallback
    fm = A.FactoredMatrix(Af, Bf)
    S = R.singular_values(fm)
    ref = A.factored_svd(Af, Bf).S
    torch.testing.assert_close(S, ref, rtol=1e-10, atol=1e-10)
    dense = torch.linalg.svdvals(Af @ Bf)[:, :6]
    torch.testing.assert_close(S, dense, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["standard-preln", "gemma3", "llama-gqa"])
def test_layer_probe_equals_the_library(kind, word_tokenizer):
    m = {"gemma3": tiny_gemma, "llama-gqa": tiny_llama_gqa}.get(kind, lambda: tiny_toy(kind))()
    desc = describe(m)
    rows = R.InputNormedRows(desc)
    nouns = nouns_for(desc.vocab_size)
    tok = word_tokenizer if len(word_tokenizer) <= desc.vocab_size else None
    for l in (0, 2):
        rn = rows.for_layer(l)
        dirs, ell = R.layer_probe(desc, l, rn, nouns, tok, n_components=3, k=4, ellipse_heads=[1, 3], chunk=37)
        assert list(dirs.columns) == R.DIRECTION_COLUMNS and list(ell.columns) == R.ELLIPSE_COLUMNS
        a = desc.attn[l]
        hs = A.head_svd(a.W_Q, a.W_K, a.W_V, a.W_O, rn[0], desc.W_U, norm=rn[1], kv_map=desc.kv_head_map,
                        scale=desc.attn_scale, components=3, chunk=16)
        ref = A.singular_direction_tokens(hs, rn[0], desc.W_U, norm=rn[1], tokenizer=tok, n_components=3, k=4,
                                          chunk=16)
        assert len(dirs) == len(ref) == 2 * 2 * desc.n_heads * 3 * 4
        for col in ("kind", "head", "component", "side", "rank", "token_id", "token"):
            assert dirs[col].tolist() == ref[col].tolist(), col
        np.testing.assert_allclose(dirs["score"], ref["score"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dirs["sigma"], ref["sigma"], rtol=1e-12)
        eref = A.ellipse_probe(nouns["token_id"].to_numpy(), rn[0], a.W_Q, a.W_K, a.W_V, a.W_O, desc.W_U,
                               norm=rn[1], kv_map=desc.kv_head_map, scale=desc.attn_scale,
                               final_norm_weight=desc.final_norm.scale, k=4, heads=[1, 3], tokenizer=tok,
                               labels=nouns["noun"].tolist(), layer=l, chunk=16)
        eref = eref[R.ELLIPSE_COLUMNS]
        for col in ("layer", "noun", "query_id", "head", "probe", "rank", "token_id", "token"):
            assert ell[col].tolist() == eref[col].tolist(), col
        np.testing.assert_allclose(ell["score"], eref["score"], rtol=1e-5, atol=1e-6)
    # no nouns: an empty ellipse table with the same columns
    _, empty = R.layer_probe(desc, 0, rows.for_layer(0), nouns.iloc[:0], tok, 2, 3)
    assert empty.empty and list(empty.columns) == R.ELLIPSE_COLUMNS


def test_layer_probe_sign_rule_and_gqa():
    """After the sign rule the query side's largest score beats the most negative one; GQA heads of one kv
    group share their key side (W_qk = W_Q[h] W_K[g]^T spans the same key directions)."""
    desc = describe(tiny_llama_gqa())
    rows = R.InputNormedRows(desc)
    rn = rows.for_layer(1)
    dirs, _ = R.layer_probe(desc, 1, rn, None, None, n_components=2, k=3)
    En = rn[1](rn[0]).double()
    a = desc.attn[1]
    svd = A.qk_factors(a.W_Q, a.W_K, desc.kv_head_map, desc.attn_scale).svd()
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
    toks, stats = R.embedding_norm_table(ln, None, k=3)
    assert list(toks.columns) == ["matrix", "scoring", "rank", "side", "token_id", "token", "token_raw", "score"]
    assert set(toks.matrix) == {"unembedding", "embedding"}                       # untied toy
    assert set(toks.scoring) == {"norm", "scaled_norm", "bias", "both"}           # LayerNorm with bias
    assert len(toks) == 2 * 4 * 2 * 3
    assert list(stats.columns) == ["matrix", "scoring", "mean", "std", "min", "max", "spearman_vs_norm",
                                   "top_overlap_vs_norm"]
    top = toks[(toks.matrix == "unembedding") & (toks.scoring == "norm") & (toks.side == "top")]
    norms = torch.linalg.vector_norm(ln.W_U.T.double(), dim=1)
    assert top.token_id.tolist() == norms.argsort(descending=True)[:3].tolist()
    s = stats.set_index(["matrix", "scoring"])
    assert s.loc[("embedding", "norm"), "spearman_vs_norm"] == pytest.approx(1.0)
    gem = describe(tiny_gemma())
    toks, _ = R.embedding_norm_table(gem, None, k=2)
    assert set(toks.matrix) == {"tied"} and set(toks.scoring) == {"norm", "scaled_norm"}   # RMSNorm: no bias
    sc = toks[(toks.scoring == "scaled_norm") & (toks.side == "top")]
    ref = torch.linalg.vector_norm(gem.W_E.double() * gem.final_norm.scale.double(), dim=1)  # (1 + w) scale
    assert sc.token_id.tolist() == ref.argsort(descending=True)[:2].tolist()


def test_coverage_tables_schema():
    desc = describe(tiny_llama_gqa())
    cov, curves = R.coverage_tables(desc, 0.9)
    assert list(cov.columns) == ["layer", "kind", "head", "n_singular", "rank_at_level", "level", "sigma_1",
                                 "frobenius", "d_head"]
    assert len(cov) == desc.n_layers * 2 * desc.n_heads
    assert cov.rank_at_level.between(1, desc.d_head).all() and (cov.level == 0.9).all()
    assert list(curves.columns) == ["layer", "kind", "head", "rank", "sigma", "coverage"]
    for _, g in curves.groupby(["layer", "kind", "head"]):
        assert np.all(np.diff(g.coverage) >= -1e-12) and g.coverage.iloc[-1] == pytest.approx(1.0)
    # the ranks are those of the dense per-head matrices
    a = desc.attn[2]
    dense = A.vo_matrices(a.W_V, a.W_O, desc.kv_head_map)
    ref = A.rank_at_coverage(torch.linalg.svdvals(dense)[:, :desc.d_head], 0.9)
    got = cov[(cov.layer == 2) & (cov.kind == "vo")].sort_values("head").rank_at_level
    assert got.tolist() == ref.tolist()


def test_noun_filter_is_what_the_probe_uses(word_tokenizer):
    nouns = ["dog", "fox", "anarchism", "algorithm", "zzzqx", "dog"]
    table = R.noun_table(word_tokenizer, nouns)
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
    assert R.probe_layers(6, P.depths) == [0, 3, 5]
    for bad in (dict(depths=[1.2]), dict(depths=[]), dict(umap_n_fit=10), dict(coverage_level=0.0),
                dict(dtype="int8"), dict(phrase="  "), dict(models=["not a spec!"]), dict(ellipse_heads=0),
                dict(nouns_path="data/no_such_file.txt")):
        with pytest.raises(ParameterError):
            cls.from_dict(bad, "07_attention_geometry")
    assert cls.from_dict({"ellipse_heads": None}).ellipse_heads is None


# ----------------------------------------------------------------------------- end to end on toy checkpoints

@pytest.fixture(scope="module")
def toy_tokenizer():
    """The toy models' byte-level BPE (tg_utils.tokenizer) trained on a few sentences, so that some common
    nouns (" dog", " water", " house", ...) are one token and most are not."""
    from tg_utils.tokenizer import train_bpe_tokenizer
    texts = ["The quick brown fox jumps over the lazy dog. " * 20,
             "The dog drank water in the house of the king. " * 20,
             "Music filled the city at night. " * 10]
    return train_bpe_tokenizer(texts, vocab_size=330, min_frequency=2)


def _train(out_dir, name, tokenizer):
    from tg_utils.toy_model import preset
    from tg_utils.train import TrainConfig, train_run
    cfg = preset(name, n_layer=4, d_model=32, n_head=4, d_ff=64, vocab_size=len(tokenizer), context=32)
    tc = TrainConfig(max_steps=2, batch_size=2, warmup_steps=0, eval_every=1, save_every=1, eval_batch_size=2)
    ids = np.asarray(tokenizer(" ".join(["The quick brown fox jumps over the lazy dog."] * 30))["input_ids"])
    train_run(out_dir / "checkpoints" / name, cfg, tc, ids, ids[:200], tokenizer=tokenizer, progress=False)


def _fake_umap(calls):
    def fake(W_E, states, n_neighbors=15, seed=0, n_fit=5000, n_epochs=200, norm=None, **kw):
        calls.append(dict(W_E=W_E, states=states, norm=norm, n_fit=n_fit, n_neighbors=n_neighbors))
        S = torch.as_tensor(states, dtype=torch.float64)
        L, T, d = S.shape
        normed = A.as_norm(norm)(S.reshape(-1, d)).reshape(L, T, d)
        return A.UmapTrajectory(coords=normed[..., :3].numpy(), norms=torch.linalg.vector_norm(S, dim=-1).numpy(),
                                normed_norms=torch.linalg.vector_norm(normed, dim=-1).numpy(),
                                embedding_coords=W_E[:n_fit, :3].double().numpy(), fit_ids=np.arange(n_fit),
                                reducer=None)
    return fake


def test_end_to_end_on_toy_checkpoints(tmp_path, toy_tokenizer, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from tg_utils.models import load_model
    from tg_utils.params import params_class

    for name in ("standard-preln", "llama-preln"):
        _train(tmp_path, name, toy_tokenizer)
    calls = []
    monkeypatch.setattr(A, "umap_trajectory", _fake_umap(calls))
    P = params_class("07_attention_geometry").from_dict(dict(
        models=["toy:standard-preln", "toy:llama-preln"], out_dir=str(tmp_path), figures_dir=str(tmp_path / "fig"),
        top_k=3, n_components=2, ellipse_heads=2, umap_n_fit=50, umap_neighbors=5, umap_epochs=5,
        phrase="The quick brown fox jumps over the lazy dog"))
    reports = R.run_models(P, progress=False, verbose=False)
    assert list(reports) == ["standard-preln (toy)", "llama-preln (toy)"]
    T = R.combine(reports)
    assert set(T) == {*R.TABLES, "trajectory_coords", "trajectory_norms", "logit_lens"}
    for name, df in T.items():
        assert list(df.columns[:2]) == ["model", "label"] and len(df), name
    assert set(T["directions"].layer) == {0, 2, 3}                      # first, middle, last of 4 blocks
    assert set(T["ellipse"].layer) == {0, 2, 3} and set(T["ellipse"]["head"]) == {0, 1}
    # only single-token nouns query the probe, each with its own token id
    nouns = A.load_common_nouns(P.nouns_path)
    single = R.noun_table(toy_tokenizer, nouns)
    assert set(T["ellipse"].noun) == set(single.noun) and 0 < len(single) < len(nouns)
    q = T["ellipse"][["noun", "query_id"]].drop_duplicates()
    assert dict(zip(q.noun, q.query_id)) == dict(zip(single.noun, single.token_id))
    # norm scorings: LayerNorm with bias has four, RMSNorm two
    sc = T["norm_tokens"].groupby("label").scoring.unique()
    assert set(sc["standard-preln (toy)"]) == {"norm", "scaled_norm", "bias", "both"}
    assert set(sc["llama-preln (toy)"]) == {"norm", "scaled_norm"}
    # the trajectory: states 0..L of the phrase, final-normed by the model's final norm
    ids = toy_tokenizer(P.phrase)["input_ids"]
    assert len(calls) == 2
    for c in calls:
        assert c["states"].shape == (5, len(ids), 32) and c["norm"] is not None and c["n_fit"] == 50
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
    assert {"u_tokens", "v_tokens"} <= set(R.direction_view(T).columns)
    assert not R.norm_view(T).empty and not R.rank_view(T).empty
    ev = R.ellipse_view(T, single.noun[:2].tolist())
    assert set(ev.columns) >= {"keys", "update"} and len(ev) == 2 * 3 * 2
    text = R.findings_text(reports)
    assert "standard-preln (toy)" in text and "llama-preln (toy)" in text and "bias score" in text
    assert "no bias score" in text and "rank at 99%" in text
    for fig_fn in (lambda: R.plot_coverage(T), lambda: R.plot_trajectories(reports),
                   lambda: R.plot_state_norms(reports)):
        fig, tidy = fig_fn()
        assert len(tidy) > 0
    paths = R.save_tables(T, P.out_dir)
    assert len(paths) == len(T) and all(p.exists() for p in paths)
    # the cache: a second run reads each model's report from disk (no model loaded) and gives the same tables
    cached = sorted((tmp_path / "cache" / "attention").glob("*.pkl"))
    assert len(cached) == 2
    import tg_utils.models as M
    monkeypatch.setattr(M, "load_model", lambda *a, **k: pytest.fail("a cached report loaded its model"))
    again = R.combine(R.run_models(P, progress=False, verbose=False))
    for name in T:
        pd.testing.assert_frame_equal(again[name], T[name], obj=name)
    # a damaged report is recomputed, and other parameters give another entry
    cached[0].write_bytes(b"truncated")
    monkeypatch.undo()
    monkeypatch.setattr(A, "umap_trajectory", _fake_umap([]))
    pd.testing.assert_frame_equal(R.combine(R.run_models(P, progress=False, verbose=False))["ellipse"], T["ellipse"])
    assert R.report_path(P, "toy:llama-preln", nouns) != R.report_path(
        dataclasses.replace(P, top_k=4), "toy:llama-preln", nouns)
